"""An encoder directory read as a model: the encoder and its CTC head, no GPT.

`bridgeocr encoder import` / `encoder train` write such directories (encoder + CTC head + tokenizer);
`evaluate --checkpoint ENCODER_DIR` and `recognize --checkpoint ENCODER_DIR` read them with greedy CTC, so an
encoder can be scored (e.g. PP-OCR zero-shot, before any training) with the same commands as a full model.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from bridgeocr.config import ImageConfig, ModelConfig
from bridgeocr.data.tokenizers import load_tokenizer
from bridgeocr.errors import ConfigError
from bridgeocr.models.ctc import CTCHead, ctc_read
from bridgeocr.models.encoder import load_encoder
from bridgeocr.models.widening import reading_tokens

__all__ = ["EncoderReader", "encoder_image_config"]


def encoder_image_config(encoder: nn.Module) -> ImageConfig:
    """The preprocessing an encoder reads: its own image settings (kind ppocr), else its height."""
    image = getattr(encoder, "image", None) or {}
    cfg = ImageConfig(height=int(encoder.image_height))
    for key in ("max_width", "width_multiple"):
        if key in image:
            setattr(cfg, key, int(image[key]))
    if "width_scale" in image:
        cfg.width_scale = float(image["width_scale"])
    return cfg


class EncoderReader(nn.Module):
    """Duck-types the reading side of OCRModel (`read`, `decoding_for`, `beam_for`, `tokenizer`, `cfg`)."""

    def __init__(self, encoder: nn.Module, ctc_head: CTCHead, tokenizer, where: str = "encoder"):
        super().__init__()
        self.encoder, self.ctc_head, self.tokenizer, self.where = encoder, ctc_head, tokenizer, where
        self.image_height = encoder.image_height
        self.cfg = ModelConfig(encoder=encoder.cfg, ctc_head=True, ctc_upsample=ctc_head.upsample, decoding="ctc")

    @property
    def widens(self) -> bool:
        """Whether a reading may encode a line twice (OCRModel.widens; an encoder dir always has its head)."""
        return self.cfg.widen_crowded > 0

    def reading_tokens(self, images, image_mask):
        """The encoder's tokens, crowded lines encoded again wider (OCRModel.reading_tokens)."""
        return reading_tokens(self.encoder, self.encoder, self.ctc_head, images, image_mask,
                              self.cfg.widen_crowded)

    @classmethod
    def from_pretrained(cls, path) -> EncoderReader:
        path = Path(path)
        encoder, head = load_encoder(path)
        if head is None:
            raise ConfigError(f"{path}: this encoder has no CTC head, so it cannot read on its own")
        if not (path / "tokenizer.json").is_file():
            raise ConfigError(f"{path}: no tokenizer.json beside the encoder (the CTC head's vocabulary)")
        return cls(encoder, head, load_tokenizer(path / "tokenizer.json"), str(path))

    def decoding_for(self, decoding: str | None = None) -> str:
        if decoding not in (None, "ctc", "fast"):  # its CTC head is also its fastest reading
            raise ConfigError(f"{self.where}: an encoder directory reads with its CTC head only (--ctc), "
                              f"not {decoding!r}")
        return "ctc"

    def beam_for(self, decoding: str, beam: int | None = None) -> int:
        return 1

    def read(self, images, image_mask, beam: int | None = None, decoding: str | None = None):
        self.decoding_for(decoding)
        return ctc_read(self.reading_tokens, self.ctc_head, images, image_mask, self.tokenizer)
