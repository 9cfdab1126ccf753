"""The one small type every source yields (LineSample), the list a source is (LineSource), and the batch
every model eats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bridgeocr.errors import DataError

_HIGH_DEPTH_MODES = ("I", "F")  # and every "I;16..." variant
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit / 32-bit int / float single-band image -> mode "L", scaled by its actual range.

    Values that all fit 0..255 are taken as 8-bit already (float images in 0..1 as fractions);
    otherwise 0..65535 is divided by 257 (16-bit full range), and anything wider or negative is
    stretched from its minimum to its maximum.
    """
    arr = np.asarray(img, dtype=np.float64)
    if arr.size == 0:
        return Image.new("L", img.size, 255)
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0 and img.mode == "F":
        arr = arr * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        arr = arr / 257.0
    else:
        arr = (arr - lo) * (255.0 / (hi - lo))
    arr = np.nan_to_num(arr, nan=255.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def to_grayscale(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit grayscale ("L") as a reader of the line would see it.

    8-bit L/RGB/CMYK/... images: exactly `img.convert("L")`. 16-bit, 32-bit int and float images are
    scaled to 8 bits by their range (`convert("L")` clips them: ink at 2,000-60,000 turned white).
    Transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) is composited onto white
    paper; when that leaves no contrast but the alpha channel has some (white ink on a transparent
    background), the alpha channel is the ink.
    """
    mode = img.mode
    if mode.startswith("I") or mode in _HIGH_DEPTH_MODES:
        return _to_8bit(img)
    has_alpha = mode in _ALPHA_MODES or "transparency" in img.info
    if not has_alpha:
        return img.convert("L")
    rgba = img.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.size == 0 or alpha.min() == 255:  # nothing transparent: exactly what it always was
        return img.convert("L")
    paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    gray = Image.alpha_composite(paper, rgba).convert("L")
    arr = np.asarray(gray)
    if int(arr.max()) - int(arr.min()) < 16 <= int(alpha.max()) - int(alpha.min()):
        return Image.fromarray((255 - alpha).astype(np.uint8))
    return gray


def load_line_image(path, where: str | None = None) -> Image.Image:
    """The one reader of line image files: `path` -> 8-bit grayscale ("L", see `to_grayscale`).

    DataError naming `where` (default: the path) if the file is missing, unreadable or zero-size.
    """
    where = where or str(path)
    try:
        with Image.open(path) as img:
            img.load()
            gray = to_grayscale(img)
    except FileNotFoundError:
        raise DataError(where, "image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(where, f"unreadable image ({type(exc).__name__})") from None
    if gray.width == 0 or gray.height == 0:
        raise DataError(where, "zero-size image")
    return gray


@dataclass
class LineSample:
    """One text line: an image (a file, a part of a page image, or already in memory), its
    transcription and an id.

    `origin` says where the sample was declared ("labels.tsv:17") so every error can name it.
    `crop`: the line is cut out of a page image when read (`data.layout.PageCrop`: `.load(where)`,
    `.size` without reading, `.key()` for the feature cache); `image_path` is then None.
    `group`: what the line belongs to, for scores per group (`evaluate --by-group`): a split file's third
    column (a synthetic line's font, a Hooker line's letter), an IAM line's writer, a PAGE / ALTO line's page.
    """

    id: str
    text: str
    image_path: Path | None = None
    image: Image.Image | None = None
    origin: str = ""
    crop: object | None = None
    group: str = ""

    def load_image(self) -> Image.Image:
        """The image as 8-bit grayscale (`to_grayscale`); DataError (naming file and line) if unreadable."""
        if self.image is not None:
            return to_grayscale(self.image)
        if self.crop is not None:
            return self.crop.load(self.origin or self.id)
        if self.image_path is None:
            raise DataError(self.origin or self.id, "sample has no image")
        where = f"{self.image_path} (from {self.origin})" if self.origin else str(self.image_path)
        return load_line_image(self.image_path, where)


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


# split names as written in split files -> our canonical names
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test"}


def canonical_split(name: str) -> str:
    return SPLIT_ALIASES.get(name.strip().lower(), name.strip().lower())


class LineSource(Sequence):
    """A list of `LineSample`s plus what went wrong while reading it.

    `.name`: a short label; `.missing`: entries the split names that could not be found (unknown id,
    absent image file); `.problems`: one-line messages naming file and line.
    """

    def __init__(self, samples: list[LineSample], name: str, missing: int = 0,
                 problems: list[str] | None = None, root: Path | None = None, split: str | None = None):
        self.samples = list(samples)
        self.name = name
        self.missing = missing
        self.problems = list(problems or [])
        self.root = root
        self.split = split

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return LineSource(self.samples[idx], self.name, self.missing, self.problems, self.root, self.split)
        return self.samples[idx]

    def __repr__(self) -> str:
        return f"LineSource({self.name!r}, {len(self)} lines, missing={self.missing}, problems={len(self.problems)})"
