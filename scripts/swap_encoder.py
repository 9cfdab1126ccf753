"""An OCR model directory with another encoder (and its CTC head) in place of its own, whatever its structure.

usage: python scripts/swap_encoder.py OCR_DIR ENCODER_DIR OUT

Why: a model whose connector reads the CTC head's output (`ctc_collapse`, as `shipped:ocr_default` and
`shipped:ocr_fast`) takes any encoder that reads the same lines into the same frames over the same vocabulary:
one re-structured and re-trained (scripts/drop_mlps.py, then `encoder train --teacher`) drops in without
training the GPT again. `interpolate_encoder.py --into` and `read_at_height.py --weights` copy weights into an
encoder of the same structure; this replaces the structure too. Refused: an encoder that reads other lines
(its image settings differ from the model's encoder's), emits tokens of another width, or has no CTC head, or
one over another vocabulary, where the model has one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bridgeocr.data.tokenizers import copy_tokenizer_files
from bridgeocr.models.encoder import load_encoder
from bridgeocr.models.load import load_checkpoint
from bridgeocr.models.ocr import OCRModel
from bridgeocr.shipped import resolve_pretrained


def swap(model: OCRModel, encoder, head) -> OCRModel:
    """The model, in place, reading with `encoder` and `head` (checked against what they replace)."""
    old = model.encoder
    if getattr(encoder, "image", None) != getattr(old, "image", None):
        raise SystemExit(f"the encoder reads lines as {getattr(encoder, 'image', None)}, the model's as "
                         f"{getattr(old, 'image', None)}")
    if encoder.d_out != old.d_out:
        raise SystemExit(f"the encoder's tokens are {encoder.d_out}-d, the model's encoder's {old.d_out}-d")
    if model.ctc_head is not None:
        if head is None:
            raise SystemExit("the encoder has no CTC head, and the model reads with one")
        if (head.vocab_size, head.upsample) != (model.ctc_head.vocab_size, model.ctc_head.upsample):
            raise SystemExit(f"the encoder's CTC head has {head.vocab_size} classes x {head.upsample}, the "
                             f"model's {model.ctc_head.vocab_size} x {model.ctc_head.upsample}")
        model.ctc_head.load_state_dict(head.state_dict())
    model.encoder = encoder
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="an OCR model directory, or shipped:NAME")
    p.add_argument("encoder", help="an encoder directory (with its CTC head)")
    p.add_argument("out", type=Path)
    a = p.parse_args(argv)
    if a.out.exists():
        raise SystemExit(f"{a.out}: exists (choose a new directory)")
    src = resolve_pretrained(a.model)
    model, image, _ = load_checkpoint(src, device="cpu")
    if not isinstance(model, OCRModel):
        raise SystemExit(f"{src}: not an OCR model directory (an encoder alone needs no swap)")
    encoder, head = load_encoder(resolve_pretrained(a.encoder))
    swap(model, encoder, head).save_pretrained(a.out, image=image)
    copy_tokenizer_files(src, a.out)
    print(f"wrote {a.out}: {a.model} reading with the encoder of {a.encoder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
