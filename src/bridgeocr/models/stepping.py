"""One-token decoding steps over the GPT, shared by every search (models/decoding.py, models/joint_decoding.py):
the Stepper (the KV cache, or full recomputation for the tests), log-probs without the ids that are never
generated, and the Hypothesis a search returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bridgeocr.models.decoder import StepCache

__all__ = ["Hypothesis", "Stepper", "log_probs"]


@dataclass
class Hypothesis:
    ids: list[int]  # generated tokens, without BOS / EOS
    text: str
    confidence: float  # mean token log-prob


class Stepper:
    """Feeds the decoder one token per row per step, with the cache or by full recomputation."""

    def __init__(self, gpt, prefix, prefix_mask, attach_layer: int, bos_id: int, use_cache: bool):
        self.gpt, self.prefix, self.prefix_mask = gpt, prefix, prefix_mask
        self.attach, self.bos, self.use_cache = attach_layer, bos_id, use_cache

    def start(self) -> torch.Tensor:
        B = self.prefix.shape[0]
        self.rows = torch.arange(B, device=self.prefix.device)
        self.seqs = torch.full((B, 1), self.bos, dtype=torch.long, device=self.prefix.device)
        logits, cache = self.gpt(self.seqs, prefix=self.prefix, prefix_mask=self.prefix_mask,
                                 attach_layer=self.attach)
        self.cache = StepCache.from_prefill(cache) if self.use_cache else None
        return logits[:, -1]

    def step(self, parents: torch.Tensor, tokens: torch.Tensor, same_rows: bool = False) -> torch.Tensor:
        """Row i of the next step continues row parents[i] of this one with tokens[i] -> logits [R, V].

        same_rows: parents is every row in order, so the KV cache is used as it is (no copy)."""
        if self.use_cache:
            if not same_rows:
                self.cache = self.cache.reorder(parents)
            return self.gpt.step(tokens, self.cache)
        self.seqs = torch.cat([self.seqs[parents], tokens[:, None]], dim=1)  # only recomputation needs them
        self.rows = self.rows[parents]
        logits, _ = self.gpt(self.seqs, prefix=self.prefix[self.rows], prefix_mask=self.prefix_mask[self.rows],
                             attach_layer=self.attach)
        return logits[:, -1]


def log_probs(logits: torch.Tensor, suppress: tuple[int, ...]) -> torch.Tensor:
    """Log-softmax in float32 with never-generated ids (PAD, BOS) removed from the distribution."""
    logits = logits.float()
    if suppress:
        logits = logits.index_fill(-1, torch.tensor(suppress, device=logits.device), float("-inf"))
    return F.log_softmax(logits, dim=-1)
