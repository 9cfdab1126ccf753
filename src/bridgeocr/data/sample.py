"""The one small type every source yields, and the batch every model eats."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from bridgeocr.errors import DataError


@dataclass
class LineSample:
    """One text line: an image (a file, or already in memory), its transcription and an id.

    `origin` says where the sample was declared ("labels.tsv:17") so every error can name it.
    """

    id: str
    text: str
    image_path: Path | None = None
    image: Image.Image | None = None
    origin: str = ""

    def load_image(self) -> Image.Image:
        """The image as 8-bit grayscale; DataError (naming file and line) if it cannot be read."""
        if self.image is not None:
            return self.image.convert("L")
        where = f"{self.image_path} (from {self.origin})" if self.origin else str(self.image_path)
        if self.image_path is None:
            raise DataError(self.origin or self.id, "sample has no image")
        try:
            with Image.open(self.image_path) as img:
                img.load()
                gray = img.convert("L")
        except FileNotFoundError:
            raise DataError(where, "image file not found") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(where, f"unreadable image ({type(exc).__name__})") from None
        if gray.width == 0 or gray.height == 0:
            raise DataError(where, "zero-size image")
        return gray


@dataclass
class Batch:
    """A padded batch. Images: ink is 1, paper/padding 0. `image_mask[b, x]` is True on real columns.

    `input_ids` = BOS + text tokens + EOS, right-padded with PAD; `attention_mask` marks real tokens.
    """

    images: torch.Tensor  # [B, 1, H, W] float32
    image_mask: torch.Tensor  # [B, W] bool
    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] bool
    texts: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def to(self, device) -> Batch:
        return Batch(self.images.to(device), self.image_mask.to(device), self.input_ids.to(device),
                     self.attention_mask.to(device), self.texts, self.ids)

    def __len__(self) -> int:
        return self.images.shape[0]
