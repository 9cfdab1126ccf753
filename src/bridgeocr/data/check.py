"""`bridgeocr data check`: counts, character set, length and width statistics, and every problem."""

from __future__ import annotations

import statistics
from collections import Counter

from tqdm import tqdm

from bridgeocr.data.preprocess import MIN_SIDE
from bridgeocr.data.sources import open_source
from bridgeocr.errors import DataError

REFERENCE_HEIGHT = 32  # widths are also reported as if every line were scaled to this height
MIN_ASPECT, MAX_ASPECT = 0.5, 100.0


def _stats(values) -> str:
    if not values:
        return "n/a"
    return (f"min {min(values):g}, median {statistics.median(values):g}, mean {statistics.fmean(values):.1f}, "
            f"max {max(values):g}")


def check_source(source, split=None, split_file=None, iam_split_dir=None, progress: bool = True,
                 allow_outside: bool = False, split_by: str = "page") -> dict:
    """Read every sample; return counts, statistics and `problems` (one 'file:line: message' each).

    Manifest rows naming images outside the manifest's folder (unless `allow_outside`) and duplicate
    rows or ids are problems too (data/manifest.py), as are degenerate (< 2 px) images.
    """
    src = open_source(source, split, split_file=split_file, iam_split_dir=iam_split_dir,
                      allow_outside=allow_outside, split_by=split_by)
    problems = list(src.problems)
    chars: Counter = Counter()
    lengths, raw_w, raw_h, ref_w = [], [], [], []
    for s in tqdm(src, desc="check", unit="line", disable=not progress, dynamic_ncols=True):
        where = s.origin or s.id
        named = f"{s.image_path} (from {where})" if s.image_path is not None else where
        if not s.text.strip():
            problems.append(f"{where}: empty transcription")
        chars.update(s.text)
        lengths.append(len(s.text))
        try:
            img = s.load_image()
        except DataError as exc:
            problems.append(str(exc))
            continue
        except Exception as exc:  # anything PIL throws is still a problem with this file
            problems.append(f"{named}: unreadable image ({type(exc).__name__})")
            continue
        w, h = img.size
        if w < MIN_SIDE or h < MIN_SIDE:
            problems.append(f"{named}: degenerate image {w}x{h} px (nothing to read)")
            continue
        raw_w.append(w)
        raw_h.append(h)
        ref_w.append(round(w * REFERENCE_HEIGHT / h))
        aspect = w / h
        if aspect < MIN_ASPECT or aspect > MAX_ASPECT:
            problems.append(f"{named}: absurd aspect ratio {w}x{h} "
                            f"(width/height {aspect:.2f}, expected {MIN_ASPECT:g}..{MAX_ASPECT:g})")
    return {"name": src.name, "lines": len(src), "missing": src.missing, "chars": chars, "lengths": lengths,
            "raw_widths": raw_w, "raw_heights": raw_h, "ref_widths": ref_w, "problems": problems}


def check_source_cli(source, split=None, split_file=None, iam_split_dir=None, allow_outside=False,
                     split_by="page") -> int:
    r = check_source(source, split, split_file, iam_split_dir, allow_outside=allow_outside, split_by=split_by)
    print(f"source: {r['name']}  ({source}{', split ' + split if split else ''})")
    print(f"lines: {r['lines']}   missing: {r['missing']}   readable images: {len(r['raw_widths'])}")
    chars = r["chars"]
    print(f"characters: {len(chars)} distinct, {sum(chars.values())} total")
    print("  " + "  ".join(f"{c!r}:{n}" for c, n in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))))
    print(f"text length (chars): {_stats(r['lengths'])}")
    print(f"image height (raw): {_stats(r['raw_heights'])}")
    print(f"image width (raw): {_stats(r['raw_widths'])}")
    print(f"image width at height {REFERENCE_HEIGHT}: {_stats(r['ref_widths'])}")
    problems = r["problems"]
    if problems:
        print(f"{len(problems)} problem(s):")
        for p in problems:
            print(f"  {p}")
        return 1
    print("no problems found")
    return 0
