"""Connector/GPT training steps per minute with a frozen encoder: cached tokens against running the encoder.

    python benchmarks/feature_cache.py [--data runs/demo/data] [--steps 40] [--setting linear_gelu_ln]

Each row is a real `bridgeocr train` run under the demo's conditions (its overrides, batch 16), `--steps`
optimizer steps; "steps/min" counts training batches only (the module's own clock: no validation, test
decoding or model building). Rows:

- cached: the shipped PP-OCR encoder's tokens from the feature cache (filled before the clock starts);
- encoder on onnxruntime: the same encoder run every step (its fast inference path);
- encoder on the torch executor: the same, `BRIDGEOCR_ORT=0` (the trainable executor: how a frozen
  PP-OCR encoder ran before the cache and the onnxruntime path existed);
- ViT encoder, 32 px: the small shipped ViT run every step (what `make demo` trained on before).

Prints the machine (CPU count, torch threads, load average) with the table: run it alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def one_run(data: str, setting: str, steps: int, out: Path, encoder: str, cache: str, ort: bool) -> dict:
    from bridgeocr.config import load_config
    from bridgeocr.experiments.demo import DemoPlan, run_overrides
    from bridgeocr.train.run import train

    os.environ["BRIDGEOCR_ORT"] = "1" if ort else "0"
    plan = DemoPlan(out=out, minutes=60, n=0, corpus=None, encoder=encoder, lm="shipped:gpt_lm")
    extra = [f"optim.max_steps={steps}", "train.val_every_steps=100000", "data.max_val_samples=16",
             "data.max_eval_samples=16", f"data.feature_cache={cache}", f"train.name={time.time_ns()}",
             "model.connector.init=random"]  # the fit would run the encoder over ~750 lines first
    if "vit" in encoder:
        extra += ["data.image.height=32", "data.image.max_width=1024"]
    m = train(load_config(None, run_overrides(plan, setting, 60, Path(data), extra)))
    return {"lines_per_s": m["train_lines_per_s"], "steps_per_min": m["train_lines_per_s"] * 60 / 16}


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="runs/demo/data")
    p.add_argument("--setting", default="linear_gelu_ln")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--cache", default="runs/demo/cache", help="feature cache dir (filled first if empty)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one_run(args.data, args.setting, 1, tmp, "shipped:encoder_ctc", args.cache, True)  # fills the cache
        for label, encoder, cache, ort in (
                ("cached tokens (PP-OCR encoder)", "shipped:encoder_ctc", args.cache, True),
                ("encoder on onnxruntime every step", "shipped:encoder_ctc", "off", True),
                ("encoder on the torch executor every step", "shipped:encoder_ctc", "off", False),
                ("ViT encoder (32 px) every step", "shipped:encoder_vit", "off", True)):
            rows.append((label, one_run(args.data, args.setting, args.steps, tmp, encoder, cache, ort)))
    load = os.getloadavg()
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, load average {load[0]:.2f} / {load[1]:.2f}; setting "
          f"{args.setting}, batch 16, {args.steps} steps each\n")
    base = rows[0][1]["steps_per_min"]
    print("| frozen encoder | lines/s | steps/min | cached is x faster |")
    print("|---|---:|---:|---:|")
    for label, r in rows:
        print(f"| {label} | {r['lines_per_s']:.1f} | {r['steps_per_min']:.0f} | {base / r['steps_per_min']:.1f} |")


if __name__ == "__main__":
    main()
