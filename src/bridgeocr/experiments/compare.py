"""Gather finished run directories into one table (Markdown + CSV) and plots.

A run directory holds `config.yaml`, `metrics.json`, maybe `loss_gap.json` (from `bridgeocr loss-gap`)
and `metrics.csv` (Lightning's CSV log). The reader is tolerant: a value that is missing is shown as
"–", metric keys are looked up under several spellings (`test_cer`, `test/cer`, `{"test": {"cer"}}`).

Plots (PNG, matplotlib Agg): `frontier.png` (test CER against decode lines/s, Pareto front drawn),
`curves.png` (train loss and val CER against step), `loss_gaps.png` (the seed's loss gaps per run).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bridgeocr.errors import BridgeOCRError

DASH = "–"

# (column title, row key, format)
COLUMNS = [
    ("run", "run", "s"),
    ("connector", "connector", "s"),
    ("attach", "attach_layer", "s"),
    ("width", "width_policy", "s"),
    ("KD α/τ", "kd", "s"),
    ("test decoding", "decoding", "s"),
    ("params", "params", "params"),
    ("visual tokens", "visual_tokens", "tokens"),
    ("train lines/s", "train_lines_per_s", ".1f"),
    ("decode lines/s", "decode_lines_per_s", ".1f"),
    ("val CER", "val_cer", ".4f"),
    ("val WER", "val_wer", ".4f"),
    ("test CER", "test_cer", ".4f"),
    ("test WER", "test_wer", ".4f"),
    ("ref loss", "reference_loss", ".4f"),
    ("conn loss", "connector_loss", ".4f"),
    ("down loss", "downsampled_loss", ".4f"),
    ("conn−ref", "gap_connector_reference", ".4f"),
    ("down−ref", "gap_downsampled_reference", ".4f"),
    ("conn−down", "gap_connector_downsampled", ".4f"),
    ("KL(Q‖P)", "kl", ".4f"),
    ("ref loss (prefix)", "reference_prefix_loss", ".4f"),
    ("conn−ref (prefix)", "gap_connector_reference_prefix", ".4f"),
    ("KL(Q‖P) (prefix)", "kl_prefix", ".4f"),
    ("minutes", "train_minutes", ".1f"),
    ("steps", "steps", "s"),
]

# metric -> the spellings a metrics.json may use (first found wins)
METRIC_KEYS = {
    "val_cer": ["val_cer", "val/cer", "best_val_cer", "val.cer"],
    "val_wer": ["val_wer", "val/wer", "best_val_wer", "val.wer"],
    "test_cer": ["test_cer", "test/cer", "test.cer"],
    "test_wer": ["test_wer", "test/wer", "test.wer"],
    "params": ["params", "n_params", "num_params", "parameters", "params_total", "params.total"],
    "visual_tokens": ["visual_tokens", "mean_visual_tokens", "n_visual_tokens", "visual_tokens_mean"],
    "train_lines_per_s": ["train_lines_per_s", "train_throughput", "train/lines_per_s", "lines_per_s_train",
                          "train_samples_per_s"],
    "decode_lines_per_s": ["decode_lines_per_s", "decode_throughput", "test_lines_per_s", "eval_lines_per_s",
                           "decode/lines_per_s", "lines_per_s_decode"],
    "step": ["step", "global_step", "steps"],
    "epoch": ["epoch"],
}


# ------------------------------------------------------------------------------------------ reading


def _lookup(data: Any, key: str) -> Any:
    """`a.b` / `a/b` / `a_b` in a possibly nested dict (flat key first)."""
    if not isinstance(data, dict):
        return None
    if key in data:
        return data[key]
    for sep in (".", "/", "_"):
        if sep in key:
            head, _, rest = key.partition(sep)
            if isinstance(data.get(head), dict):
                found = _lookup(data[head], rest)
                if found is not None:
                    return found
    return None


def _first(data: dict, names: list[str]) -> Any:
    for name in names:
        value = _lookup(data, name)
        if value is not None:
            return value
    return None


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BridgeOCRError(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise BridgeOCRError(f"{path}: expected a JSON object")
    return data


def _read_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:

        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories from the arguments: a dir with metrics.json, or a folder of such dirs (a sweep)."""
    runs: list[Path] = []
    for arg in paths:
        path = Path(arg)
        if not path.is_dir():
            raise BridgeOCRError(f"{path}: no such run directory")
        if (path / "metrics.json").is_file():
            runs.append(path)
            continue
        children = sorted(p for p in path.iterdir() if p.is_dir() and (p / "metrics.json").is_file())
        if not children:
            raise BridgeOCRError(f"{path}: not a run directory (no metrics.json; is the run finished?)")
        runs.extend(children)
    seen, unique = set(), []
    for r in runs:
        key = r.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def load_run(run_dir: str | Path) -> dict:
    """One run as a flat row dict (see COLUMNS), plus `_dir` and `_curves` (from metrics.csv)."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        raise BridgeOCRError(f"{run_dir}: not a run directory (no metrics.json)")
    metrics = _read_json(run_dir / "metrics.json")
    cfg = _read_config(run_dir)
    row: dict[str, Any] = {"_dir": str(run_dir)}
    row["run"] = str(metrics.get("name") or _lookup(cfg, "train.name") or run_dir.name)
    if (run_dir.parent / "sweep.json").is_file() or row["run"] in ("run", ""):
        row["run"] = run_dir.name  # sweep cells: the dir name says what differs
    for key, names in METRIC_KEYS.items():
        row[key] = _num(_first(metrics, names))

    conn = _lookup(cfg, "model.connector") or {}
    kind = conn.get("kind") if isinstance(conn, dict) else None
    kind = kind or metrics.get("connector")
    if kind:
        reduce, k = conn.get("reduce"), conn.get("reduce_k") or 1
        if reduce and int(k) > 1:
            kind = f"{kind} +{reduce}{k}"
        queries = (conn.get("options") or {}).get("num_queries") or conn.get("num_queries")  # (flat: older runs)
        if kind in ("qformer", "cabstractor") and queries:
            kind = f"{kind} ({queries}q)"
    row["connector"] = kind
    row["decoding"] = _lookup(metrics, "test.decoding") or metrics.get("decoding")
    attach = _lookup(cfg, "model.attach_layer")
    row["attach_layer"] = attach if attach is not None else metrics.get("attach_layer")
    row["width_policy"] = _lookup(cfg, "data.image.width_policy") or metrics.get("width_policy")
    alpha, tau = _num(_lookup(cfg, "loss.kd_alpha")), _num(_lookup(cfg, "loss.kd_tau"))
    if alpha is None:
        row["kd"] = None
    elif alpha == 0:
        row["kd"] = "off"
    else:
        row["kd"] = f"{alpha:g}/{tau:g}" if tau is not None else f"{alpha:g}"
        teacher = _lookup(cfg, "loss.kd_teacher")
        row["kd"] += f" ({teacher if teacher in ('lm', 'prefix') else 'lm'})"

    gap_path = run_dir / "loss_gap.json"
    gap = _read_json(gap_path) if gap_path.is_file() else {}
    row["reference_loss"] = _num(gap.get("reference"))
    row["connector_loss"] = _num(gap.get("connector"))
    row["downsampled_loss"] = _num(gap.get("downsampled"))
    row["kl"] = _num(gap.get("kl"))
    gaps = gap.get("gaps") or {}
    row["gap_connector_reference"] = _num(gaps.get("connector_minus_reference"))
    row["gap_downsampled_reference"] = _num(gaps.get("downsampled_minus_reference"))
    row["gap_connector_downsampled"] = _num(gaps.get("connector_minus_downsampled"))
    wall = _num(metrics.get("wall_time_s"))
    row["train_minutes"] = wall / 60 if wall else None
    row["steps"] = metrics.get("step")
    row["reference_prefix_loss"] = _num(gap.get("reference_prefix"))
    row["kl_prefix"] = _num(gap.get("kl_prefix"))
    row["gap_connector_reference_prefix"] = _num(gaps.get("connector_minus_reference_prefix"))
    row["_curves"] = read_curves(run_dir / "metrics.csv")
    return row


TRAIN_LOSS_COLS = ["train/loss", "train_loss", "train_loss_step", "train/loss_step", "loss"]
VAL_CER_COLS = ["val/cer", "val_cer", "val/cer_epoch", "val_cer_epoch"]


def read_curves(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Lightning CSV log -> {"train_loss": [(step, v)], "val_cer": [(step, v)]} (missing: empty)."""
    curves: dict[str, list[tuple[float, float]]] = {"train_loss": [], "val_cer": []}
    if not path.is_file():
        return curves
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            cols = {"train_loss": next((c for c in TRAIN_LOSS_COLS if c in fields), None),
                    "val_cer": next((c for c in VAL_CER_COLS if c in fields), None)}
            for i, rec in enumerate(reader):
                step = _num(rec.get("step"))
                step = float(i) if step is None else step
                for name, col in cols.items():
                    if col is not None:
                        value = _num(rec.get(col))
                        if value is not None:
                            curves[name].append((step, value))
    except (OSError, csv.Error, UnicodeDecodeError):
        pass
    return curves


# ------------------------------------------------------------------------------------------ writing


def _fmt(value: Any, fmt: str) -> str:
    if value is None or value == "":
        return DASH
    if fmt == "s":
        return str(value)
    if fmt == "params":
        v = float(value)
        return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v / 1e3:.1f}k"
    if fmt == "tokens":
        v = float(value)
        return f"{v:.0f}" if abs(v - round(v)) < 1e-6 or v >= 100 else f"{v:.1f}"
    return format(float(value), fmt)


def format_markdown(rows: list[dict]) -> str:
    titles = [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(titles) + " |",
             "|" + "|".join("---" if c[2] == "s" else "---:" for c in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(key), fmt) for _, key, fmt in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    keys = [key for _, key, _ in COLUMNS] + ["step", "epoch", "dir"]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(keys)
        for row in rows:
            values = [row.get(k) if k != "dir" else row.get("_dir") for k in keys]
            writer.writerow(["" if v is None else v for v in values])


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (speed, error) not dominated by another (faster and at least as good,
    or as fast and better), ordered by speed ascending."""
    idx = sorted(range(len(points)), key=lambda i: (-points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in idx:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    # lazy: matplotlib is slow to import and only plots need it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> bool:
    """Lay a figure out, write it (120 dpi) and close it; True, what a plot function returns once it drew."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return True


def short_label(name: str) -> str:
    """Plot label: a sweep cell `model.connector.reduce_k=4__loss.kd_alpha=0.3` -> `reduce_k=4 kd_alpha=0.3`."""
    if "=" not in name:
        return name
    parts = []
    for part in name.split("__"):
        key, _, value = part.partition("=")
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}" if value else part)
    return " ".join(parts)


def plot_frontier(rows: list[dict], path: Path) -> bool:
    data = [(r["decode_lines_per_s"], r["test_cer"], short_label(r["run"])) for r in rows
            if r.get("decode_lines_per_s") is not None and r.get("test_cer") is not None]
    if not data:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs, ys = [d[0] for d in data], [d[1] for d in data]
    ax.scatter(xs, ys, s=30, zorder=3)
    for x, y, name in data:
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = pareto_front([(x, y) for x, y, _ in data])
    if len(front) > 1:
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="tab:red", lw=1,
                label="Pareto front", zorder=2)
        ax.legend(fontsize=8)
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("decode throughput (lines/s)  →  faster")
    ax.set_ylabel("test CER  ↓")
    ax.set_title("speed / accuracy")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_curves(rows: list[dict], path: Path) -> bool:
    if not any(r["_curves"]["train_loss"] or r["_curves"]["val_cer"] for r in rows):
        return False
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        for ax, key in ((a1, "train_loss"), (a2, "val_cer")):
            pts = r["_curves"][key]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 20 else None,
                        ms=3, lw=1, label=short_label(r["run"]))
    a1.set_title("train loss")
    a2.set_title("val CER")
    for ax in (a1, a2):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return save_figure(fig, path)


GAP_BARS = [("gap_connector_reference", "Connector − Reference"),
            ("gap_downsampled_reference", "Downsampled − Reference"),
            ("gap_connector_downsampled", "Connector − Downsampled")]


def plot_loss_gaps(rows: list[dict], path: Path) -> bool:
    rows = [r for r in rows if any(r.get(k) is not None for k, _ in GAP_BARS)]
    if not rows:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4))
    width = 0.8 / len(GAP_BARS)
    for j, (key, label) in enumerate(GAP_BARS):
        xs = [i + (j - 1) * width for i in range(len(rows))]
        ax.bar(xs, [r.get(key) or 0.0 for r in rows], width, label=label)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([short_label(r["run"]) for r in rows], rotation=20, ha="right", fontsize=7)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel("loss gap (nats / token)")
    ax.set_title("loss gaps (lower: the image path is closer to the text-only LM)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def compare(runs: list[str | Path], out: str | Path) -> dict:
    """Write compare.md, compare.csv and the plots to `out`; returns {"rows", "files"}."""
    rows = [load_run(r) for r in find_runs(runs)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    md = out / "compare.md"
    md.write_text(format_markdown(rows))
    files.append(md)
    write_csv(rows, out / "compare.csv")
    files.append(out / "compare.csv")
    for name, fn in (("frontier.png", plot_frontier), ("curves.png", plot_curves),
                     ("loss_gaps.png", plot_loss_gaps)):
        if fn(rows, out / name):
            files.append(out / name)
    return {"rows": rows, "files": files}


def _default_out(runs: list[str]) -> Path:
    dirs = [str(Path(r).resolve()) for r in runs]
    if len(dirs) == 1:
        return Path(runs[0]) / "compare" if not (Path(runs[0]) / "metrics.json").is_file() \
            else Path(runs[0]).parent / "compare"
    return Path(os.path.commonpath(dirs)) / "compare"


def compare_cli(runs: list[str], out: str | None = None) -> int:
    out_dir = Path(out) if out else _default_out(runs)
    result = compare(runs, out_dir)
    print(format_markdown(result["rows"]), end="")
    print(f"wrote {', '.join(str(f) for f in result['files'])}")
    return 0
