"""Render one text line with one font and random style/degradation, at a fixed image height.

All randomness comes from the `random.Random` and `numpy.random.Generator` passed in, so a line is
a pure function of (text, font, height, seeds).
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bridgeocr.data.synth.fonts import load_font


def _text_mask(text: str, path: str, size: int, rng: random.Random, params: dict) -> Image.Image:
    """White-on-black ink mask ('L'), tight around the ink, before degradation."""
    font = load_font(path, size)
    ascent, descent = font.getmetrics()
    stroke = params["stroke"]
    spacing = params["spacing"]
    jitter = params["jitter"]
    pad = size // 2 + stroke + 4
    per_char = spacing != 0 or jitter > 0
    if per_char:
        advances = [font.getlength(ch) + spacing for ch in text]
        width = int(sum(advances) + 2 * pad + size)
    else:
        width = int(font.getlength(text) + 2 * pad + size)
    height = ascent + descent + 2 * pad
    mask = Image.new("L", (max(width, 8), height), 0)
    draw = ImageDraw.Draw(mask)
    base = pad + ascent
    if per_char:
        x = float(pad)
        for ch, adv in zip(text, advances):
            if ch != " ":
                dy = rng.uniform(-jitter, jitter)
                draw.text((x, base + dy), ch, font=font, fill=255, anchor="ls", stroke_width=stroke,
                          stroke_fill=255)
            x += adv
    else:
        draw.text((pad, base), text, font=font, fill=255, anchor="ls", stroke_width=stroke, stroke_fill=255)
    shear = params["shear"]
    if shear:
        w, h = mask.size
        extra = int(abs(shear) * h) + 2
        mask = mask.transform((w + extra, h), Image.Transform.AFFINE,
                              (1, shear, -shear * h if shear > 0 else 0, 0, 1, 0),
                              resample=Image.Resampling.BILINEAR)
    if params["rotate"]:
        mask = mask.rotate(params["rotate"], resample=Image.Resampling.BILINEAR, expand=True)
    box = mask.getbbox()
    if box is None:
        return mask.crop((0, 0, 1, 1))
    return mask.crop(box)


def sample_params(rng: random.Random, height: int, handwriting: bool) -> dict:
    """One line's style and degradation settings."""
    p = {
        "text_frac": rng.uniform(0.55, 0.9),  # font size (ascent + descent) relative to the image height
        "stroke": 1 if rng.random() < 0.15 else 0,
        "spacing": rng.choice([0, 0, 0, rng.uniform(-1.0, 3.0)]) * height / 48,
        "jitter": rng.uniform(0.3, 1.5) * height / 48 if rng.random() < (0.4 if handwriting else 0.1) else 0.0,
        "shear": rng.uniform(-0.3, 0.35) if rng.random() < 0.35 else 0.0,
        "rotate": rng.uniform(-1.2, 1.2) if rng.random() < 0.3 else 0.0,
        "paper": rng.uniform(180, 255),
        "ink": rng.uniform(0, 90),
        "opacity": rng.uniform(0.75, 1.0),
        "texture": rng.uniform(0, 18) if rng.random() < 0.6 else 0.0,
        "noise": rng.uniform(0, 8) if rng.random() < 0.6 else 0.0,
        "ink_blur": rng.uniform(0.3, 1.0) if rng.random() < 0.3 else 0.0,
        "blur": rng.uniform(0.3, 1.1) if rng.random() < 0.25 else 0.0,
        "warp_amp": rng.uniform(0.5, 2.0) * height / 48 if rng.random() < 0.3 else 0.0,
        "warp_period": rng.uniform(80, 400),
        "warp_phase": rng.uniform(0, 2 * math.pi),
        "margin_left": rng.randint(1, max(2, height // 6)),
        "margin_right": rng.randint(1, max(2, height // 6)),
        "jpeg": rng.randint(30, 85) if rng.random() < 0.25 else 0,
    }
    return p


def render_line(text: str, font_path: str, height: int, rng: random.Random, nprng: np.random.Generator,
                handwriting: bool = False) -> tuple[Image.Image, dict]:
    """(grayscale image height x W, dark ink on light paper; the parameters used)."""
    p = sample_params(rng, height, handwriting)
    probe = load_font(font_path, 100)
    a, d = probe.getmetrics()
    size = max(6, int(round(100 * p["text_frac"] * height / max(1, a + d))))
    mask = _text_mask(text, font_path, size, rng, p)
    if p["ink_blur"]:
        mask = mask.filter(ImageFilter.GaussianBlur(p["ink_blur"]))
    mw, mh = mask.size
    if mh > height - 2:  # tall ink (big ascenders + rotation): shrink to fit
        scale = (height - 2) / mh
        mask = mask.resize((max(1, round(mw * scale)), height - 2), Image.Resampling.BILINEAR)
        mw, mh = mask.size
    width = mw + p["margin_left"] + p["margin_right"]
    canvas = np.zeros((height, width), dtype=np.float32)
    top = rng.randint(0, height - mh)
    canvas[top: top + mh, p["margin_left"]: p["margin_left"] + mw] = np.asarray(mask, dtype=np.float32) / 255.0
    if p["warp_amp"]:  # smooth vertical displacement per column (baseline wave)
        xs = np.arange(width)
        dy = np.rint(p["warp_amp"] * np.sin(2 * math.pi * xs / p["warp_period"] + p["warp_phase"])).astype(int)
        rows = np.clip(np.arange(height)[:, None] - dy[None, :], 0, height - 1)
        canvas = canvas[rows, xs[None, :]]
    alpha = canvas * p["opacity"]
    paper = np.full((height, width), p["paper"], dtype=np.float32)
    if p["texture"]:
        small = nprng.normal(0.0, 1.0, (height // 8 + 2, width // 8 + 2)).astype(np.float32)
        tex = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
        paper += p["texture"] * np.asarray(tex, dtype=np.float32)
    img = paper * (1.0 - alpha) + p["ink"] * alpha
    if p["noise"]:
        img += nprng.normal(0.0, p["noise"], img.shape).astype(np.float32)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if p["blur"]:
        out = out.filter(ImageFilter.GaussianBlur(p["blur"]))
    p["font_size"] = size
    return out, p


def encode_image(img: Image.Image, jpeg_quality: int) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if jpeg_quality:
        img.save(buf, format="JPEG", quality=jpeg_quality)
        return buf.getvalue(), ".jpg"
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), ".png"
