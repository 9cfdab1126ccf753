"""Cut the text lines of ALTO XML pages (e.g. eScriptorium exports) into a bridgeocr line manifest.

usage: python scripts/alto_lines.py PAGES_DIR --out OUT [--seed 0] [--val-pages 4] [--test-pages 4] [--pad 4]

PAGES_DIR holds ALTO pages (v2-v4, coordinates in pixels) `NAME.xml`, each beside its image
`NAME.jpg` (or .jpeg/.png/.tif/.tiff). Writes:

    OUT/lines/<page>/<line_id>.png   grayscale crop of one TextLine
    OUT/manifest.tsv                   lines/<page>/<line_id>.png<TAB>text
    OUT/split.tsv                    lines/<page>/<line_id>.png<TAB>train|val|test<TAB><page>

A crop is the bounding box of the line's Shape/Polygon (plus --pad, clipped to the image) with the
pixels outside the polygon painted in the local paper colour (90th percentile of the pixels inside
it). A line without a polygon is cut as a band around its BASELINE (height from the TextLine HEIGHT
attribute, else 40 px). The text is the line's String@CONTENT values joined by single spaces.
Whole pages go to one split: the page names are sorted, shuffled with --seed, and the first
--val-pages go to val, the next --test-pages to test, the rest to train.

Lines with empty text are skipped (counted). A bad line or page (malformed XML, missing image,
empty or degenerate polygon) is skipped with one line on stderr naming the XML file and line id.
Exit status: 0 when at least one line was written, 1 otherwise.
Read the result with e.g. `open_source("OUT/manifest.tsv", "train", split_file="OUT/split.tsv")`.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".JPG", ".JPEG", ".PNG", ".TIF", ".TIFF")
DEFAULT_LINE_HEIGHT = 40  # px, for a baseline-only line without a HEIGHT attribute
BAND_ABOVE, BAND_BELOW = 0.75, 0.25  # share of the line height above / below the baseline
PAPER_PERCENTILE = 90

Point = tuple[float, float]


class AltoLine(NamedTuple):
    id: str
    text: str
    polygon: list[Point] | None  # None: the line has no Shape/Polygon; []: it has one, unreadable
    baseline: list[Point] | None
    hpos: float | None
    vpos: float | None
    width: float | None
    height: float | None


def _local(tag) -> str:
    """'{http://www.loc.gov/standards/alto/ns-v4#}TextLine' -> 'TextLine' (any ALTO namespace)."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _points(value: str | None) -> list[Point] | None:
    """ALTO points, "x1 y1 x2 y2 ..." (v4.0/4.1) or "x1,y1 x2,y2 ..." (v2/v3/v4.2); [] if unreadable."""
    if value is None:
        return None
    try:
        nums = [float(v) for v in value.replace(",", " ").split()]
    except ValueError:
        return []
    if len(nums) % 2:
        return []
    return list(zip(nums[0::2], nums[1::2]))


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def parse_alto(path) -> list[AltoLine]:
    """Every TextLine of an ALTO file, in document order.

    Raises ET.ParseError for malformed XML and ValueError for coordinates not in pixels.
    """
    root = ET.parse(path).getroot()
    unit = next((el.text for el in root.iter() if _local(el.tag) == "MeasurementUnit"), None)
    if unit and unit.strip() != "pixel":
        raise ValueError(f"MeasurementUnit {unit.strip()!r} is not supported (only pixel)")
    lines = []
    for index, el in enumerate((el for el in root.iter() if _local(el.tag) == "TextLine"), start=1):
        polygon = None
        for shape in (c for c in el if _local(c.tag) == "Shape"):
            for poly in (c for c in shape if _local(c.tag) == "Polygon"):
                polygon = _points(poly.get("POINTS", ""))
        words = []
        for child in el:
            if _local(child.tag) == "String":
                words.append(child.get("CONTENT", ""))
            elif _local(child.tag) == "HYP" and words:
                words[-1] += child.get("CONTENT", "")
        text = " ".join(" ".join(words).split())
        lines.append(AltoLine(el.get("ID") or f"line{index:04d}", text, polygon, _points(el.get("BASELINE")),
                              *(_number(el.get(k)) for k in ("HPOS", "VPOS", "WIDTH", "HEIGHT"))))
    return lines


def _area(points: list[Point]) -> float:
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))) / 2


def _baseline_band(baseline: list[Point], height: float | None) -> list[Point]:
    h = height if height and height > 0 else DEFAULT_LINE_HEIGHT
    top = [(x, y - BAND_ABOVE * h) for x, y in baseline]
    bottom = [(x, y + BAND_BELOW * h) for x, y in reversed(baseline)]
    return top + bottom


def crop_line(image: Image.Image, polygon, baseline, pad: int = 4, height: float | None = None) -> Image.Image:
    """The grayscale crop of one line; outside its polygon, the paper colour. ValueError if unusable.

    `polygon` wins when given (even if it is unusable); else a band around `baseline` of `height`
    (default 40 px) is cut.
    """
    if polygon is not None:
        shape, what = list(polygon), "polygon"
    elif baseline is not None:
        if len(baseline) < 2:
            raise ValueError(f"degenerate baseline ({len(baseline)} points)")
        shape, what = _baseline_band(list(baseline), height), "baseline band"
    else:
        raise ValueError("no polygon and no baseline")
    if len(set(shape)) < 3 or _area(shape) < 1:
        raise ValueError(f"empty or degenerate {what} ({len(shape)} points, area {_area(shape):.0f})")
    image = image.convert("L")
    xs, ys = [x for x, _ in shape], [y for _, y in shape]
    x0, y0 = max(0, math.floor(min(xs)) - pad), max(0, math.floor(min(ys)) - pad)
    x1 = min(image.width, math.floor(max(xs)) + 1 + pad)
    y1 = min(image.height, math.floor(max(ys)) + 1 + pad)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{what} lies outside the {image.width}x{image.height} image")
    crop = image.crop((x0, y0, x1, y1))
    mask = Image.new("L", crop.size, 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in shape], fill=255, outline=255)
    inside = np.asarray(crop)[np.asarray(mask) > 0]
    if inside.size == 0:
        raise ValueError(f"{what} covers no pixel of the image")
    paper = int(round(float(np.percentile(inside, PAPER_PERCENTILE))))
    return Image.composite(crop, Image.new("L", crop.size, paper), mask)


def find_image(xml_path: Path) -> Path | None:
    return next((p for p in (xml_path.with_suffix(s) for s in IMAGE_SUFFIXES) if p.is_file()), None)


def _warn(xml_path: Path, message: str, line_id: str | None = None) -> None:
    where = f"{xml_path}: line {line_id}" if line_id else f"{xml_path}"
    tqdm.write(f"{where}: {message}", file=sys.stderr)


def convert_page(xml_path: Path, out: Path, pad: int, skipped: Counter) -> list[tuple[str, str]]:
    """Write the crops of one page; (relative png path, text) per line written. Counts skips."""
    try:
        lines = parse_alto(xml_path)
    except (ET.ParseError, ValueError, OSError) as exc:
        skipped["malformed XML (pages)"] += 1
        _warn(xml_path, f"unreadable ALTO ({exc}); page skipped")
        return []
    if not lines:
        skipped["no TextLine (pages)"] += 1
        _warn(xml_path, "no TextLine; page skipped")
        return []
    image_path = find_image(xml_path)
    if image_path is None:
        skipped["missing image (pages)"] += 1
        _warn(xml_path, f"no image {xml_path.stem}.jpg/.png/.tif beside it; page skipped ({len(lines)} lines)")
        return []
    try:
        with Image.open(image_path) as img:
            page = img.convert("L")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
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
            crop = crop_line(page, line.polygon, line.baseline, pad, height=line.height)
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
