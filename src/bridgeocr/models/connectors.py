"""Connectors: visual tokens [B, N, d_enc] + mask -> decoder inputs [B, M, d_model] + mask.

Built by name, LLaVA `multimodal_projector/builder.py` style: `build_connector(cfg, d_enc, d_model)`.
An optional token reduction (`reduce=pool|concat`, `reduce_k` neighbours along the width) runs first,
then the registered connector kind. Every connector is mask-aware: padding a batch (a wider image in it)
never changes another item's output.

Kinds: `linear`, `linear_ln` (the seed's "without GELU"), `linear_gelu_ln` (the seed's setting 1),
`mlp` (Linear-GELU-Linear, LLaVA-1.5), `qformer` (BLIP-2: learned queries, self-attn, masked cross-attn,
FFN), `cabstractor` (Honeybee: conv res-blocks along the width + mask-aware adaptive pooling to M tokens),
`ctc_embed` (the encoder's CTC posteriors in the GPT's embedding space, + a residual that starts at zero),
`ctc_collapse` (the same, one token per character the CTC head reads).
New kinds: `@register_connector("name")` on a `ConnectorBody` subclass (or a factory returning one) taking
`(cfg, d_in, d_model)`. A kind that reads parts of the model when it is built (the CTC ones: the encoder's
CTC head and the GPT's embedding table) names them in `needs` and receives them in `bind`: the model hands
over what is asked for and never looks inside a connector.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bridgeocr.config import ConnectorConfig
from bridgeocr.errors import ConfigError

CONNECTORS: dict[str, Callable[..., nn.Module]] = {}


def register_connector(name: str):
    def deco(cls):
        CONNECTORS[name] = cls
        return cls
    return deco


def connector_names() -> list[str]:
    return sorted(CONNECTORS)


class ConnectorBody(nn.Module):
    """What every connector kind is: `forward(tokens [B, N, d_in], mask [B, N]) -> (out [B, M, d_model],
    mask [B, M])`. `needs`: the parts of the model it is built from (names OCRModel provides: `ctc_head`,
    `wte`), handed to `bind` once the model has them."""

    needs: tuple[str, ...] = ()

    def bind(self, **parts: nn.Module) -> None:
        """Receive the parts named in `needs` (nothing to do for a kind that needs none)."""


# ---------------------------------------------------------------------------------- token reduction


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


# ------------------------------------------------------------------------------------- projectors


class Projector(ConnectorBody):
    """A token-wise projection; the output mask is the input mask."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.proj = nn.Sequential(*layers)

    def forward(self, x, mask):
        return self.proj(x), mask


@register_connector("linear")
def _linear(cfg: ConnectorConfig, d_in: int, d_model: int):
    return Projector([nn.Linear(d_in, d_model)])


@register_connector("linear_ln")
def _linear_ln(cfg: ConnectorConfig, d_in: int, d_model: int):
    return Projector([nn.Linear(d_in, d_model), nn.LayerNorm(d_model)])


@register_connector("linear_gelu_ln")
def _linear_gelu_ln(cfg: ConnectorConfig, d_in: int, d_model: int):
    return Projector([nn.Linear(d_in, d_model), nn.GELU(), nn.LayerNorm(d_model)])


@register_connector("mlp")
def _mlp(cfg: ConnectorConfig, d_in: int, d_model: int):
    return Projector([nn.Linear(d_in, d_model), nn.GELU(), nn.Linear(d_model, d_model)])


# ---------------------------------------------------------------------------------------- Q-Former


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


@register_connector("qformer")
class QFormer(ConnectorBody):
    """BLIP-2-style: `num_queries` learned queries through `layers` blocks; output mask all True.
    `locality` > 0 adds `locality_bias` to every cross-attention (0: the seed's plain Q-Former)."""

    def __init__(self, cfg: ConnectorConfig, d_in: int, d_model: int):
        super().__init__()
        self.locality = float(cfg.locality)
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, d_model) * 0.02)
        self.blocks = nn.ModuleList(QFormerBlock(d_model, d_in, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(d_model)
        self.proj = nn.Linear(d_model, d_model)  # BLIP-2's language projection

    def forward(self, x, mask):
        q = self.queries[None].expand(x.shape[0], -1, -1)
        bias = locality_bias(mask, q.shape[1], self.locality).to(x.dtype) if self.locality > 0 else None
        for blk in self.blocks:
            q = blk(q, x, mask, bias)
        out = self.proj(self.ln(q))
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)


# ------------------------------------------------------------------------------------- C-Abstractor


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


@register_connector("cabstractor")
class CAbstractor(ConnectorBody):
    """Honeybee C-Abstractor on a 1-D line: res-blocks -> masked adaptive pool to M -> res-blocks -> MLP."""

    def __init__(self, cfg: ConnectorConfig, d_in: int, d_model: int):
        super().__init__()
        self.m_out = cfg.num_queries
        self.inp = nn.Linear(d_in, d_model)
        self.pre = nn.ModuleList(ResBlock1d(d_model) for _ in range(cfg.layers))
        self.post = nn.ModuleList(ResBlock1d(d_model) for _ in range(cfg.layers))
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


@register_connector("ctc_embed")
class CTCEmbed(ConnectorBody):
    """The encoder's CTC posteriors, written in the GPT's own embedding space, plus a learned residual.

    Visual token i becomes the mean embedding of the characters its CTC frames emit, weighted by their
    posteriors (blank mass -> the embedding of id 0, the CTC blank and PAD), + `residual(x_i)` (zero at
    start). This is exactly the prefix `lm train --prefix-read` teaches the GPT to read, so the bridge reads
    from its first step and training refines it; a middle ground between a learned projection and feeding
    the CTC transcript as text. It is built from the model's CTC head and GPT embeddings (`needs`, `bind`:
    copies the connector owns and trains). Needs `model.ctc_head=true` and no token reduction.
    """

    needs = ("ctc_head", "wte")

    def __init__(self, cfg: ConnectorConfig, d_in: int, d_model: int):
        super().__init__()
        if cfg.reduce not in (None, "none") and cfg.reduce_k > 1:
            raise ConfigError("connector ctc_embed: token reduction is not supported (one token per CTC step)")
        self.upsample = 1
        self.head: nn.Linear | None = None
        self.embed: nn.Parameter | None = None
        self.residual = nn.Linear(d_in, d_model)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)

    def bind(self, ctc_head: nn.Module, wte: nn.Embedding) -> None:
        self.init_from(ctc_head, wte)

    def init_from(self, ctc_head: nn.Module, wte: nn.Embedding) -> None:
        """Copy the CTC head (`proj`, `upsample`, `vocab_size`) and the first vocab_size GPT embeddings."""
        import copy

        self.upsample = ctc_head.upsample
        self.head = copy.deepcopy(ctc_head.proj)
        self.embed = nn.Parameter(wte.weight.detach()[: ctc_head.vocab_size].clone())

    def frame_posteriors(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, d_in] -> CTC posteriors [B, N * upsample, V] (float32), frames in reading order."""
        if self.head is None:
            raise ConfigError("connectors ctc_embed / ctc_collapse need the encoder's CTC head: "
                              "set model.ctc_head=true")
        return self.head(x).float().view(x.shape[0], x.shape[1] * self.upsample, -1).softmax(-1)

    def forward(self, x, mask):
        b, n, _ = x.shape
        probs = self.frame_posteriors(x).view(b, n, self.upsample, -1)
        chars = probs[..., 1:].sum(2)  # expected emissions of each character in the token's frames
        mass = chars.sum(-1, keepdim=True)
        embed = self.embed.float()
        out = chars @ embed[1:] / mass.clamp(min=1.0) + (1.0 - mass).clamp(min=0.0) * embed[0]
        return out.to(x.dtype) + self.residual(x), mask


@register_connector("ctc_collapse")
class CTCCollapse(CTCEmbed):
    """One visual token per character the CTC head reads: the greedy path's emission frames (a new non-blank
    label), each as its posterior-weighted mean character embedding (blank excluded) + `residual` of the
    encoder token it came from. The prefix is the CTC transcript in the GPT's embedding space, aligned with
    the text positions, so the GPT reads character t at prefix position t and can correct it with its
    language prior. Fewest visual tokens of all connectors (one per character); a line the head reads as
    empty gives one blank token.
    """

    def forward(self, x, mask):
        d, u = x.shape[-1], self.upsample
        probs = self.frame_posteriors(x)
        frames = mask.repeat_interleave(u, dim=1)
        best = probs.argmax(-1)
        prev = F.pad(best, (1, 0), value=0)[:, :-1]
        emit = (best != 0) & (best != prev) & frames  # greedy CTC: a new non-blank label starts here
        counts = emit.sum(1)
        m = max(1, int(counts.max()))
        order = torch.argsort((~emit).to(torch.int8), dim=1, stable=True)[:, :m]  # emission frames first
        out_mask = torch.arange(m, device=x.device)[None] < counts[:, None].clamp(min=1)
        chosen = probs.gather(1, order[..., None].expand(-1, -1, probs.shape[-1]))  # [B, m, V]
        chars = chosen[..., 1:] / chosen[..., 1:].sum(-1, keepdim=True).clamp(min=1e-6)
        embed = self.embed.float()
        out = chars @ embed[1:]
        empty = counts == 0  # nothing read: one blank token
        if empty.any():
            out[empty, 0] = embed[0]
        src = x.gather(1, (order // u)[..., None].expand(-1, -1, d))
        out = out.to(x.dtype) + self.residual(src)
        return out * out_mask[..., None], out_mask


# ------------------------------------------------------------------------------------------ builder


class Connector(nn.Module):
    """Token reduction (maybe identity) then the named connector."""

    def __init__(self, reduce: Reduce, body: ConnectorBody, kind: str):
        super().__init__()
        if not isinstance(body, ConnectorBody):
            raise TypeError(f"connector {kind!r}: its builder must return a ConnectorBody, got {type(body).__name__}")
        self.reduce, self.body, self.kind = reduce, body, kind

    @property
    def needs(self) -> tuple[str, ...]:
        """The parts of the model this connector is built from (see ConnectorBody)."""
        return tuple(self.body.needs)

    def bind(self, **parts: nn.Module) -> None:
        self.body.bind(**parts)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        """tokens [B, N, d_enc], mask [B, N] -> (out [B, M, d_model], out_mask [B, M])."""
        mask = mask.to(torch.bool)
        return self.body(*self.reduce(tokens, mask))


def build_connector(cfg: ConnectorConfig, d_enc: int, d_model: int) -> Connector:
    if cfg.kind not in CONNECTORS:
        raise ConfigError(f"connector.kind: {cfg.kind!r} is unknown (known: {', '.join(connector_names())})")
    reduce = Reduce(cfg.reduce, cfg.reduce_k, d_enc)
    return Connector(reduce, CONNECTORS[cfg.kind](cfg, reduce.d_out, d_model), cfg.kind)
