"""A PP-OCR encoder directory, or an OCR model directory built on one, re-targeted to read lines of another height.

usage: python scripts/read_at_height.py DIR OUT --height 32 [--weights ENCODER_DIR]

Each line stays as wide as before (the width scale grows by old height / new), so its frames per letter do not
change; the encoder's pool over the rows is resized (models/ppocr.read_at_height). `--weights`: take the encoder
and its CTC head from this encoder directory, one fine-tuned at that height (`encoder train --init OUT ...`),
so an OCR model reads with it (its ctc_collapse connector reads the CTC head's output, so the encoder drops in).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from bridgeocr.models.encoder import is_encoder_dir, load_encoder, save_encoder
from bridgeocr.models.load import load_checkpoint
from bridgeocr.models.ppocr import PPOCREncoder, read_at_height
from bridgeocr.shipped import resolve_pretrained


def retarget_encoder(src: Path, out: Path, height: int) -> str:
    encoder, head = load_encoder(src)
    if not isinstance(encoder, PPOCREncoder):
        raise SystemExit(f"{src}: not a PP-OCR encoder (only its pool over the rows can be resized)")
    read_at_height(encoder, height)
    save_encoder(out, encoder, head)
    shutil.copy2(src / "tokenizer.json", out / "tokenizer.json")
    (out / "encoder_card.json").write_text(json.dumps({"made_by": "scripts/read_at_height.py", "from": str(src),
                                                       "height": height}, indent=2))
    return f"wrote {out}: {src} reading {height} px lines (width scale {encoder.image['width_scale']:g})"


def retarget_model(src: Path, out: Path, height: int, weights: Path | None) -> str:
    model, image, _ = load_checkpoint(src, device="cpu")  # with the image settings it reads with
    if not isinstance(model.encoder, PPOCREncoder):
        raise SystemExit(f"{src}: its encoder is not PP-OCR's (only its pool over the rows can be resized)")
    read_at_height(model.encoder, height)
    if weights is not None:
        encoder, head = load_encoder(weights)
        if encoder.image_height != height:
            raise SystemExit(f"{weights}: reads {encoder.image_height} px lines, not {height}")
        model.encoder.load_state_dict(encoder.state_dict())
        if head is not None and model.ctc_head is not None:
            model.ctc_head.load_state_dict(head.state_dict())
    model.image_height = height
    model.save_pretrained(out, image=replace(image, height=height,
                                             width_scale=float(model.encoder.image["width_scale"])))
    return f"wrote {out}: {src} reading {height} px lines" + (f" with the encoder of {weights}" if weights else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="a directory, or shipped:NAME")
    p.add_argument("out", type=Path)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--weights", type=Path, default=None, help="an encoder directory fine-tuned at that height")
    a = p.parse_args(argv)
    if a.out.exists():
        raise SystemExit(f"{a.out}: exists (choose a new directory)")
    src = resolve_pretrained(a.src)
    if is_encoder_dir(src):
        print(retarget_encoder(src, a.out, a.height))
    else:
        print(retarget_model(src, a.out, a.height, a.weights))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
