"""Learning-rate schedule: linear warm-up, then cosine decay to `floor` x the peak."""

from __future__ import annotations

import math

__all__ = ["lr_factor"]


def lr_factor(step: int, warmup: int, total: int, floor: float = 0.1, time_fraction: float | None = None) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based).

    `time_fraction` (elapsed / budget, for runs bounded by minutes): the cosine follows whichever budget,
    steps or time, is closer to running out, so a timed run still ends with a decayed learning rate.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if time_fraction is not None:
        progress = min(1.0, max(progress, time_fraction))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

