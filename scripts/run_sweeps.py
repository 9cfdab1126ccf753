"""The seed's four next-step sweeps run for real, CPU-sized: on the demo's synthetic lines, under the demo's
conditions (shipped encoder frozen, shipped GPT, connector first then all), a fixed time per cell.

    python scripts/run_sweeps.py [--minutes 2.5] [--data runs/demo/data] [--only kd ...] [overrides ...]

Resumable (finished cells are kept). Each sweep ends with its comparison table in runs/sweeps/<name>/.
Results are recorded in docs/analysis.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bridgeocr.demo import DEMO_OVERRIDES, FREEZE_SCHEDULE
from bridgeocr.eval.sweep import sweep_cli

SWEEPS = ["no_gelu", "downsample", "attach", "kd"]
REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.5, help="training minutes per cell")
    ap.add_argument("--data", default="runs/demo/data", help="line source (default: the demo's lines)")
    ap.add_argument("--only", nargs="+", choices=SWEEPS, default=SWEEPS)
    ap.add_argument("--out", default="runs/sweeps")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides for every cell")
    args = ap.parse_args()
    common = DEMO_OVERRIDES + [FREEZE_SCHEDULE, f"data.source={args.data}",
                               f"optim.max_minutes={args.minutes}"] + args.overrides
    for name in args.only:
        sweep_cli(str(REPO / "configs" / "sweeps" / f"{name}.yaml"), overrides=common,
                  out=str(Path(args.out) / name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
