"""Synthetic text-line datasets: lines cut from a corpus, rendered with many fonts and degradations.

`make_dataset(corpus, out, n, ...)` writes

    OUT/images/{train,val,test}/000123.png|.jpg   line images (height `height`, dark ink on light paper)
    OUT/manifest.tsv     images/train/000123.png<TAB>text
    OUT/split.tsv        images/train/000123.png<TAB>train<TAB>font name
    OUT/settings.json    every setting, the fonts, the seed and the counts

The same arguments give a byte-identical dataset (each line has its own seeds, so a process pool
does not change the result). train/val/test never share a line of text. With `holdout_fonts`, the
matching fonts are used only for val/test (and val/test use only them), so val/test measure
generalisation to unseen fonts.

Benchmark-only fonts (`fonts.BENCHMARK_ONLY_KEYS`: handwriting and print packages .ci/run does not install)
never render a train line, whatever the arguments; val/test use them only when `holdout_fonts` names
them. A held-out benchmark set is therefore e.g.

    bridgeocr data synth --style handwriting --holdout-fonts kaushan ecolier --val-fraction 0 \
        --test-fraction 1 --corpus ../shared/data/gutenberg_en/val.txt --n 400 --out runs/data/synth_hw

(fractions may sum to 1: an evaluation-only set with no train lines).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bridgeocr.data.corpus import cut_lines, read_corpus
from bridgeocr.data.synth.fonts import FontInfo, benchmark_only, covers, find_fonts
from bridgeocr.data.synth.render import encode_image, render_line
from bridgeocr.errors import DataError

RENDERER_VERSION = 1
SPLITS = ("train", "val", "test")


def _unique_lines(docs: list[str], need: int, seed: int, max_passes: int = 40) -> list[str]:
    """At least `need` distinct lines if the corpus allows: re-cut with new random line lengths."""
    seen: dict[str, None] = {}
    for k in range(max_passes):
        for line in cut_lines(docs, random.Random(seed * 7919 + k)):
            line = line.strip()
            if line.isprintable() and "\t" not in line:
                seen.setdefault(line, None)
        if len(seen) >= need:
            break
    lines = list(seen)
    random.Random(seed).shuffle(lines)
    return lines


def _render_job(job: tuple) -> tuple[int, str, dict]:
    index, text, split, font_path, handwriting, height, seed, out = job
    rng = random.Random(f"line:{seed}:{index}")
    nprng = np.random.default_rng([seed, index, 7])
    img, params = render_line(text, font_path, height, rng, nprng, handwriting=handwriting)
    data, ext = encode_image(img, params["jpeg"])
    rel = f"images/{split}/{index:06d}{ext}"
    with open(Path(out) / rel, "wb") as fh:
        fh.write(data)
    return index, rel, {"width": img.width, "jpeg": bool(params["jpeg"])}


def _prepare_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise DataError(str(out), "output path exists and is not a directory")
        if any(out.iterdir()) and not (out / "settings.json").is_file():
            raise DataError(str(out), "output directory is not empty and is not a synth dataset "
                            "(no settings.json); refusing to write into it")
        shutil.rmtree(out / "images", ignore_errors=True)
    for s in SPLITS:
        (out / "images" / s).mkdir(parents=True, exist_ok=True)


def make_dataset(corpus=None, out="runs/data/synth", n: int = 2000, fonts=None, style: str = "all",
                 holdout_fonts=None, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 height: int = 48, seed: int = 0, workers: int | None = None,
                 progress: bool = True) -> dict:
    """Render `n` lines (all splits) into `out`; returns a summary dict (also in settings.json).

    Train lines never use a benchmark-only font (`fonts.BENCHMARK_ONLY_KEYS`); val/test use one only
    when `holdout_fonts` names it. `val_fraction + test_fraction` may be 1 (no train lines)."""
    t0 = time.time()
    _check_sizes(n, val_fraction, test_fraction, height)
    out = Path(out)
    font_list, rejected = find_fonts(fonts, style)
    held = _held_out_fonts(font_list, holdout_fonts)
    # benchmark-only fonts: never in train; in val/test only when held out by name
    reserved = [f for f in font_list if benchmark_only(f.path) and f not in held]
    train_fonts = [f for f in font_list if f not in held and f not in reserved]
    eval_fonts = held or [f for f in font_list if f not in reserved]
    n_test = min(n, round(n * test_fraction))
    n_val = min(n - n_test, round(n * val_fraction))
    n_train = n - n_val - n_test
    _check_fonts_left(n_train, n_val + n_test, train_fonts, eval_fonts)
    texts = _corpus_lines(corpus, n, seed)
    jobs, no_glyph = _plan_lines(texts, (("test", n_test), ("val", n_val), ("train", n_train)), train_fonts,
                                 eval_fonts, height, seed, out)

    _prepare_out(out)
    if workers is None:
        workers = 1 if len(jobs) < 2000 else min(8, os.cpu_count() or 1)
    results = _render_all(jobs, workers, progress)
    counts = _write_lists(out, jobs, results, {f.path: f.name for f in font_list})
    widths = [info["width"] for _, info in results.values()]
    settings = {
        "renderer_version": RENDERER_VERSION,
        "corpus": [str(c) for c in corpus] if corpus else "built-in",
        "n": n, "style": style, "holdout_fonts": list(holdout_fonts or []),
        "val_fraction": val_fraction, "test_fraction": test_fraction, "height": height, "seed": seed,
        "counts": counts, "skipped_no_glyph": no_glyph,
        "jpeg": sum(info["jpeg"] for _, info in results.values()),
        "width": {"min": min(widths), "mean": round(sum(widths) / len(widths), 1), "max": max(widths)},
        "fonts": _font_uses(font_list, held, reserved),
        "rejected_fonts": rejected,
    }
    (out / "settings.json").write_text(json.dumps(settings, indent=1, ensure_ascii=False), encoding="utf-8")
    elapsed = time.time() - t0
    return {**settings, "out": str(out), "elapsed_s": round(elapsed, 2),
            "lines_per_s": round(len(jobs) / max(elapsed, 1e-9), 1), "workers": workers}


def _check_sizes(n: int, val_fraction: float, test_fraction: float, height: int) -> None:
    """Refuse, before any work, a line count, split fractions or a line height that cannot make a dataset."""
    if n < 1:
        raise DataError("--n", f"need at least 1 line, got {n}")
    if not (0 <= val_fraction <= 1 and 0 <= test_fraction <= 1 and val_fraction + test_fraction <= 1):
        raise DataError("--val-fraction/--test-fraction", "fractions must be in [0, 1] and sum to at most 1")
    if height < 8:
        raise DataError("--height", f"line height {height} is too small (>= 8)")


def _held_out_fonts(font_list: list[FontInfo], holdout_fonts) -> list[FontInfo]:
    """The fonts whose name or file name contains one of `holdout_fonts` (case-insensitive); naming some
    that match none is an error."""
    if not holdout_fonts:
        return []
    keys = [h.lower() for h in holdout_fonts]
    held = [f for f in font_list if any(k in f.name.lower() or k in Path(f.path).name.lower() for k in keys)]
    if not held:
        raise DataError("--holdout-fonts", f"no font matches {', '.join(holdout_fonts)}")
    return held


def _check_fonts_left(n_train: int, n_eval: int, train_fonts: list, eval_fonts: list) -> None:
    """Every split that gets lines must have a font left to render them."""
    if n_train > 0 and not train_fonts:
        raise DataError("--holdout-fonts", "every font is held out or benchmark-only: none left for train")
    if n_eval > 0 and not eval_fonts:
        raise DataError("--holdout-fonts", "only benchmark-only fonts are left for val/test: name them with "
                        "--holdout-fonts")


def _corpus_lines(corpus, n: int, seed: int) -> list[str]:
    """Distinct candidate texts, with a margin over `n` for those no font can render."""
    docs = read_corpus(corpus)
    if not docs:
        raise DataError(", ".join(map(str, corpus or ["built-in corpus"])), "corpus is empty")
    return _unique_lines(docs, int(n * 1.2) + 10, seed)


def _plan_lines(texts: list[str], sizes, train_fonts: list[FontInfo], eval_fonts: list[FontInfo],
                height: int, seed: int, out: Path) -> tuple[list[tuple], int]:
    """Choose each line's text and font (main process; cheap): the splits in the order of `sizes`
    ((split, count) pairs: test, val, then train), never re-using a text -> (render jobs, texts skipped
    because no font tried had their glyphs)."""
    jobs = []
    no_glyph = 0
    cursor = 0
    index = 0
    for split, count in sizes:
        pool = eval_fonts if split != "train" else train_fonts
        made = 0
        while made < count and cursor < len(texts):
            text = texts[cursor]
            cursor += 1
            pick = random.Random(f"font:{seed}:{cursor}")
            order = list(range(len(pool)))
            pick.shuffle(order)
            font = next((pool[k] for k in order[:8] if covers(pool[k].path, text)), None)
            if font is None:
                no_glyph += 1
                continue
            jobs.append((index, text, split, font.path, font.style == "handwriting", height, seed, str(out)))
            index += 1
            made += 1
    if not jobs:
        raise DataError("corpus", "no line could be rendered (no font has the glyphs)")
    return jobs, no_glyph


def _render_all(jobs: list[tuple], workers: int, progress: bool) -> dict[int, tuple[str, dict]]:
    """Render and write every line (a spawn pool with `workers` > 1) -> {index: (relative path, info)}."""
    results: dict[int, tuple[str, dict]] = {}
    bar = tqdm(total=len(jobs), desc="synth", unit="line", disable=not progress, dynamic_ncols=True)
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            for i, rel, info in pool.imap_unordered(_render_job, jobs, chunksize=16):
                results[i] = (rel, info)
                bar.update()
    else:
        for job in jobs:
            i, rel, info = _render_job(job)
            results[i] = (rel, info)
            bar.update()
    bar.close()
    return results


def _write_lists(out: Path, jobs: list[tuple], results: dict[int, tuple[str, dict]],
                 name_of: dict[str, str]) -> dict[str, int]:
    """manifest.tsv and split.tsv, in job order -> the number of lines per split."""
    counts = {s: 0 for s in SPLITS}
    with open(out / "manifest.tsv", "w", encoding="utf-8", newline="\n") as man, \
            open(out / "split.tsv", "w", encoding="utf-8", newline="\n") as spl:
        for job in jobs:
            i, text, split, font_path = job[0], job[1], job[2], job[3]
            rel = results[i][0]
            man.write(f"{rel}\t{text}\n")
            spl.write(f"{rel}\t{split}\t{name_of[font_path]}\n")
            counts[split] += 1
    return counts


def _font_uses(font_list: list[FontInfo], held: list[FontInfo], reserved: list[FontInfo]) -> list[dict]:
    """settings.json's font list: each font with the splits it rendered."""
    return [{"name": f.name, "path": f.path, "style": f.style,
             "used_for": ("val/test" if f in held else "none (benchmark-only)" if f in reserved
                          else "train" if held else "all")} for f in font_list]


def make_dataset_cli(corpus=None, out="runs/data/synth", n=2000, fonts=None, style="all", holdout_fonts=None,
                     val_fraction=0.1, test_fraction=0.1, height=48, seed=0) -> int:
    s = make_dataset(corpus=corpus, out=out, n=n, fonts=fonts, style=style, holdout_fonts=holdout_fonts,
                     val_fraction=val_fraction, test_fraction=test_fraction, height=height, seed=seed)
    c = s["counts"]
    n_hand = sum(f["style"] == "handwriting" for f in s["fonts"])
    print(f"wrote {sum(c.values())} lines to {s['out']}: train {c['train']}, val {c['val']}, test {c['test']}")
    print(f"fonts: {len(s['fonts'])} ({n_hand} handwriting), held out for val/test: "
          f"{', '.join(f['name'] for f in s['fonts'] if f['used_for'] == 'val/test') or 'none'}")
    unused = [f["name"] for f in s["fonts"] if f["used_for"].startswith("none")]
    if unused:
        print(f"benchmark-only fonts not used (name them with --holdout-fonts for val/test): {', '.join(unused)}")
    print(f"height {s['height']} px, width {s['width']['min']}-{s['width']['max']} (mean {s['width']['mean']}), "
          f"{s['jpeg']} JPEG, {s['skipped_no_glyph']} texts skipped (no glyphs)")
    print(f"{s['elapsed_s']} s, {s['lines_per_s']} lines/s with {s['workers']} process(es); settings: "
          f"{Path(s['out']) / 'settings.json'}")
    if sum(c.values()) < n:
        print(f"warning: only {sum(c.values())} of {n} lines: the corpus has too few distinct lines "
              "(give a bigger --corpus)")
    return 0


__all__ = ["make_dataset", "make_dataset_cli", "find_fonts"]
