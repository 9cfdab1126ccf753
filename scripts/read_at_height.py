"""A PP-OCR encoder directory, or an OCR model directory built on one, re-targeted: read lines of another height,
and/or halve the columns earlier in the trunk.

usage: python scripts/read_at_height.py DIR OUT [--height 32] [--halve-columns-at 1] [--weights ENCODER_DIR]

`--height`: each line stays as wide as before (the width scale grows by old height / new), so its frames per letter
do not change; the encoder's pool over the rows is resized (models/ppocr.read_at_height). `--halve-columns-at N`:
the trunk's N-th later stage (1: PP-OCRv6's stage 3) and all after it run at 8 px per column instead of 4, the
final pool no longer halving them (models/ppocr.halve_columns_at; the tokens stay one per 8 px). Either way the
weights do not change, and the network reads worse until it is fine-tuned (`encoder train --init OUT ...`).
`--weights`: take the encoder and its CTC head from this encoder directory, one fine-tuned that way, so an OCR
model reads with it (its ctc_collapse connector reads the CTC head's output, so the encoder drops in).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from bridgeocr.data.tokenizers import copy_tokenizer_files
from bridgeocr.models.encoder import is_encoder_dir, load_encoder, save_encoder
from bridgeocr.models.load import load_checkpoint
from bridgeocr.models.ppocr import PPOCREncoder, halve_columns_at, read_at_height
from bridgeocr.shipped import resolve_pretrained


def retarget(encoder: PPOCREncoder, height: int | None, halve_at: int | None) -> PPOCREncoder:
    if height is not None:
        read_at_height(encoder, height)
    if halve_at is not None:
        halve_columns_at(encoder, halve_at)
    return encoder


def structure(encoder: PPOCREncoder) -> list:
    """What re-targeting changes: every node's attributes, and the height read."""
    return [encoder.image_height, *[n["attrs"] for n in encoder.graph.spec["nodes"]]]


def retarget_encoder(src: Path, out: Path, height: int | None, halve_at: int | None) -> str:
    encoder, head = load_encoder(src)
    if not isinstance(encoder, PPOCREncoder):
        raise SystemExit(f"{src}: not a PP-OCR encoder (only its pools and strides can be re-targeted)")
    retarget(encoder, height, halve_at)
    save_encoder(out, encoder, head)
    shutil.copy2(src / "tokenizer.json", out / "tokenizer.json")
    (out / "encoder_card.json").write_text(json.dumps({"made_by": "scripts/read_at_height.py", "from": str(src),
                                                       "height": encoder.image_height,
                                                       "halve_columns_at": halve_at}, indent=2))
    return (f"wrote {out}: {src} reading {encoder.image_height} px lines (width scale "
            f"{encoder.image.get('width_scale', 1.0):g})" + (f", columns halved at stage {halve_at}" if halve_at else ""))


def retarget_model(src: Path, out: Path, height: int | None, halve_at: int | None, weights: Path | None) -> str:
    model, image, _ = load_checkpoint(src, device="cpu")  # with the image settings it reads with
    if not isinstance(model.encoder, PPOCREncoder):
        raise SystemExit(f"{src}: its encoder is not PP-OCR's (only its pools and strides can be re-targeted)")
    retarget(model.encoder, height, halve_at)
    height = model.encoder.image_height
    if weights is not None:
        encoder, head = load_encoder(weights)
        if encoder.image_height != height:
            raise SystemExit(f"{weights}: reads {encoder.image_height} px lines, not {height}")
        if structure(encoder) != structure(model.encoder):
            raise SystemExit(f"{weights}: its trunk's pools and strides differ from the re-targeted model's "
                             "(check --halve-columns-at)")
        model.encoder.load_state_dict(encoder.state_dict())
        if head is not None and model.ctc_head is not None:
            model.ctc_head.load_state_dict(head.state_dict())
    model.image_height = height
    model.save_pretrained(out, image=replace(image, height=height,
                                             width_scale=float(model.encoder.image.get("width_scale", image.width_scale))))
    copy_tokenizer_files(src, out)
    return f"wrote {out}: {src} reading {height} px lines" + (f" with the encoder of {weights}" if weights else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="a directory, or shipped:NAME")
    p.add_argument("out", type=Path)
    p.add_argument("--height", type=int, default=None, help="the line height to read (default: as before)")
    p.add_argument("--halve-columns-at", type=int, default=None, metavar="N",
                   help="halve the columns at the entry of the trunk's N-th later stage (1 or 2 in PP-OCRv6)")
    p.add_argument("--weights", type=Path, default=None, help="an encoder directory fine-tuned that way")
    a = p.parse_args(argv)
    if a.height is None and a.halve_columns_at is None:
        p.error("nothing to change: give --height and/or --halve-columns-at")
    if a.out.exists():
        raise SystemExit(f"{a.out}: exists (choose a new directory)")
    src = resolve_pretrained(a.src)
    if is_encoder_dir(src):
        print(retarget_encoder(src, a.out, a.height, a.halve_columns_at))
    else:
        print(retarget_model(src, a.out, a.height, a.halve_columns_at, a.weights))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
