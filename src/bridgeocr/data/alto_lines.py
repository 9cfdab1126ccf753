"""Cut the text lines of ALTO / PAGE XML pages (e.g. eScriptorium exports) into a bridgeocr line manifest.

usage: python scripts/alto_lines.py PAGES_DIR --out OUT [--seed 0] [--val-pages 4] [--test-pages 4] [--pad 4]

PAGES_DIR holds ALTO (v2-v4, coordinates in pixels) or PAGE XML pages `NAME.xml`, each with its image
(the one the XML names, else `NAME.jpg` / .jpeg/.png/.tif/.tiff beside it). Writes:

    OUT/lines/<page>/<line_id>.png   grayscale crop of one TextLine
    OUT/manifest.tsv                   lines/<page>/<line_id>.png<TAB>text
    OUT/split.tsv                    lines/<page>/<line_id>.png<TAB>train|val|test<TAB><page>

A crop is the bounding box of the line's Shape/Polygon (plus --pad, clipped to the image) with the
pixels outside the polygon painted in the local paper colour (90th percentile of the pixels inside
it). A line without a polygon is cut as a band around its BASELINE (height from the TextLine HEIGHT
attribute, else 40 px); a line whose baseline slopes by more than 0.5 degrees is deskewed. The text is
the line's String@CONTENT values joined by single spaces (PAGE: its TextEquiv). The cutting is
bridgeocr.data.layout's, the same as a PAGE / ALTO folder read directly as a source
(`open_source("PAGES_DIR")`), which needs no cutting at all.
Whole pages go to one split: the page names are sorted, shuffled with --seed, and the first
--val-pages go to val, the next --test-pages to test, the rest to train.

Lines with empty text are skipped (counted). A bad line or page (malformed XML, missing image,
empty or degenerate polygon) is skipped with one line on stderr naming the XML file and line id.
Exit status: 0 when at least one line was written, 1 otherwise.
Read the result with e.g. `open_source("OUT/manifest.tsv", "train", split_file="OUT/split.tsv")`.
The same command: `python -m bridgeocr.data.alto_lines`.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from bridgeocr.data.layout import (  # noqa: F401 - re-exported for scripts/alto_lines.py
    DEFAULT_LINE_HEIGHT,
    IMAGE_SUFFIXES,
    LayoutError,
    LayoutLine,
    crop_line,
    parse_layout,
    resolve_image,
)
from bridgeocr.data.sample import load_line_image
from bridgeocr.errors import DataError

AltoLine = LayoutLine


def parse_alto(path) -> list[LayoutLine]:
    """Every TextLine of an ALTO (or PAGE) file, in document order; LayoutError (a ValueError) for
    malformed XML or coordinates not in pixels."""
    return parse_layout(path).lines


def find_image(xml_path: Path) -> Path | None:
    """A same-stem image beside the XML (.jpg/.jpeg/.png/.tif/.tiff, either case), or None."""
    suffixes = IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES)
    return next((p for p in (Path(xml_path).with_suffix(s) for s in suffixes) if p.is_file()), None)


def _warn(xml_path: Path, message: str, line_id: str | None = None) -> None:
    where = f"{xml_path}: line {line_id}" if line_id else f"{xml_path}"
    tqdm.write(f"{where}: {message}", file=sys.stderr)


def convert_page(xml_path: Path, out: Path, pad: int, skipped: Counter) -> list[tuple[str, str]]:
    """Write the crops of one page; (relative png path, text) per line written. Counts skips."""
    try:
        page = parse_layout(xml_path)
    except (LayoutError, OSError) as exc:
        skipped["malformed XML (pages)"] += 1
        _warn(xml_path, f"unreadable ALTO/PAGE ({exc}); page skipped")
        return []
    lines = page.lines
    if not lines:
        skipped["no TextLine (pages)"] += 1
        _warn(xml_path, "no TextLine; page skipped")
        return []
    image_path, why = resolve_image(page, allow_outside=True)
    if image_path is None:
        skipped["missing image (pages)"] += 1
        _warn(xml_path, f"no image: {why}; page skipped ({len(lines)} lines)")
        return []
    try:
        image = load_line_image(image_path)
    except (DataError, ValueError, OSError) as exc:
        skipped["unreadable image (pages)"] += 1
        _warn(xml_path, f"cannot read {image_path.name} ({exc}); page skipped")
        return []
    rows, seen = [], set()
    for line in lines:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", line.id)
        if not line.text:
            skipped["empty text"] += 1
            continue
        if name in seen:
            skipped["duplicate line id"] += 1
            _warn(xml_path, "duplicate line id; line skipped", line.id)
            continue
        try:
            crop = crop_line(image, line.polygon, line.baseline, pad, height=line.height,
                             box=(line.hpos, line.vpos, line.width, line.height))
        except ValueError as exc:
            skipped["bad polygon"] += 1
            _warn(xml_path, f"{exc}; line skipped", line.id)
            continue
        seen.add(name)
        rel = f"lines/{xml_path.stem}/{name}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        crop.save(out / rel)
        rows.append((rel, line.text))
    return rows


def assign_splits(pages: list[str], val_pages: int, test_pages: int, seed: int) -> dict[str, str]:
    """page -> train|val|test: sorted, shuffled with `seed`; the first val_pages val, the next test."""
    order = sorted(pages)
    random.Random(seed).shuffle(order)
    n_val = min(val_pages, len(order))
    n_test = min(test_pages, len(order) - n_val)
    return {page: ("val" if i < n_val else "test" if i < n_val + n_test else "train")
            for i, page in enumerate(order)}


def build_parser() -> argparse.ArgumentParser:
    summary, _usage, details = __doc__.split("\n\n", 2)
    parser = argparse.ArgumentParser(description=summary, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", type=Path, help="folder of ALTO .xml files with same-name images")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the page shuffle (default 0)")
    parser.add_argument("--val-pages", type=int, default=4, metavar="N", help="pages for val (default 4)")
    parser.add_argument("--test-pages", type=int, default=4, metavar="N", help="pages for test (default 4)")
    parser.add_argument("--pad", type=int, default=4, metavar="PX",
                        help="margin around each line's box, in pixels (default 4)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.pad < 0 or args.val_pages < 0 or args.test_pages < 0:
        print("error: --pad, --val-pages and --test-pages must be >= 0", file=sys.stderr)
        return 1
    if not args.pages.is_dir():
        print(f"error: {args.pages}: not a folder", file=sys.stderr)
        return 1
    xml_files = sorted(p for p in args.pages.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not xml_files:
        print(f"error: {args.pages}: no .xml files", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    skipped: Counter = Counter()
    rows_by_page: dict[str, list[tuple[str, str]]] = {}
    for xml_path in tqdm(xml_files, desc="pages", unit="page", disable=None):
        rows = convert_page(xml_path, args.out, args.pad, skipped)
        if rows:
            rows_by_page[xml_path.stem] = rows

    splits = assign_splits(list(rows_by_page), args.val_pages, args.test_pages, args.seed)
    if rows_by_page and "train" not in splits.values():
        print(f"warning: only {len(splits)} pages with lines; none left for train", file=sys.stderr)
    with open(args.out / "manifest.tsv", "w", encoding="utf-8", newline="\n") as labels, \
            open(args.out / "split.tsv", "w", encoding="utf-8", newline="\n") as split_file:
        for page in sorted(rows_by_page):
            for rel, text in rows_by_page[page]:
                labels.write(f"{rel}\t{text}\n")
                split_file.write(f"{rel}\t{splits[page]}\t{page}\n")

    per_split = {s: [0, 0] for s in ("train", "val", "test")}
    for page, rows in rows_by_page.items():
        per_split[splits[page]][0] += 1
        per_split[splits[page]][1] += len(rows)
    written = sum(len(rows) for rows in rows_by_page.values())
    parts = ", ".join(f"{s} {p} pages/{n} lines" for s, (p, n) in per_split.items())
    skips = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items())) or "none"
    print(f"{len(xml_files)} pages read, {len(rows_by_page)} with lines; {written} lines written to "
          f"{args.out} ({parts}); skipped: {skips}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
