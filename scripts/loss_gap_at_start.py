"""The seed's loss gaps (both references) at the start of training: the demo's settings stopped after one
step, then `bridgeocr loss-gap --reference both` on 200 test lines (docs/analysis.md, "Which sign, when").

    python scripts/loss_gap_at_start.py        # needs runs/demo/data (and fills runs/demo/cache)
"""

import json
from pathlib import Path

from bridgeocr.config import load_config
from bridgeocr.experiments.demo import DemoPlan, run_overrides
from bridgeocr.experiments.loss_gap import loss_gap_cli
from bridgeocr.train.run import train

plan = DemoPlan(out=Path("runs/exp/gapstage"), minutes=1, n=4000, corpus=None, encoder="shipped:encoder_ctc",
                lm="shipped:gpt_lm")
STARTS = (("linear_gelu_ln", ["model.connector.init=random"]), ("linear_gelu_ln", []), ("qformer", []),
          ("qformer", ["model.connector.init=random", "model.connector.locality=0"]))
for name, extra in STARTS:
    tag = name + ("_random" if extra else "")
    overrides = run_overrides(plan, name, 1, Path("runs/demo/data"),
                              ["data.feature_cache=runs/demo/cache", f"train.name={tag}", "optim.max_steps=1",
                               "data.max_eval_samples=50", "data.max_val_samples=50"] + extra)
    train(load_config(None, overrides), overwrite=True)  # a measurement: each run replaces the last
    run = plan.out / "runs" / tag
    loss_gap_cli(checkpoint=run / "best", data="runs/demo/data", split="test", out=str(run), max_samples=200)
    gap = json.loads((run / "loss_gap.json").read_text())
    print("GAP", tag, {k: gap.get(k) for k in ("reference", "reference_prefix", "connector", "kl", "kl_prefix")})
