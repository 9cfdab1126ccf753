"""Augment text-line images so that clean (often synthetic) training lines look like real scans.

A pure function of (image, rng state, config) over PIL grayscale images (mode "L", dark ink on light
paper), numpy + PIL only. It runs on the original image, before `preprocess_image` resizes it to the
model height, so strengths given in pixels (blur radius, elastic amplitude, ink filter size) are for a
line `ref_height` px tall and scale with the actual height: the effect the model sees is the same for
a 48 px synthetic line and a 120 px scan.

Order follows how a real line is made: the pen (ink width, elastic wobble), the page's placement on
the scanner (rotation, shear), the paper and ink (contrast/brightness), the optics (blur), the sensor
(noise), the file (JPEG). Geometric ops fill uncovered background with the paper colour, estimated as a
high percentile of the image, so they never add black borders a real crop would not have.

`Augmenter` turns a (seed, key) pair into a fresh numpy Generator, so a sample's augmentation depends
only on (seed, epoch, index), not on which DataLoader worker draws it or in what order.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageFilter

from bridgeocr.errors import ConfigError

PRESETS = ("none", "print", "handwriting")
PAPER_PERCENTILE = 95.0  # paper colour: most of a line is paper, and 95 is above the ink even in dense text
INK_PERCENTILE = 0.5  # ink colour: a low percentile, not the minimum, which noise would set
MIN_INK_CONTRAST = 24.0  # grey levels between ink and paper below which a line counts as blank
KEEP_INK = 0.25  # an op that leaves less than this share of the ink pixels is undone


@dataclass
class AugmentConfig:
    """A probability and a strength range for each op; `p` is the chance a line is augmented at all.

    The defaults are the "print" preset (no elastic distortion or ink width change: printed strokes
    keep their shape); `preset("handwriting")` adds both.
    """

    p: float = 0.8
    ref_height: int = 48  # pixel strengths below are for a line this tall; 0: never scale
    blur_p: float = 0.3
    blur_radius: tuple[float, float] = (0.3, 1.2)
    noise_p: float = 0.3
    noise_sigma: tuple[float, float] = (0.01, 0.06)  # fraction of the 0-255 range
    contrast_p: float = 0.5
    contrast: tuple[float, float] = (0.35, 1.15)  # ink-paper difference factor: < 1 is faded ink
    paper: tuple[float, float] = (150.0, 255.0)  # new paper level: < 255 is grey paper / a dark scan
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (20, 70)
    rotate_p: float = 0.3
    rotate_deg: float = 2.0  # +- degrees
    rotate_max_rise: float = 0.5  # long lines tilt less: rise across the line <= this x height
    shear_p: float = 0.3
    shear: float = 0.3  # +- horizontal shear (x += shear * y), i.e. slant
    ink_width_p: float = 0.0
    ink_width: tuple[float, float] = (0.5, 1.0)  # blend towards MinFilter(3) (thicker; MaxFilter: thinner, x0.5)
    elastic_p: float = 0.0
    elastic_amplitude: tuple[float, float] = (0.5, 1.5)  # px (at ref_height) of the displacement field
    elastic_cell: float = 0.5  # spacing of the field's random nodes, as a fraction of the height

    def __post_init__(self):
        for f in fields(self):
            if f.name == "p" or f.name.endswith("_p"):
                v = getattr(self, f.name)
                if not 0.0 <= v <= 1.0:
                    raise ConfigError(f"augment.{f.name}: {v} is not a probability in [0, 1]")
            elif isinstance(getattr(self, f.name), (tuple, list)):
                lo, hi = getattr(self, f.name)
                if lo > hi:
                    raise ConfigError(f"augment.{f.name}: range ({lo}, {hi}) has low > high")
                setattr(self, f.name, (lo, hi))
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 95:
            raise ConfigError(f"augment.jpeg_quality: ({lo}, {hi}) is not within 1..95")
        if self.contrast[0] <= 0 or self.elastic_cell <= 0 or self.ref_height < 0:
            raise ConfigError("augment: contrast, elastic_cell must be > 0 and ref_height >= 0")


def preset(name: str) -> AugmentConfig:
    """"none" (identity), "print" (the defaults) or "handwriting" (adds ink width and elastic)."""
    if name == "none":
        return AugmentConfig(p=0.0)
    if name == "print":
        return AugmentConfig()
    if name == "handwriting":
        return AugmentConfig(ink_width_p=0.3, elastic_p=0.4, shear_p=0.4)
    raise ConfigError(f"augment: {name!r} is not one of {', '.join(PRESETS)}")


# --- helpers -------------------------------------------------------------------------------------

def _as_generator(rng: random.Random | np.random.Generator) -> np.random.Generator:
    """One numpy Generator for all draws: a `random.Random` seeds it (and advances by 128 bits)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(128))
    raise TypeError(f"augment: rng must be random.Random or numpy.random.Generator, not {type(rng).__name__}")


def _levels(arr: np.ndarray) -> tuple[float, float]:
    """(paper, ink) grey levels of a line."""
    ink, paper = np.percentile(arr, [INK_PERCENTILE, PAPER_PERCENTILE])
    return float(paper), float(ink)


def paper_colour(img: Image.Image) -> int:
    """The paper's grey level (a high percentile): what geometric ops fill uncovered background with."""
    return int(round(_levels(np.asarray(img))[0]))


def _ink_fraction(img: Image.Image) -> float:
    """Share of pixels nearer the ink than the paper level; 0 when the line has no visible ink."""
    arr = np.asarray(img)
    paper, ink = _levels(arr)
    if paper - ink < MIN_INK_CONTRAST:
        return 0.0
    return float(np.mean(arr < (paper + ink) / 2))


def _scale(img: Image.Image, cfg: AugmentConfig) -> float:
    return img.height / cfg.ref_height if cfg.ref_height else 1.0


def _uniform(g: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(g.uniform(bounds[0], bounds[1]))


# --- ops: each (img, g, cfg) -> img of mode "L" and the same height ------------------------------

def _ink_width(img: Image.Image, g: np.random.Generator, cfg: AugmentConfig) -> Image.Image:
    """Thicker (MinFilter spreads the dark ink) or thinner (MaxFilter) strokes: pens and writers differ.

    Blending towards the filtered image gives widths between the original and +-1 px per side.
    Thinning goes half as far: a whole pixel off each side breaks the 2-3 px strokes of a 48 px line.
    """
    size = 2 * max(1, round(_scale(img, cfg))) + 1
    thicker = g.random() < 0.5
    t = _uniform(g, cfg.ink_width) * (1.0 if thicker else 0.5)
    filt = ImageFilter.MinFilter(size) if thicker else ImageFilter.MaxFilter(size)
    return Image.blend(img, img.filter(filt), t)


def _elastic(img: Image.Image, g: np.random.Generator, cfg: AugmentConfig) -> Image.Image:
    """Smooth random displacement field (handwriting wobble): random nodes every `elastic_cell` x
    height px, bicubically interpolated, sampled bilinearly; outside the image reads as paper."""
    w, h = img.size
    amp = _uniform(g, cfg.elastic_amplitude) * _scale(img, cfg)
    cell = max(2.0, cfg.elastic_cell * h)
    gh, gw = math.ceil(h / cell) + 2, math.ceil(w / cell) + 2
    disp = []
    for _ in range(2):
        nodes = g.normal(0.0, 1.0, (gh, gw)).astype(np.float32)
        field = np.asarray(Image.fromarray(nodes).resize((w, h), Image.Resampling.BICUBIC))
        disp.append(np.clip(field * amp, -2 * amp, 2 * amp))
    dx, dy = disp
    pad = int(math.ceil(2 * amp)) + 2
    src = np.pad(np.asarray(img, dtype=np.float32), pad, mode="constant",
                 constant_values=paper_colour(img))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x = np.clip(xs + dx + pad, 0, w + 2 * pad - 1.001)
    y = np.clip(ys + dy + pad, 0, h + 2 * pad - 1.001)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    top = src[y0, x0] * (1 - fx) + src[y0, x0 + 1] * fx
    bottom = src[y0 + 1, x0] * (1 - fx) + src[y0 + 1, x0 + 1] * fx
    out = top * (1 - fy) + bottom * fy
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _rotate(img: Image.Image, g: np.random.Generator, cfg: AugmentConfig) -> Image.Image:
    """Slight tilt, expanded with paper colour and resized back to the height (as a line crop of a
    tilted line would be). Long lines tilt less, so their text is not shrunk much by the resize."""
    w, h = img.size
    limit = min(cfg.rotate_deg, math.degrees(math.atan(cfg.rotate_max_rise * h / max(1, w))))
    angle = _uniform(g, (-limit, limit))
    out = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=paper_colour(img))
    if out.height != h:
        new_w = max(1, round(out.width * h / out.height))
        out = out.resize((new_w, h), Image.Resampling.BILINEAR)
    return out


def _shear(img: Image.Image, g: np.random.Generator, cfg: AugmentConfig) -> Image.Image:
    """Horizontal shear (slant); the image widens by |shear| x height, filled with paper."""
    w, h = img.size
    s = _uniform(g, (-cfg.shear, cfg.shear))
    extra = int(math.ceil(abs(s) * h))
    # output (x, y) reads input (x + s*y - offset, y): the offset keeps the sheared ink inside
    offset = s * h if s > 0 else 0.0
    return img.transform((w + extra, h), Image.Transform.AFFINE, (1, s, -offset, 0, 1, 0),
                         resample=Image.Resampling.BILINEAR, fillcolor=paper_colour(img))


def _contrast(img: Image.Image, g: np.random.Generator, cfg: AugmentConfig) -> Image.Image:
    """New paper level (grey paper, dark scans) and ink-paper difference (faded ink, dark toner).

    The factor is never so low that ink and paper come closer than 2 x MIN_INK_CONTRAST levels, so the
    text stays visible.
    """
    arr = np.asarray(img, dtype=np.float32)
    paper, ink = _levels(arr)
    new_paper = _uniform(g, cfg.paper)
    c = _uniform(g, cfg.contrast)
    depth = paper - ink
    if depth > 0:
        c = max(c, min(1.0, 2 * MIN_INK_CONTRAST / depth))
    out = new_paper - (paper - arr) * c
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _blur(img: Image.Image, g: np.random.Generator, cfg: AugmentConfig) -> Image.Image:
    """Defocus / low scan resolution."""
    return img.filter(ImageFilter.GaussianBlur(_uniform(g, cfg.blur_radius) * _scale(img, cfg)))


def _noise(img: Image.Image, g: np.random.Generator, cfg: AugmentConfig) -> Image.Image:
    """Sensor noise, Gaussian, per pixel."""
    sigma = _uniform(g, cfg.noise_sigma) * 255.0
    arr = np.asarray(img, dtype=np.float32) + g.normal(0.0, sigma, (img.height, img.width)).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, g: np.random.Generator, cfg: AugmentConfig) -> Image.Image:
    """JPEG re-compression: block and ringing artefacts of scans saved at low quality."""
    quality = int(g.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("L")


OPS = (  # (name, op): applied in this order, each with probability cfg.<name>_p
    ("ink_width", _ink_width),
    ("elastic", _elastic),
    ("rotate", _rotate),
    ("shear", _shear),
    ("contrast", _contrast),
    ("blur", _blur),
    ("noise", _noise),
    ("jpeg", _jpeg),
)


def augment(img: Image.Image, rng: random.Random | np.random.Generator, cfg: AugmentConfig) -> Image.Image:
    """A scan-like version of a text line: mode "L", the same height, possibly another width.

    Deterministic for a given rng state. With probability 1 - cfg.p (and for empty images) the line
    comes back unchanged (a copy). An op that would erase most of the ink (e.g. thinning 1 px
    strokes) is undone, so a line with visible ink never comes back blank.
    """
    if img.mode != "L":
        img = img.convert("L")
    g = _as_generator(rng)
    if img.width == 0 or img.height == 0 or cfg.p <= 0 or g.random() >= cfg.p:
        return img.copy()
    out = img
    ink = _ink_fraction(out)
    for name, op in OPS:
        if g.random() >= getattr(cfg, f"{name}_p"):
            continue
        new = op(out, g, cfg)
        new_ink = _ink_fraction(new)
        if ink > 0 and new_ink < KEEP_INK * ink:
            continue
        out, ink = new, new_ink
    return out.copy() if out is img else out


def _key_words(key: tuple[int, ...] | int) -> list[int]:
    """(seed or key) ints -> uint32 words, 2 per int (64-bit two's complement) and the count first, so
    that (1,) and (1, 0), or (2**32,) and (0, 1), seed different streams."""
    if isinstance(key, (int, np.integer)):
        key = (key,)
    words = [len(key)]
    for k in key:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise TypeError(f"Augmenter: key must be a tuple of ints, got {key!r}")
        k = int(k)
        if not -(2**63) <= k < 2**64:
            raise ValueError(f"Augmenter: key value {k} does not fit in 64 bits")
        k %= 2**64
        words += [k & 0xFFFFFFFF, k >> 32]
    return words


class Augmenter:
    """`augment` with a config and a base seed: `aug(img, (epoch, index))`.

    Each call draws a fresh numpy Generator from (seed, key), so a sample's augmentation is the same
    whichever DataLoader worker makes it and however many samples that worker made before; a new
    epoch in the key gives a new augmentation. Picklable (config + int), for worker processes.
    """

    def __init__(self, cfg: AugmentConfig | str = "print", seed: int = 0):
        self.cfg = preset(cfg) if isinstance(cfg, str) else cfg
        self.seed = int(seed)

    def generator(self, key: tuple[int, ...] | int = ()) -> np.random.Generator:
        entropy = _key_words((self.seed,)) + _key_words(key)
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def __call__(self, img: Image.Image, key: tuple[int, ...] | int = ()) -> Image.Image:
        return augment(img, self.generator(key), self.cfg)

    def __repr__(self) -> str:
        return f"Augmenter(cfg={self.cfg!r}, seed={self.seed})"


__all__ = ["AugmentConfig", "Augmenter", "augment", "preset", "paper_colour", "PRESETS"]
