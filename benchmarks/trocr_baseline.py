"""A TrOCR-style encoder-decoder baseline trained like one of our runs, then scored like the peers.

The model is a transformers `VisionEncoderDecoderModel`: our `LineEncoder` (wrapped as a `PreTrainedModel`)
+ `GPT2LMHeadModel(add_cross_attention=True)` of our decoder's depth, width, heads and vocabulary. What
"like a run" means (same data, tokenizer, image settings, pretrained parts, batch, steps, optimizer and
schedule; CE only) and how padding is masked: the docstring of `src/bridgeocr/models/encdec.py`.

  # train (reads RUN/config.yaml, RUN/metrics.json `step`, RUN/tokenizer.json)
  python benchmarks/trocr_baseline.py train --like runs/train/hooker_qformer_kd --out runs/baselines/trocr_hooker
      [--steps N] [--minutes M | --match-time] [--val-every N] [--max-val N] [--device auto] [--threads N]
      [--resume | --overwrite] [--devices N] [--num-nodes N] [--strategy ddp] [--precision bf16-mixed]
  # evaluate (greedy, batched HF generate from the masked encoder outputs)
  python benchmarks/trocr_baseline.py eval --model runs/baselines/trocr_hooker \
      --data ../shared/data/hooker_htr@val [--max-samples 200] [--batch-size 32]

The saved dir holds config.json + model.safetensors (`save_pretrained`; the best by val CER), tokenizer.json
and baseline_card.json (steps, times, lines/s, val CER/WER, the run it copies); training runs on the Lightning
engine of `bridgeocr lm train` / `encoder train` (src/bridgeocr/train/engine.py), so OUT also holds `last/`,
the resume state `last.ckpt/`, `metrics.csv` and `tb/`. `benchmarks/peers.py --trocr DIR` puts it in the
peers' table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def evaluate_dir(model_dir: str, data: str, split: str | None, max_samples: int | None = None,
                 batch_size: int = 32, device: str = "cpu", progress: bool = False) -> dict:
    """Load a saved baseline and decode `data[split]` (lines with empty text dropped, as peers.py does)."""
    from bridgeocr.data.sources import open_source
    from bridgeocr.eval.evaluate import evaluate_baseline
    from bridgeocr.models.encdec import load_baseline

    model, tok, image_cfg, card = load_baseline(model_dir, device=device)
    source = [s for s in list(open_source(data, split))[: max_samples or None] if s.text.strip()]
    return evaluate_baseline(model, source, image_cfg, tok, batch_size=batch_size,
                             max_new_tokens=int(card.get("max_new_tokens", 160)), progress=progress)


def main(argv: list[str] | None = None) -> int:
    from bridgeocr.config import PRECISIONS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the baseline like a finished run")
    t.add_argument("--like", required=True, metavar="RUN_DIR", help="a finished `bridgeocr train` run dir")
    t.add_argument("--out", required=True, help="where to save the baseline")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the run's metrics.json step)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float, default=None, help="training-time budget (stops early, LR follows it)")
    g.add_argument("--match-time", action="store_true", help="budget = the run's wall_time_s")
    t.add_argument("--val-every", type=int, default=None, help="validate every N steps and keep the best")
    t.add_argument("--max-val", type=int, default=None, help="val lines (default: the run's max_eval_samples)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N: the accelerator")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--resume", action="store_true",
                   help="continue the run stopped in OUT from OUT/last.ckpt (give the same --like and flags)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the baseline already in OUT (without it, or --resume, one there is refused)")
    t.add_argument("--devices", default=None, help="devices per node (Lightning), e.g. 1, 2 or auto "
                   "(default: 1 with --device cpu or cuda:N, else the run's train.devices)")
    t.add_argument("--num-nodes", type=int, default=None, help="machines (Lightning; default: the run's "
                   "train.num_nodes)")
    t.add_argument("--strategy", default=None,
                   help="Lightning strategy, e.g. ddp (default: the run's train.strategy)")
    t.add_argument("--precision", choices=PRECISIONS, default=None, metavar="PRECISION",
                   help=f"{' | '.join(PRECISIONS[:10])} (default: the run's train.precision on a GPU, "
                   "32-true on the CPU; auto: bf16-mixed on a GPU that has it)")
    e = sub.add_parser("eval", help="greedy-decode a source with a saved baseline: CER, WER, lines/s")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True, metavar="SOURCE[@SPLIT]")
    e.add_argument("--split", default="val", help="split when --data has no @SPLIT ('all': every line)")
    e.add_argument("--max-samples", type=int, default=None)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--out", default=None, help="write metrics.json here")
    a = p.parse_args(argv)

    import torch

    from bridgeocr.errors import BridgeOCRError

    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        if a.cmd == "train":
            from bridgeocr.train.encdec import train_like

            minutes = a.minutes
            if a.match_time:
                wall = json.loads((Path(a.like) / "metrics.json").read_text()).get("wall_time_s")
                if not wall:
                    raise BridgeOCRError(f"--match-time: {a.like}/metrics.json has no wall_time_s")
                minutes = wall / 60
            train_like(a.like, a.out, steps=a.steps, minutes=minutes, device=a.device, val_every=a.val_every,
                       max_val=a.max_val, progress=not a.no_progress, resume=a.resume, overwrite=a.overwrite,
                       devices=a.devices, num_nodes=a.num_nodes, strategy=a.strategy, precision=a.precision)
            return 0
        data, _, own = a.data.rpartition("@") if "@" in a.data else (a.data, "", "")
        split = own or a.split
        r = evaluate_dir(a.model, data, None if split == "all" else split, a.max_samples, a.batch_size, a.device,
                         progress=True)
    except BridgeOCRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{Path(data).name}:{split}: {r['n']} lines, CER {r['cer']:.4f}  WER {r['wer']:.4f}  "
          f"{r['lines_per_s']:.1f} lines/s" + (f"  ({r['skipped']} skipped)" if r["skipped"] else ""))
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        keep = {k: r[k] for k in ("cer", "wer", "n", "skipped", "seconds", "lines_per_s")}
        (out / "metrics.json").write_text(json.dumps({"model": a.model, "data": data, "split": split, **keep},
                                                     indent=2) + "\n")
        print(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
