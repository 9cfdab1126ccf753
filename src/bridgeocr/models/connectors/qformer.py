"""`qformer` (BLIP-2): learned queries, self-attention, masked cross-attention to the visual tokens, FFN.
`locality` > 0 adds a prior that query i reads its share of the line (0: the seed's plain Q-Former)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bridgeocr.errors import ConfigError
from bridgeocr.models.connectors.registry import ConnectorBody, register_connector, require


@dataclass
class QFormerSettings:
    num_queries: int = 32  # M output tokens (BLIP-2's 32; docs/reading.md 4b: 64 for 60-character lines)
    layers: int = 2  # Q-Former blocks
    heads: int = 4
    # > 0 biases query i's cross-attention to its share of the width (a Gaussian's std, as a fraction of the
    # line); 0: the seed's plain Q-Former
    locality: float = 0.0
    dropout: float = 0.0

    def __post_init__(self):
        require("num_queries", self.num_queries >= 1, ">= 1", self.num_queries)
        require("layers", self.layers >= 1, ">= 1", self.layers)
        require("heads", self.heads >= 1, ">= 1", self.heads)
        require("locality", self.locality >= 0, ">= 0", self.locality)
        require("dropout", 0 <= self.dropout <= 1, "in [0, 1]", self.dropout)


class MaskedAttention(nn.Module):
    """Multi-head attention (SDPA) with separate query / key-value widths and a key mask."""

    def __init__(self, d_q: int, d_kv: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if d_q % heads:
            raise ConfigError(f"connector.heads {heads} must divide the decoder width {d_q}")
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v = nn.Linear(d_q, d_q), nn.Linear(d_kv, d_q), nn.Linear(d_kv, d_q)
        self.o = nn.Linear(d_q, d_q)

    def forward(self, x, ctx, key_mask=None, bias=None):
        """`bias` [B, M, N] (optional) is added to the attention logits (a locality prior)."""
        B, M, D = x.shape
        h = self.heads

        def split(t):
            return t.view(B, -1, h, D // h).transpose(1, 2)

        mask = None if key_mask is None else key_mask[:, None, None, :]
        if bias is not None:
            mask = bias[:, None].masked_fill(~key_mask[:, None, None, :], float("-inf")) if mask is not None \
                else bias[:, None]
        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(ctx)), split(self.v(ctx)), attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(B, M, D))


class QFormerBlock(nn.Module):
    """Pre-LN: queries self-attend, cross-attend to the (masked) visual tokens, then an FFN."""

    def __init__(self, d: int, d_kv: int, heads: int, dropout: float):
        super().__init__()
        self.ln_self, self.self_attn = nn.LayerNorm(d), MaskedAttention(d, d, heads, dropout)
        self.ln_cross, self.ln_ctx = nn.LayerNorm(d), nn.LayerNorm(d_kv)
        self.cross_attn = MaskedAttention(d, d_kv, heads, dropout)
        self.ln_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(dropout))

    def forward(self, q, ctx, mask, bias=None):
        h = self.ln_self(q)
        q = q + self.self_attn(h, h)
        q = q + self.cross_attn(self.ln_cross(q), self.ln_ctx(ctx), mask, bias)
        return q + self.ffn(self.ln_ffn(q))


def locality_bias(mask: torch.Tensor, m_out: int, width: float) -> torch.Tensor:
    """[B, M, N] attention-logit prior: query i prefers the tokens near (i + 0.5) / M of *its own* line's real
    width, a Gaussian of std `width` (a fraction of the line), so the queries read the line in order."""
    n = mask.sum(1, keepdim=True).clamp(min=1).to(torch.float32)  # [B, 1]
    u = (torch.arange(mask.shape[1], device=mask.device)[None] + 0.5) / n  # [B, N] token centre in [0, 1]
    c = (torch.arange(m_out, device=mask.device, dtype=torch.float32) + 0.5) / m_out  # [M]
    return -((u[:, None, :] - c[None, :, None]) ** 2) / (2.0 * width ** 2)


@register_connector("qformer", settings=QFormerSettings)
class QFormer(ConnectorBody):
    """`num_queries` learned queries through `layers` blocks, then BLIP-2's language projection; output mask
    all True."""

    def __init__(self, s: QFormerSettings, d_in: int, d_model: int):
        super().__init__()
        self.locality = float(s.locality)
        self.queries = nn.Parameter(torch.randn(s.num_queries, d_model) * 0.02)
        self.blocks = nn.ModuleList(QFormerBlock(d_model, d_in, s.heads, s.dropout) for _ in range(s.layers))
        self.ln = nn.LayerNorm(d_model)
        self.proj = nn.Linear(d_model, d_model)  # BLIP-2's language projection

    def forward(self, x, mask):
        q = self.queries[None].expand(x.shape[0], -1, -1)
        bias = locality_bias(mask, q.shape[1], self.locality).to(x.dtype) if self.locality > 0 else None
        for blk in self.blocks:
            q = blk(q, x, mask, bias)
        out = self.proj(self.ln(q))
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
