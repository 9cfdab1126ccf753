"""Crowded lines are read a second time, wider.

A CTC head emits at most one letter per frame and needs a blank between two equal letters. The PP-OCR trunk
gives one frame per 8 px of a 48 px line. A narrow hand or a condensed face has less than 8 px per letter,
so it has fewer frames than letters, and CTC must drop letters (docs/reading.md section 7: the
DkgHandwriting faces read at CER 0.36, and 0.14 once widened 1.5 times).

The first reading says how full a line's frames are: the letters its greedy CTC path emits per frame (its
density). A line denser than `threshold` (`model.widen_crowded`) is stretched horizontally by density /
threshold (at most `MAX_SCALE`, and never past the encoder's widest line), then read again. Lines with room
keep their first reading, so widening never changes a line that was not crowded. This is bridgeocr's own
step (no library offers it): a text-line recogniser's fixed stride meets a script's letter width here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bridgeocr.data.preprocess import pad_images
from bridgeocr.models.ctc import BLANK

__all__ = ["MAX_SCALE", "ctc_density", "widen_scales", "widen_images", "encoder_limits", "widened_tokens",
           "reading_tokens"]

MAX_SCALE = 2.0  # beyond 2x the letters of a line with 1 letter per frame get 2 frames each


def ctc_density(logits: torch.Tensor, frame_mask: torch.Tensor, blank: int = BLANK) -> torch.Tensor:
    """Letters per real frame of each line's greedy CTC path: logits [B, T, V], frame_mask [B, T] -> [B]."""
    best = logits.argmax(-1)
    prev = torch.cat([torch.full_like(best[:, :1], -1), best[:, :-1]], dim=1)
    emitted = (best != blank) & (best != prev) & frame_mask
    frames = frame_mask.sum(1).clamp(min=1)
    return emitted.sum(1).float() / frames.float()


def widen_scales(density: torch.Tensor, threshold: float, max_scale: float = MAX_SCALE) -> torch.Tensor:
    """How much wider each line is read again: density / threshold for lines above it, else 1."""
    if threshold <= 0:
        return torch.ones_like(density)
    return torch.where(density > threshold, (density / threshold).clamp(max=max_scale), torch.ones_like(density))


def widen_images(images: torch.Tensor, image_mask: torch.Tensor, scales, width_multiple: int = 8,
                 max_width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stretch each line's real columns by its scale (bilinear) and pad the batch again -> (images, mask).

    images [B, 1, H, W] with image_mask [B, W] (real columns), as `data.preprocess.pad_images` gives them and
    pads them again here; the new widths are rounded up to `width_multiple` and capped at `max_width`."""
    mult = max(1, int(width_multiple))
    lines = []
    for img, real, scale in zip(images, image_mask, [float(s) for s in scales]):
        w = int(real.sum())
        new = max(w, round(w * scale))
        if max_width:
            new = min(new, max(w, int(max_width)))
        line = img[:, :, :w]
        if new != w:
            line = F.interpolate(line.unsqueeze(0), size=(img.shape[1], new), mode="bilinear",
                                 align_corners=False).squeeze(0)
        lines.append(line)
    out, mask = pad_images(lines, mult)
    if max_width:  # rounding up to the multiple must not pass the encoder's widest line
        width = max(int(max_width), max(t.shape[2] for t in lines))
        out, mask = out[..., :width], mask[:, :width]
    return out, mask


def encoder_limits(encoder) -> tuple[int, int | None]:
    """(width multiple, widest line) an encoder reads: its own image settings, else its config's."""
    image = getattr(encoder, "image", None) or {}
    cfg = getattr(encoder, "cfg", None)
    mult = image.get("width_multiple") or getattr(cfg, "patch_width", 8)
    return int(mult), image.get("max_width") or getattr(cfg, "max_width", None)


@torch.no_grad()
def widened_tokens(encode, head, images: torch.Tensor, image_mask: torch.Tensor, threshold: float,
                   width_multiple: int = 8, max_width: int | None = None, max_scale: float = MAX_SCALE):
    """`encode(images, mask)` -> (tokens [B, N, D], mask [B, N]), with crowded lines encoded again wider.

    `head` is the CTC head whose first reading measures the crowding; threshold <= 0 (or no head, or
    cached tokens instead of pixels) reads once, as `encode` alone."""
    tokens, mask = encode(images, image_mask)
    if threshold <= 0 or head is None or images.dim() != 4:
        return tokens, mask
    scales = widen_scales(ctc_density(head(tokens).float(), head.frame_mask(mask)), threshold, max_scale)
    crowded = (scales > 1).nonzero().flatten()
    if crowded.numel() == 0:
        return tokens, mask
    wide, wide_mask = widen_images(images[crowded], image_mask[crowded], scales[crowded].tolist(),
                                   width_multiple, max_width)
    again, again_mask = encode(wide, wide_mask)
    n = max(tokens.shape[1], again.shape[1])
    merged = tokens.new_zeros(tokens.shape[0], n, tokens.shape[2])
    merged_mask = torch.zeros(tokens.shape[0], n, dtype=torch.bool, device=mask.device)
    merged[:, :tokens.shape[1]], merged_mask[:, :mask.shape[1]] = tokens, mask
    merged[crowded], merged_mask[crowded] = 0, False
    merged[crowded, :again.shape[1]], merged_mask[crowded, :again_mask.shape[1]] = again, again_mask.to(torch.bool)
    return merged, merged_mask


def reading_tokens(encode, encoder, head, images: torch.Tensor, image_mask: torch.Tensor, threshold: float):
    """`widened_tokens` within `encoder`'s limits: how OCRModel and EncoderReader read (`encode` may pass
    cached tokens through, as OCRModel.encoder_tokens does)."""
    mult, widest = encoder_limits(encoder)
    return widened_tokens(encode, head, images, image_mask, threshold, mult, widest)
