"""The CTC connectors: the encoder's CTC posteriors written in the GPT's own embedding space.

`ctc_embed` gives one token per encoder token (the stretched form `lm train --prefix-read` teaches the GPT
to read), `ctc_collapse` one token per character the CTC head reads (the collapsed form). Both are built from
the model's CTC head and GPT embeddings (`needs`, `bind`: copies the connector owns and trains), so the
bridge reads from its first step and training refines it. They need `model.ctc_head=true` and no token
reduction (one token per CTC step).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from bridgeocr.errors import ConfigError
from bridgeocr.models.connectors.registry import ConnectorBody, register_connector


@register_connector("ctc_embed")
class CTCEmbed(ConnectorBody):
    """Visual token i becomes the mean embedding of the characters its CTC frames emit, weighted by their
    posteriors (blank mass -> the embedding of id 0, the CTC blank and PAD), + `residual(x_i)` (zero at
    start): a middle ground between a learned projection and feeding the CTC transcript as text."""

    needs = ("ctc_head", "wte")
    reduces = False

    def __init__(self, settings, d_in: int, d_model: int):
        super().__init__()
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
