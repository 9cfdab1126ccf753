"""One demo setting under the demo's exact conditions (its overrides, data and cached tokens), e.g. to measure
a lever (docs/reading.md section 4):

    python scripts/demo_setting.py qformer 3 model.connector.locality=0.02 tag=qf_loc02

NAME is a demo setting (src/bridgeocr/experiments/demo.py), MINUTES its training budget; the rest are dotted overrides,
`tag=` names the run (default NAME); `data=DIR` and `cache=DIR` name another demo's lines and token cache (default
runs/demo/data and runs/demo/cache; a demo's own: OUT/data and OUT/runs/.feature_cache). Runs land in
runs/exp/runs/<tag>; prints one RESULT line.
"""

import json
import sys
from pathlib import Path

from bridgeocr.config import load_config
from bridgeocr.experiments.demo import DemoPlan, run_overrides
from bridgeocr.train.run import train

name, minutes, extra = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
own = {k: next((e.split("=", 1)[1] for e in extra if e.startswith(f"{k}=")), None) for k in ("tag", "data", "cache")}
extra = [e for e in extra if e.split("=", 1)[0] not in own]
tag, data, cache = own["tag"] or name, own["data"] or "runs/demo/data", own["cache"] or "runs/demo/cache"
plan = DemoPlan(out=Path("runs/exp"), minutes=minutes, n=4000, corpus=None,
                encoder="shipped:encoder_ctc", lm="shipped:gpt_lm")
overrides = run_overrides(plan, name, minutes, Path(data), [f"data.feature_cache={cache}", f"train.name={tag}"] + extra)
m = train(load_config(None, overrides), overwrite=True)  # a tag names a measurement: rerun, it is replaced
print("RESULT", tag, json.dumps({k: m.get(k) for k in ("val_cer", "test_cer", "test_wer", "step",
                                                        "train_lines_per_s", "decode_lines_per_s", "wall_time_s")}))
