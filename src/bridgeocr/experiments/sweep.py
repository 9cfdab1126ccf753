"""Grid sweeps: the Cartesian product of `key=v1,v2` axes over a base config, run one cell after
another in-process, resumable, then one comparison table over all cells.

A sweep file is a YAML with `base:` (a config path) and `grid:` (a mapping key -> list of values),
optionally `overrides:` (a list of dotted `key=value` for every cell) and `name:`. `sweep_cli` accepts
such a file as `--config`; a plain experiment config works too (then the axes come from `--grid`).

Cell names are built from the values, e.g. `model.connector.reduce_k=4__loss.kd_alpha=0.3`; the run
of a cell lives in `<sweep dir>/<cell name>`. A cell whose run dir holds a final `metrics.json` with
test results is skipped; a cell with a partial run (a `last/` checkpoint) is resumed.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import itertools
import json
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bridgeocr.config import load_config, read_yaml
from bridgeocr.errors import BridgeOCRError, ConfigError
from bridgeocr.experiments.compare import compare_cli, pyplot, save_figure
from bridgeocr.train import run as train_run

_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")
MAX_NAME = 120


@dataclass
class Cell:
    """One point of the grid: its name, its overrides (in axis order) and its run directory."""

    name: str
    overrides: list[str]
    run_dir: Path
    status: str = "new"  # new | partial | done
    values: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- grid


def _split_values(text: str) -> list[str]:
    """Split `v1,v2` on commas outside brackets/quotes, so `[1,2],[3,4]` is two values."""
    out, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def _value_str(value: Any) -> str:
    """A YAML value as dotlist text (None -> null, True -> true, lists in YAML flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def parse_grid(items: list[str] | dict | None) -> dict[str, list[str]]:
    """`["a.b=1,2", "c=x"]` or `{"a.b": [1, 2], "c": "x"}` -> `{"a.b": ["1", "2"], "c": ["x"]}`.

    Axes keep their order; a key given twice is a ConfigError; so is an axis with no values.
    """
    grid: dict[str, list[str]] = {}
    if not items:
        return grid
    if isinstance(items, dict):
        pairs = []
        for key, values in items.items():
            if not isinstance(values, (list, tuple)):
                values = [values]
            pairs.append((str(key), [_value_str(v) for v in values]))
    else:
        pairs = []
        for item in items:
            if "=" not in item:
                raise ConfigError(f"--grid {item!r}: expected dotted.key=v1,v2")
            key, _, rest = item.partition("=")
            pairs.append((key.strip(), _split_values(rest)))
    for key, values in pairs:
        if not key:
            raise ConfigError("grid: an axis has an empty key")
        if key in grid:
            raise ConfigError(f"grid: axis {key!r} given twice")
        values = [v for v in values if v != ""]
        if not values:
            raise ConfigError(f"grid: axis {key!r} has no values")
        if len(set(values)) != len(values):
            raise ConfigError(f"grid: axis {key!r} repeats a value")
        grid[key] = values
    return grid


def cell_name(assignments: list[tuple[str, str]]) -> str:
    """`[("model.connector.reduce_k", "4"), ("loss.kd_alpha", "0.3")]` ->
    `model.connector.reduce_k=4__loss.kd_alpha=0.3`: safe as a directory name, long ones hashed."""
    if not assignments:
        return "base"
    parts = [f"{k}={_SAFE.sub('-', v).strip('-') or 'empty'}" for k, v in assignments]
    name = "__".join(parts)
    if len(name) > MAX_NAME:
        digest = hashlib.sha1("__".join(f"{k}={v}" for k, v in assignments).encode()).hexdigest()[:8]
        name = name[: MAX_NAME - 9].rstrip("_-.") + "-" + digest
    return name


def expand_grid(grid: dict[str, list[str]]) -> list[tuple[str, list[str], dict[str, str]]]:
    """The Cartesian product, first axis slowest: a list of (name, overrides, values)."""
    if not grid:
        return [("base", [], {})]
    keys = list(grid)
    cells = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        pairs = list(zip(keys, combo))
        cells.append((cell_name(pairs), [f"{k}={v}" for k, v in pairs], dict(pairs)))
    names = [c[0] for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError("grid: two cells map to the same directory name; use distinct values")
    return cells


# --------------------------------------------------------------------------------------- sweep file


def read_sweep_file(path: str | Path) -> tuple[Path | None, dict[str, list[str]], list[str], str | None]:
    """A config path -> (base config, grid, overrides, name).

    If the YAML has a `grid:` key it is a sweep file: `base:` is resolved against the sweep file's
    folder (like a config's own `base:`), then the working directory, then the folders above.
    Otherwise the file itself is the base.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = OmegaConf.to_container(read_yaml(path), resolve=False)  # a syntax error names its line
    if not isinstance(raw, dict) or "grid" not in raw:
        return path, {}, [], None
    unknown = set(raw) - {"base", "grid", "overrides", "name", "description"}
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {sorted(unknown)}; expected base, grid, overrides, name")
    if not isinstance(raw["grid"], dict):
        raise ConfigError(f"{path}: `grid:` must be a mapping key -> list of values")
    base = raw.get("base")
    base_path = _resolve_base(base, path) if base else None
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list):
        raise ConfigError(f"{path}: `overrides:` must be a list of dotted key=value")
    return base_path, parse_grid(raw["grid"]), [str(o) for o in overrides], raw.get("name")


def _resolve_base(base: str, sweep_file: Path) -> Path:
    candidate = Path(base)
    if candidate.is_absolute():
        tried = [candidate]
    else:
        here = sweep_file.resolve().parent
        tried = [here / candidate, Path.cwd() / candidate] + [d / candidate for d in here.parents]
    for p in tried:
        if p.is_file():
            return p
    raise ConfigError(f"{sweep_file}: base config {base!r} not found (looked beside {sweep_file}, "
                      f"in the working directory and above)")


# ------------------------------------------------------------------------------------------- status


def run_status(run_dir: Path) -> str:
    """`done`, `partial` (something there: resumed from `last.ckpt` if present) or `new`.

    Done: metrics.json holds a test result, or it is the trainer's final one (`stopped_by`) and the
    test is empty because the source has no test split (a re-run could add nothing).
    """
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        try:
            data = json.loads(metrics.read_text())
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict) and (_has_test(data) or ("stopped_by" in data and data.get("test") is None)):
            return "done"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return "partial"
    return "new"


def _has_test(data: dict) -> bool:
    for key in ("test_cer", "test/cer"):
        if data.get(key) is not None:
            return True
    test = data.get("test")
    return isinstance(test, dict) and test.get("cer") is not None


def _can_resume(run_dir: Path) -> bool:
    return any((run_dir / d).exists() for d in ("last", "last.ckpt", "checkpoints"))


# -------------------------------------------------------------------------------------------- train


def _train_function():
    """The trainer's in-process entry point: `train(cfg, resume=...)` in bridgeocr.train.run."""
    for name in ("train", "run_training", "run"):
        fn = getattr(train_run, name, None)
        if callable(fn):
            return fn
    raise BridgeOCRError("bridgeocr.train.run has no train(cfg) function")


def _call_train(fn, cfg, resume: bool):
    params = inspect.signature(fn).parameters
    if "resume" in params:
        return fn(cfg, resume=resume)
    return fn(cfg)


# ---------------------------------------------------------------------------------------------- cli


def plan_sweep(config: str, grid: list[str] | None = None, overrides: list[str] | None = None,
               out: str | None = None) -> tuple[Path, list[Cell], Path | None, list[str]]:
    """Resolve everything a sweep needs and validate every cell's config (fail before training).

    Returns (sweep dir, cells, base config path, common overrides).
    """
    base, file_grid, file_overrides, name = read_sweep_file(config)
    cli_grid = parse_grid(grid or [])
    both = set(file_grid) & set(cli_grid)
    merged = dict(file_grid)
    merged.update(cli_grid)  # --grid replaces a file's axis of the same key
    common = list(file_overrides) + list(overrides or [])
    for item in common:
        key = item.partition("=")[0]
        if key in merged:
            raise ConfigError(f"override {item!r}: {key} is also a grid axis")
    if both:
        print(f"note: --grid replaces the sweep file's axis {sorted(both)}")
    sweep_name = name or Path(config).stem
    sweep_dir = Path(out) if out else Path("runs/sweep") / sweep_name
    cells = []
    for cname, cell_overrides, values in expand_grid(merged):
        run_dir = sweep_dir / cname
        # validate now: a typo in one axis must not surface after hours of training
        load_config(base, common + cell_overrides + _placement(sweep_dir, cname))
        cells.append(Cell(cname, cell_overrides, run_dir, run_status(run_dir), values))
    return sweep_dir, cells, base, common


def _placement(sweep_dir: Path, name: str) -> list[str]:
    return [f"train.out_dir={sweep_dir}", f"train.name={name}"]


def sweep_cli(config: str, grid: list[str] | None = None, overrides: list[str] | None = None,
              out: str | None = None, dry_run: bool = False) -> int:
    sweep_dir, cells, base, common = plan_sweep(config, grid, overrides, out)
    n = len(cells)
    print(f"sweep {sweep_dir}: {n} cell(s) over base {base if base else 'defaults'}"
          + (f" with {' '.join(common)}" if common else ""))
    for i, cell in enumerate(cells, 1):
        print(f"  [{i}/{n}] {cell.status:<7} {cell.name}")
    if dry_run:
        return 0

    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_plan(sweep_dir, config, base, common, cells)
    train = _train_function()
    failed = []
    for i, cell in enumerate(cells, 1):
        status = run_status(cell.run_dir)
        if status == "done":
            print(f"[{i}/{n}] {cell.name}: finished before (metrics.json has test results), skipped")
            continue
        resume = status == "partial" and _can_resume(cell.run_dir)
        verb = "resuming" if resume else "training"
        print(f"[{i}/{n}] {cell.name}: {verb} -> {cell.run_dir}", flush=True)
        cfg = load_config(base, common + cell.overrides + _placement(sweep_dir, cell.name))
        start = time.time()
        try:
            _call_train(train, cfg, resume)
        except KeyboardInterrupt:
            raise
        except BridgeOCRError as exc:
            failed.append(cell.name)
            print(f"[{i}/{n}] {cell.name}: failed: {exc}")
            continue
        except Exception as exc:  # one broken cell must not lose the rest of the sweep
            failed.append(cell.name)
            (cell.run_dir).mkdir(parents=True, exist_ok=True)
            (cell.run_dir / "sweep_error.txt").write_text(traceback.format_exc())
            print(f"[{i}/{n}] {cell.name}: failed: {type(exc).__name__}: {exc} "
                  f"(traceback in {cell.run_dir / 'sweep_error.txt'})")
            continue
        print(f"[{i}/{n}] {cell.name}: done in {time.time() - start:.0f} s", flush=True)

    finished = [c.run_dir for c in cells if (c.run_dir / "metrics.json").is_file()]
    if finished:
        compare_cli([str(p) for p in finished], out=str(sweep_dir / "compare"))
        summary = summarise_seeds(sweep_dir, cells)
        if summary:
            print(summary.read_text())
    if failed:
        print(f"{len(failed)} of {n} cell(s) failed: {', '.join(failed)}")
        return 1
    return 0


SEED_AXIS = "train.seed"
SUMMARY_METRICS = ("test_cer", "test_wer", "val_cer")


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else float("nan")


def summarise_seeds(sweep_dir: Path, cells: list[Cell]) -> Path | None:
    """With a `train.seed` axis: one row per setting (the other axes), mean ± std over its seeds, and its
    difference from the first setting in units of that difference's standard error (|z| < 2: within noise).
    Writes seeds.md and seeds.csv; None without a seed axis."""

    if not any(SEED_AXIS in c.values for c in cells):
        return None
    groups: dict[str, list[dict]] = {}
    for c in cells:
        key = "  ".join(f"{k}={v}" for k, v in c.values.items() if k != SEED_AXIS) or "(all)"
        metrics = c.run_dir / "metrics.json"
        if metrics.is_file():
            groups.setdefault(key, []).append(json.loads(metrics.read_text()))
        else:
            groups.setdefault(key, [])
    rows = []
    for key, runs in groups.items():
        row = {"setting": key, "seeds": len(runs)}
        for m in SUMMARY_METRICS:
            xs = [float(r[m]) for r in runs if r.get(m) is not None]
            row[m] = _mean_std(xs) if xs else (float("nan"), float("nan"))
            row[m + "_n"] = len(xs)
        row["steps"] = sum(r.get("step", 0) for r in runs) / max(1, len(runs))
        speeds = [float(r["decode_lines_per_s"]) for r in runs if r.get("decode_lines_per_s")]
        row["decode_lines_per_s"] = sum(speeds) / len(speeds) if speeds else float("nan")
        rows.append(row)
    base = rows[0]
    lines = [f"# {sweep_dir.name}: mean ± std over seeds", "",
             "| setting | seeds | test CER | test WER | val CER | steps | Δ test CER vs first | z |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        (m, sd), (bm, bsd) = row["test_cer"], base["test_cer"]
        se = ((sd ** 2 / max(1, row["test_cer_n"])) + (bsd ** 2 / max(1, base["test_cer_n"]))) ** 0.5
        z = (m - bm) / se if row is not base and se > 0 else float("nan")
        row["delta"], row["z"] = (m - bm if row is not base else 0.0), z
        cells_txt = " | ".join(f"{row[k][0]:.4f} ± {row[k][1]:.4f}" for k in SUMMARY_METRICS)
        lines.append(f"| {row['setting']} | {row['seeds']} | {cells_txt} | {row['steps']:.0f} | "
                     f"{row['delta']:+.4f} | {'–' if z != z else f'{z:+.1f}'} |")
    lines += ["", "z: the difference divided by its standard error (Welch); |z| < 2 is within the seed noise.", ""]
    if _plot_seeds(rows, sweep_dir / "seeds.png"):
        lines += ["![test CER (mean ± std over seeds) against decode speed](seeds.png)", ""]
    out = sweep_dir / "seeds.md"
    out.write_text("\n".join(lines))
    with (sweep_dir / "seeds.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "seeds"] + [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")]
                   + ["steps", "delta_test_cer", "z"])
        for row in rows:
            w.writerow([row["setting"], row["seeds"]] + [v for m in SUMMARY_METRICS for v in row[m]]
                       + [row["steps"], row["delta"], row["z"]])
    return out


def _plot_seeds(rows: list[dict], path: Path) -> bool:
    """Test CER (mean ± std over seeds) against decode lines/s per setting: the speed/accuracy frontier
    with its noise bands. False when matplotlib is missing or nothing finished."""
    try:
        plt = pyplot()
    except ImportError:
        return False
    pts = [r for r in rows if r["test_cer_n"] and r["decode_lines_per_s"] == r["decode_lines_per_s"]]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in pts:
        m, sd = r["test_cer"]
        ax.errorbar(r["decode_lines_per_s"], m, yerr=0 if sd != sd else sd, fmt="o", capsize=4)
        ax.annotate(r["setting"].replace("model.connector.", "").replace("loss.", ""), (r["decode_lines_per_s"], m),
                    textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.set_xlabel("decode lines/s (test, mean over seeds)")
    ax.set_ylabel("test CER (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _write_plan(sweep_dir: Path, config: str, base: Path | None, common: list[str], cells: list[Cell]):
    plan = {
        "config": str(config),
        "base": str(base) if base else None,
        "overrides": common,
        "cells": [{"name": c.name, "overrides": c.overrides, "values": c.values} for c in cells],
    }
    (sweep_dir / "sweep.json").write_text(json.dumps(plan, indent=2) + "\n")
