"""A PP-OCR encoder without some of its residual MLPs: a cheaper trunk to fine-tune from the full one.

usage: python scripts/drop_mlps.py SRC OUT [--mlps 5,7,9,11] [--rank 64] [--calibration SOURCE@SPLIT ...]
       python scripts/drop_mlps.py SRC OUT --mlps 11 --keep 0.5 --calibration SOURCE@SPLIT ...
       python scripts/drop_mlps.py SRC --list

SRC: an encoder directory, an OCR model directory built on a PP-OCR encoder, or shipped:NAME; OUT: an encoder
directory (the encoder and its CTC head, the source's tokenizer, an encoder_card.json saying what was done).
`--list`: the trunk's residual MLPs (models/ppocr.residual_mlps), each with its multiply-adds on a 608 px line
and its share of the trunk's (no line is read). `--mlps`: the ones to drop, numbered from 1; without it OUT is
SRC's encoder as it is (e.g. the teacher for `encoder train --teacher`). With `--calibration`, each dropped MLP is
replaced by a linear stand-in of rank `--rank` fitted on `--lines` lines drawn at random (seed 0) from those
sources in equal shares (models/ppocr.drop_mlps); without, it is cut out. `--keep F` narrows them instead to F of
their hidden channels, each output conv re-fitted on the calibration lines (models/ppocr.shrink_mlps). Either way
the encoder reads worse until it is fine-tuned: `bridgeocr encoder train --init OUT --teacher <SRC's encoder>`
(docs/benchmarks.md, "Fewer residual MLPs").
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from bridgeocr.data.preprocess import make_loader
from bridgeocr.data.sources import open_source
from bridgeocr.data.tokenizers import copy_tokenizer_files
from bridgeocr.eval.evaluate import load_checkpoint
from bridgeocr.models.encoder import save_encoder
from bridgeocr.models.onnx_graph import conv_macs
from bridgeocr.models.ppocr import PPOCREncoder, drop_mlps, residual_mlps, shrink_mlps
from bridgeocr.shipped import resolve_pretrained

PROBE_WIDTH = 608  # px: the held-out print lines' mean width at 48 px (as benchmarks/encoder_cost.py)


def mlp_macs(encoder: PPOCREncoder, width: int = PROBE_WIDTH) -> tuple[list[float], float]:
    """Multiply-adds of each residual MLP's convolutions and of every convolution, on one line (ONNX shape
    inference at the encoder's height)."""
    per_node = conv_macs(encoder.graph.to_onnx(), (1, int(encoder.image["channels"]), encoder.image_height, width))
    per_mlp = [sum(per_node.get(n["outputs"][0], 0.0) for n in m["nodes"]) for m in residual_mlps(encoder.graph.spec)]
    return per_mlp, sum(per_node.values())


def calibration_inputs(specs: list[str], lines: int, encoder: PPOCREncoder, image_cfg, tokenizer, seed: int = 0):
    """`lines` lines drawn evenly from the sources, as the network's inputs (each at its own width)."""
    samples = []
    for spec in specs:
        source, _, split = spec.partition("@")
        pool = [s for s in open_source(source, split or None) if s.text.strip()]
        random.Random(seed).shuffle(pool)
        samples += pool[: max(1, lines // len(specs))]
    return [encoder.line_input(b.images, b.image_mask)
            for b in make_loader(samples, image_cfg, tokenizer, batch_size=1, shuffle=False)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="an encoder or OCR model directory, or shipped:NAME")
    p.add_argument("out", type=Path, nargs="?")
    p.add_argument("--list", action="store_true", help="list the residual MLPs and their cost, and stop")
    p.add_argument("--mlps", default="", help="the residual MLPs to drop, e.g. 5,7,9,11 (numbers from --list)")
    p.add_argument("--rank", type=int, default=64, help="rank of each fitted stand-in (0: a bias; default 64)")
    p.add_argument("--calibration", nargs="*", default=[], metavar="SOURCE@SPLIT",
                   help="lines to fit the stand-ins on (none: the MLPs are cut out, nothing stands in)")
    p.add_argument("--keep", type=float, default=None, metavar="FRACTION",
                   help="narrow the MLPs to this share of their hidden channels, re-fitted on the calibration lines "
                        "(models/ppocr.shrink_mlps), instead of dropping them")
    p.add_argument("--lines", type=int, default=64, help="calibration lines in all (default 64)")
    a = p.parse_args(argv)
    src = resolve_pretrained(a.src)
    reader, image_cfg, _ = load_checkpoint(src, device="cpu")
    encoder = reader.encoder
    if not isinstance(encoder, PPOCREncoder):
        raise SystemExit(f"{src}: its encoder is not PP-OCR's (only its residual MLPs can be dropped)")
    per_mlp, total = mlp_macs(encoder)
    if a.list:
        print(f"{src}: {total / 1e9:.3f} GMAC per {PROBE_WIDTH} px line at {encoder.image_height} px")
        for i, (m, macs) in enumerate(zip(residual_mlps(encoder.graph.spec), per_mlp), 1):
            print(f"  {i:2d}  {m['add'].get('name') or m['add']['outputs'][0]:>12}  {macs / 1e6:7.1f} MMAC "
                  f"({100 * macs / total:4.1f} %)")
        return 0
    if a.out is None:
        p.error("give OUT (or --list)")
    if a.out.exists():
        raise SystemExit(f"{a.out}: exists (choose a new directory)")
    which = [int(x) for x in a.mlps.replace(" ", "").split(",") if x]
    if a.keep is not None and not a.calibration:
        p.error("--keep re-fits each narrowed MLP: give --calibration lines")
    feeds = (calibration_inputs(a.calibration, a.lines, encoder, image_cfg, reader.tokenizer)
             if which and a.calibration else None)
    if which and a.keep is not None:
        shrink_mlps(encoder, which, a.keep, feeds)
    elif which:
        drop_mlps(encoder, which, calibration=feeds, rank=a.rank)
    after = mlp_macs(encoder)[1]
    save_encoder(a.out, encoder, reader.ctc_head)
    copy_tokenizer_files(src, a.out)
    shrunk = which and a.keep is not None
    card = {"made_by": "scripts/drop_mlps.py", "from": str(a.src), "dropped_mlps": [] if shrunk else which,
            "shrunk_mlps": which if shrunk else [], "kept_hidden": a.keep if shrunk else None,
            "stand_in_rank": a.rank if which and a.calibration and not shrunk else None, "calibration": a.calibration,
            "calibration_lines": a.lines if a.calibration else 0,
            "gmac_per_608px_line": {"before": round(total / 1e9, 4), "after": round(after / 1e9, 4)}}
    (a.out / "encoder_card.json").write_text(json.dumps(card, indent=2))
    what = (f" with residual MLPs {which} at {a.keep:g} of their width" if shrunk
            else f" without residual MLPs {which}" if which else "")
    print(f"wrote {a.out}: {a.src}{what}"
          + f", {total / 1e9:.3f} -> {after / 1e9:.3f} GMAC per {PROBE_WIDTH} px line")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
