"""Token reduction before a connector: merge k neighbouring visual tokens along the width."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from bridgeocr.errors import ConfigError


class Reduce(nn.Module):
    """Merge k neighbouring tokens along the width: `pool` (masked mean) or `concat` (k*d channels).

    Windows start at token 0 for every item, so an item's windows do not depend on the batch width;
    a window is real if any of its tokens is.
    """

    def __init__(self, kind: str | None, k: int, d_in: int):
        super().__init__()
        if kind not in (None, "none", "pool", "concat"):
            raise ConfigError(f"connector.reduce: {kind!r} is not one of none | pool | concat")
        if k < 1:
            raise ConfigError(f"connector.reduce_k: {k} must be >= 1")
        self.kind = None if kind in (None, "none") or k == 1 else kind
        self.k = k
        self.d_out = d_in * k if self.kind == "concat" else d_in

    def forward(self, x, mask):
        if self.kind is None:
            return x, mask
        B, N, D = x.shape
        pad = (-N) % self.k
        x = F.pad(x * mask[..., None].to(x.dtype), (0, 0, 0, pad)).view(B, -1, self.k, D)
        m = F.pad(mask, (0, pad)).view(B, -1, self.k)
        if self.kind == "pool":
            count = m.sum(-1, keepdim=True).clamp(min=1).to(x.dtype)
            return x.sum(2) / count, m.any(-1)
        return x.reshape(B, -1, self.k * D), m.any(-1)
