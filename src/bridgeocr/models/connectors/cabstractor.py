"""`cabstractor` (Honeybee's C-Abstractor on a 1-D line): conv res-blocks along the width, mask-aware
adaptive pooling to M tokens, res-blocks, an MLP. Keeps locality while it shortens the sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bridgeocr.models.connectors.registry import ConnectorBody, register_connector, require


@dataclass
class CAbstractorSettings:
    num_queries: int = 32  # M output tokens
    layers: int = 2  # res-blocks before and after the pooling

    def __post_init__(self):
        require("num_queries", self.num_queries >= 1, ">= 1", self.num_queries)
        require("layers", self.layers >= 1, ">= 1", self.layers)


class ResBlock1d(nn.Module):
    """Pre-LN residual block of two width-wise convs; padded tokens are re-zeroed before each conv."""

    def __init__(self, d: int, kernel: int = 3):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.conv1 = nn.Conv1d(d, d, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(d, d, kernel, padding=kernel // 2)

    def forward(self, x, mask):  # x [B, N, d]
        m = mask[:, None, :].to(x.dtype)
        h = self.ln(x).transpose(1, 2) * m
        h = F.gelu(self.conv1(h)) * m
        return x + self.conv2(h).transpose(1, 2)


def masked_adaptive_pool(x: torch.Tensor, mask: torch.Tensor, m_out: int) -> torch.Tensor:
    """Adaptive average pooling of each item's real tokens (in order) to `m_out` bins -> [B, m_out, d]."""
    n = mask.sum(1, keepdim=True).clamp(min=1)  # [B, 1]
    rank = mask.to(torch.long).cumsum(1) - 1  # index of each real token among the real ones
    i = torch.arange(m_out, device=x.device)[None, :, None]  # [1, M, 1]
    start = torch.div(i * n[:, :, None], m_out, rounding_mode="floor")
    end = torch.div((i + 1) * n[:, :, None] + m_out - 1, m_out, rounding_mode="floor")  # ceil
    r = rank[:, None, :]
    w = (mask[:, None, :] & (r >= start) & (r < end)).to(x.dtype)  # [B, M, N]
    return (w / w.sum(-1, keepdim=True).clamp(min=1)) @ x


@register_connector("cabstractor", settings=CAbstractorSettings)
class CAbstractor(ConnectorBody):
    """Res-blocks -> masked adaptive pool to M -> res-blocks -> MLP; output mask all True."""

    def __init__(self, s: CAbstractorSettings, d_in: int, d_model: int):
        super().__init__()
        self.m_out = s.num_queries
        self.inp = nn.Linear(d_in, d_model)
        self.pre = nn.ModuleList(ResBlock1d(d_model) for _ in range(s.layers))
        self.post = nn.ModuleList(ResBlock1d(d_model) for _ in range(s.layers))
        self.readout = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(),
                                     nn.Linear(d_model, d_model))

    def forward(self, x, mask):
        x = self.inp(x)
        for blk in self.pre:
            x = blk(x, mask)
        x = masked_adaptive_pool(x, mask, self.m_out)
        out_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        for blk in self.post:
            x = blk(x, out_mask)
        return self.readout(x), out_mask
