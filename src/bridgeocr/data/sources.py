"""`open_source(spec, split)`: one entry point for every kind of line source.

`spec` is an IAM root (has `ascii/lines.txt`), a manifest file (`.tsv` / `.jsonl`), or a directory
holding `manifest.tsv` (a synth dataset; `split.tsv` beside it is used automatically) or `labels.tsv`
(+ `split_by_letter.tsv`, e.g. Hooker), or PAGE XML / ALTO pages with their images: a folder of `.xml`
files, a list file of `.xml` paths (`.lst`, or a `.txt` whose first entry is one) or one `.xml` file
(data/layout.py: each TextLine a sample cut from its page; splits by page).
"""

from __future__ import annotations

import re
from pathlib import Path

from bridgeocr.data.iam import open_iam
from bridgeocr.data.layout import is_layout_list, looks_like_layout_dir, open_layout
from bridgeocr.data.manifest import open_manifest
from bridgeocr.data.sample import SPLIT_ALIASES, LineSample, LineSource, canonical_split
from bridgeocr.errors import DataError

__all__ = ["open_source", "LineSource", "LineSample", "canonical_split", "SPLIT_ALIASES"]

def open_source(spec, split: str | None = None, *, split_file=None, iam_split_dir=None,
                drop_err: bool = False, strict: bool = False, allow_outside: bool = False,
                split_by: str = "page") -> LineSource:
    """Open a line source; DataError naming the path if it is missing or of an unknown kind.

    `split`: None for every line, or train/val/test (IAM also val2, or a split list's path).
    `strict`: raise the first problem (bad manifest row) instead of recording it in `.problems`.
    `allow_outside`: a manifest may name images outside its folder (else such rows are refused, as
    problems; decided on the lexical path, symlinks unresolved: see data/manifest.py); for PAGE / ALTO,
    XML files or page images outside the source's folder.
    `split_by`: PAGE / ALTO without a split file: `page` (a hash of the page's name) or `document`.
    """
    if isinstance(spec, LineSource):
        return spec
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(str(path), "data source not found")
    if path.is_dir():
        if (path / "ascii" / "lines.txt").is_file():

            return open_iam(path, split, split_dir=iam_split_dir, drop_err=drop_err)
        for name in ("manifest.tsv", "manifest.jsonl", "labels.tsv"):
            if (path / name).is_file():
                path = path / name
                break
        else:

            if looks_like_layout_dir(path):
                return _open_layout(path, split, split_file, strict, allow_outside, split_by)
            raise DataError(str(path), "unknown data source: expected ascii/lines.txt (IAM), manifest.tsv "
                            "or labels.tsv inside, or PAGE / ALTO .xml files")
    if path.suffix.lower() == ".xml" or path.suffix.lower() == ".lst":
        return _open_layout(path, split, split_file, strict, allow_outside, split_by)
    if path.suffix.lower() == ".txt" and not path.name.endswith(".tsv.txt"):

        if is_layout_list(path):
            return _open_layout(path, split, split_file, strict, allow_outside, split_by)
    if path.suffix.lower() in (".tsv", ".jsonl", ".txt") or path.name.endswith(".tsv.txt"):
        if path.name == "lines.txt" and path.parent.name == "ascii":

            return open_iam(path.parent.parent, split, split_dir=iam_split_dir, drop_err=drop_err)

        return open_manifest(path, split, split_file=split_file, strict=strict, allow_outside=allow_outside)
    raise DataError(str(path), "unknown data source: expected an IAM root, a .tsv/.jsonl manifest, a "
                    "dataset directory or PAGE / ALTO .xml")


def _open_layout(path, split, split_file, strict, allow_outside, split_by) -> LineSource:

    return open_layout(path, split, split_file=split_file, strict=strict, allow_outside=allow_outside,
                       split_by=split_by)


# why a row of a source was not used, from its one-line problem message (the first match wins)
DROP_REASONS = (("): image file not found", "image not found"), (" is not in ", "not in the manifest"),
                ("' leads outside the ", "outside the folder"), (": duplicate of line ", "duplicate"),
                # PAGE / ALTO (data/layout.py)
                (": no text; line skipped", "no text"), (": duplicate line id", "duplicate"),
                ("degenerate", "bad line geometry"), (" lies outside the ", "bad line geometry"),
                ("no polygon and no baseline", "bad line geometry"), (": no TextLine;", "no TextLine"),
                ("was already read; file skipped", "duplicate"), ("; file skipped", "unreadable XML"),
                (": unreadable image", "unreadable image"))
_LINES_SKIPPED = re.compile(r"; (\d+) lines skipped$")


def drop_reasons(problems: list[str]) -> dict[str, int]:
    """{reason: rows} for the problems a source recorded (a row without a TAB, bad JSON, ...: `bad row`),
    so that a scored result says what it left out and why."""
    out: dict[str, int] = {}
    for msg in problems:
        reason = next((name for key, name in DROP_REASONS if key in msg), "bad row")
        many = _LINES_SKIPPED.search(msg)  # one problem for a whole page (its image is missing): its lines
        out[reason] = out.get(reason, 0) + (int(many.group(1)) if many else 1)
    return out


def format_drops(dropped: dict[str, int]) -> str:
    """`1 image not found, 2 bad row` (what `drop_reasons` counted) for a one-line report."""
    return ", ".join(f"{n} {reason}" for reason, n in dropped.items())
