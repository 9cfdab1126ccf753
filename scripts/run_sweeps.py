"""The seed's four next-step sweeps run for real, CPU-sized: on the demo's synthetic lines, under the demo's
conditions (shipped encoder frozen, shipped GPT, connector first then all), a fixed time per cell.

    python scripts/run_sweeps.py [--minutes 2.5 | --steps 250] [--data runs/demo/data] [--only kd ...] [overrides ...]

`--steps` gives every cell the same number of optimizer steps (fair when sweeps share the machine: two at a
time with OMP_NUM_THREADS=1 each), `--minutes` the same training time (fair for speed trade-offs, run alone).
The sweep files' `train.seed` axis gives each setting 3 runs; `seeds.md` in each sweep dir has mean ± std.

Resumable (finished cells are kept). Each sweep ends with its comparison table in runs/sweeps/<name>/.
Results are recorded in docs/analysis.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bridgeocr.experiments.demo import DEMO_OVERRIDES, FREEZE_SCHEDULE
from bridgeocr.experiments.sweep import plan_sweep, summarise_seeds, sweep_cli

SWEEPS = ["no_gelu", "downsample", "attach", "kd_alpha0", "kd", "kd_qformer_alpha0", "kd_qformer"]
OUT_NAMES = {"kd_alpha0": "kd", "kd_qformer_alpha0": "kd_qformer"}  # baselines join their sweep's directory
REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.5, help="training minutes per cell")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per cell instead of minutes")
    ap.add_argument("--data", default="runs/demo/data", help="line source (default: the demo's lines)")
    ap.add_argument("--only", nargs="+", choices=SWEEPS, default=SWEEPS)
    ap.add_argument("--out", default="runs/sweeps")
    ap.add_argument("--summary-only", action="store_true",
                    help="train nothing: rewrite each sweep dir's seeds.md (mean ± std) from the finished cells")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides for every cell (before --only)")
    args = ap.parse_args()
    budget = ([f"optim.max_steps={args.steps}", f"train.val_every_steps={max(1, args.steps // 2)}",
               "optim.warmup_steps=30", f"optim.freeze_schedule=[{{until_step: {max(1, args.steps // 5)}, "
               "train: [connector]}]"] if args.steps else [f"optim.max_minutes={args.minutes}"])
    common = DEMO_OVERRIDES + [FREEZE_SCHEDULE, f"data.source={args.data}"] + budget + args.overrides
    for name in [] if args.summary_only else args.only:
        sweep_cli(str(REPO / "configs" / "sweeps" / f"{name}.yaml"), overrides=common,
                  out=str(Path(args.out) / OUT_NAMES.get(name, name)))
    # one noise table per sweep dir over every sweep file that writes into it (KD: its alpha=0 baseline first)
    dirs: dict[str, list] = {}
    for name in args.only:
        out = str(Path(args.out) / OUT_NAMES.get(name, name))
        _, cells, _, _ = plan_sweep(str(REPO / "configs" / "sweeps" / f"{name}.yaml"), overrides=common, out=out)
        dirs.setdefault(out, [])
        dirs[out] = cells + dirs[out] if name in OUT_NAMES else dirs[out] + cells
    for out, cells in dirs.items():
        summary = summarise_seeds(Path(out), cells)
        if summary:
            print(summary.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
