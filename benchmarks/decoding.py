"""One checkpoint, the same lines, every way it can read: CER, WER and lines/s per decoding.

    python benchmarks/decoding.py --checkpoint shipped:ocr_default --data runs/demo/data --split test \
        [--max-samples 200] [--joint-beams 1 2 4] [--joint-weights 0.3 0.5 0.7] [--out runs/bench_decoding]

Rows: the CTC head alone (greedy), the GPT alone (greedy), and joint CTC / GPT beam search
(models/joint_decoding.py) at each beam x CTC weight. lines/s counts preprocessing + decoding, batch 32,
on this machine's threads (OMP_NUM_THREADS). The demo's decoding reserve (JOINT_DECODE_LINES_PER_S in
src/bridgeocr/demo.py) and the speed columns of docs/benchmarks.md come from this kind of run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bridgeocr.data.sources import open_source
from bridgeocr.eval.evaluate import evaluate_model, load_checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="shipped:ocr_default")
    ap.add_argument("--data", default="runs/demo/data", metavar="SOURCE")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-samples", type=int, default=200, help="first N lines of the split (0: all)")
    ap.add_argument("--joint-beams", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--joint-weights", type=float, nargs="+", default=[0.5])
    ap.add_argument("--out", default=None, help="folder for decoding.json (default: print only)")
    args = ap.parse_args()

    model, image_cfg, _ = load_checkpoint(args.checkpoint)
    source = list(open_source(args.data, args.split))[: args.max_samples or None]
    runs: list[tuple[str, int | None, float | None]] = [("gpt", 1, None)]
    if model.ctc_head is not None:
        runs.insert(0, ("ctc", None, None))
        runs += [("joint", b, w) for b in args.joint_beams for w in args.joint_weights]
    rows = []
    for decoding, beam, weight in runs:
        if weight is not None:
            model.cfg.joint_ctc_weight = weight
        res = evaluate_model(model, source, image_cfg, beam=beam, progress=False, decoding=decoding)
        rows.append({"decoding": res["decoding"], "lines": res["n"], "cer": res["cer"], "wer": res["wer"],
                     "lines_per_s": res["lines_per_s"]})
        print(f"{res['decoding']}: CER {res['cer']:.4f}, {res['lines_per_s']:.1f} lines/s", flush=True)
    print(f"\n{args.checkpoint} on {args.data}@{args.split}, {torch.get_num_threads()} threads\n")
    print("| decoding | lines | CER | WER | lines/s |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['decoding']} | {r['lines']} | {r['cer']:.4f} | {r['wer']:.4f} | {r['lines_per_s']:.1f} |")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "decoding.json").write_text(json.dumps({"checkpoint": args.checkpoint, "data": args.data,
                                                       "split": args.split, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
