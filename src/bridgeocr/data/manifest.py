"""Manifests: TSV `relative/path.png<TAB>transcription` or JSONL `{"image", "text", "id"?}`.

Paths are relative to the manifest's folder. `#` lines and blank lines in a TSV are ignored. An
optional split file `relative_image_path<TAB>train|val|test[<TAB>group]` selects rows; beside
`manifest.tsv` it is `split.tsv`, beside `labels.tsv` it is `split_by_letter.tsv` (found
automatically). Every bad row becomes one `path:line: message` in `.problems` (or a DataError when
`strict`). Rows whose image file does not exist are not yielded; they count in `.missing`.

Rows whose image path leads outside the manifest's folder (`../../etc/passwd`, an absolute path
elsewhere) are refused (a problem, not yielded) unless `allow_outside`. This is decided on the
lexical path, `normpath(folder/path)`, without resolving symlinks: a dataset whose folders are
symlinks to storage elsewhere keeps working, while `..` and absolute paths cannot escape. A row
naming an image an earlier row already named (the same normalised path), or with an earlier row's
id (the JSONL `id`, or the id derived from the path), is a problem, `path:line: duplicate of line
N`, and only the first is kept, so no line is read or scored twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from bridgeocr.data.sample import LineSample, LineSource, canonical_split
from bridgeocr.errors import DataError

AUTO_SPLIT_FILES = {"manifest.tsv": "split.tsv", "manifest.jsonl": "split.tsv",
                    "labels.tsv": "split_by_letter.tsv"}


def _lines(path: Path):
    """(lineno, text | None) for every line; None when it is not valid UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(str(path), f"cannot read ({exc.strerror})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield lineno, DataError(f"{path}:{lineno}", f"text is not valid UTF-8 (byte {exc.start})")


def find_split_file(manifest: Path) -> Path | None:
    name = AUTO_SPLIT_FILES.get(manifest.name)
    if name and (manifest.parent / name).is_file():
        return manifest.parent / name
    return None


class SplitRow(NamedTuple):
    """One row of a split file: the canonical split, the row's line number, its group (third column, or '')."""

    split: str
    lineno: int
    group: str = ""


def read_split_file(path: Path, problems: list[str], strict: bool = False) -> dict[str, SplitRow]:
    """relative image path -> its SplitRow."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "split file not found")
    out: dict[str, SplitRow] = {}
    for lineno, line in _lines(path):
        if isinstance(line, DataError):
            if strict:
                raise line
            problems.append(str(line))
            continue
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0] or not parts[1].strip():
            err = DataError(f"{path}:{lineno}", "expected relative_image_path<TAB>split[<TAB>group]")
            if strict:
                raise err
            problems.append(str(err))
            continue
        group = parts[2].strip() if len(parts) > 2 else ""
        out[_norm(parts[0])] = SplitRow(canonical_split(parts[1]), lineno, group)
    return out


def _norm(rel: str) -> str:
    return rel.strip().replace("\\", "/").removeprefix("./")


def _parse_rows(path: Path, problems: list[str], strict: bool):
    """(lineno, rel_path, text, id | None) for every good row."""
    jsonl = path.suffix.lower() == ".jsonl"
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        try:
            if isinstance(line, DataError):
                raise line
            if not line.strip() or (not jsonl and line.startswith("#")):
                continue
            if jsonl:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(where, f"not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("image"), str) \
                        or not isinstance(row.get("text"), str):
                    raise DataError(where, 'expected {"image": str, "text": str, "id"?: str}')
                rel, text, sid = row["image"], row["text"], row.get("id")
            else:
                if "\t" not in line:
                    raise DataError(where, "expected relative/path<TAB>transcription (no TAB found)")
                rel, text = line.split("\t", 1)
                sid = None
            if not rel.strip():
                raise DataError(where, "empty image path")
        except DataError as exc:
            if strict:
                raise
            problems.append(str(exc))
            continue
        yield lineno, _norm(rel), text, (str(sid) if sid is not None else None)


def _lexical(root: Path, rel: str) -> tuple[str, bool]:
    """(normpath of root/rel, whether it lies inside root), decided without resolving symlinks."""
    base = os.path.abspath(root)
    full = os.path.normpath(os.path.join(base, rel))
    inside = full == base or full.startswith(base.rstrip(os.sep) + os.sep)
    return full, inside


def open_manifest(path, split: str | None = None, *, split_file=None, strict: bool = False,
                  allow_outside: bool = False) -> LineSource:
    """A manifest's rows (of `split`, when given) as a LineSource; see the module docstring.

    `allow_outside`: also accept image paths that lead outside the manifest's folder (decided on
    the lexical path, symlinks unresolved).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "manifest not found")
    problems: list[str] = []
    split_path, splits, want = _manifest_splits(path, split, split_file, problems, strict)
    samples, seen, missing = _manifest_samples(path, splits, want, problems, strict, allow_outside)
    if want is not None:  # rows of the split asked for that the manifest lacks
        for rel, row in splits.items():
            if row.split == want and rel not in seen:
                missing += 1
                problems.append(f"{split_path}:{row.lineno}: {rel} is not in {path.name}")
    name = f"{path.parent.name}/{path.name}" + (f":{want}" if want else "")
    return LineSource(samples, name, missing=missing, problems=problems, root=path.parent, split=want)


def _manifest_splits(path: Path, split: str | None, split_file, problems: list[str], strict: bool
                     ) -> tuple[Path | None, dict[str, SplitRow] | None, str | None]:
    """-> (the split file, its rows, the canonical split); asking for a split without a split file, or for
    one it has no rows of, is an error. Without a split asked for, a split file still gives the groups; its
    bad rows are then not the caller's problem."""
    split_path = Path(split_file) if split_file else find_split_file(path)
    if split is None:
        return split_path, _groups_only(split_path), None
    if split_path is None:
        raise DataError(str(path), f"split {split!r} asked for but no split file found "
                        f"(expected {AUTO_SPLIT_FILES.get(path.name, 'split.tsv')} beside it, or --split-file)")
    splits = read_split_file(split_path, problems, strict)
    want = canonical_split(split)
    if want not in {row.split for row in splits.values()}:
        known = sorted({row.split for row in splits.values()})
        raise DataError(str(split_path), f"no rows for split {split!r} (splits: {', '.join(known)})")
    return split_path, splits, want


def _groups_only(split_path: Path | None) -> dict[str, SplitRow] | None:
    """A split file read for its groups alone (no split asked for): it may be absent, unreadable or have bad
    rows, and reading every line works as it did without it."""
    if split_path is None or not split_path.is_file():
        return None
    try:
        return read_split_file(split_path, [])
    except DataError:
        return None


def _manifest_samples(path: Path, splits: dict[str, SplitRow] | None, want: str | None,
                      problems: list[str], strict: bool, allow_outside: bool
                      ) -> tuple[list[LineSample], set[str], int]:
    """The rows of split `want` (every row without a split file) whose image may be read and exists ->
    (samples, the image paths of the rows of that split, how many images are missing). A row leading
    outside the folder or repeating an earlier image or id is refused."""
    root = path.parent
    samples: list[LineSample] = []
    seen: set[str] = set()
    first = _FirstRows()
    missing = 0
    for lineno, rel, text, sid in _parse_rows(path, problems, strict):
        entry = splits.get(rel) if splits is not None else None
        if want is not None and (entry is None or entry.split != want):
            continue
        seen.add(rel)
        origin = f"{path}:{lineno}"
        full, inside = _lexical(root, rel)
        if not inside and not allow_outside:
            _refuse(problems, strict, origin, f"image path {rel!r} leads outside the manifest's folder "
                    f"{root} (refused; allow with data.allow_outside / --allow-outside)")
            continue
        sample_id = sid or str(Path(rel).with_suffix("")).replace("\\", "/")
        duplicate = first.duplicate(lineno, os.path.normcase(full), rel, sample_id)
        if duplicate:
            _refuse(problems, strict, origin, duplicate)
            continue
        image_path = root / rel
        if not image_path.is_file():
            missing += 1
            problems.append(f"{image_path} (from {origin}): image file not found")
            continue
        samples.append(LineSample(id=sample_id, text=text, image_path=image_path, origin=origin,
                                  group=entry.group if entry is not None else ""))
    return samples, seen, missing


def _refuse(problems: list[str], strict: bool, origin: str, msg: str) -> None:
    """A refused row: raised when strict, else one `origin: msg` problem."""
    if strict:
        raise DataError(origin, msg)
    problems.append(f"{origin}: {msg}")


class _FirstRows:
    """The first row naming each image (lexical, normcased path) and each id, so no line is read twice."""

    def __init__(self):
        self.by_path: dict[str, int] = {}  # lexical image path -> line of the first row naming it
        self.by_id: dict[str, int] = {}

    def duplicate(self, lineno: int, key: str, rel: str, sample_id: str) -> str | None:
        """Why the row is a duplicate of an earlier one, else None (and the row is the first of both)."""
        if key in self.by_path:
            return f"duplicate of line {self.by_path[key]} (the same image {rel}; only the first is kept)"
        if sample_id in self.by_id:
            return (f"duplicate of line {self.by_id[sample_id]} (the same id {sample_id!r}; only the "
                    "first is kept)")
        self.by_path[key] = lineno
        self.by_id[sample_id] = lineno
        return None
