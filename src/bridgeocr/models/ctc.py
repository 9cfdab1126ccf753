"""A CTC head on the encoder tokens (encoder pretraining, joint CTC + attention loss, fast decoding).

The CTC vocabulary *is* the tokenizer vocabulary and the **blank is index 0**, which is the tokenizer's
`pad_id` (0 for CharTokenizer / BPETokenizer): PAD never occurs inside a target, so it can serve as blank
and no extra class is needed. Use `F.ctc_loss(..., blank=0)`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bridgeocr.models.stepping import Hypothesis

BLANK = 0


class CTCHead(nn.Module):
    """Each encoder token emits `upsample` CTC frames: a line token is ~8 px wide, often narrower than two
    letters, and CTC needs at least one frame per label (two between repeated letters)."""

    def __init__(self, d_enc: int, vocab_size: int, upsample: int = 3):
        super().__init__()
        self.d_enc, self.vocab_size, self.upsample = d_enc, vocab_size, upsample
        self.proj = nn.Linear(d_enc, vocab_size * upsample)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, d_enc] -> logits [B, N * upsample, V] (blank = 0), frames in reading order."""
        b, n, _ = tokens.shape
        return self.proj(tokens).view(b, n * self.upsample, self.vocab_size)

    def frame_mask(self, token_mask: torch.Tensor) -> torch.Tensor:
        """[B, N] real tokens -> [B, N * upsample] real frames."""
        return token_mask.repeat_interleave(self.upsample, dim=1)


def ctc_greedy_decode(logits: torch.Tensor, mask: torch.Tensor | None = None, blank: int = BLANK) -> list[list[int]]:
    """Best path: argmax per real token, collapse repeats, drop blanks."""
    best = logits.argmax(-1)
    keep = torch.ones_like(best, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    out = []
    for row, real in zip(best.tolist(), keep.tolist()):
        seq, prev = [], None
        for t in (t for t, r in zip(row, real) if r):
            if t != prev and t != blank:
                seq.append(t)
            prev = t
        out.append(seq)
    return out


@torch.no_grad()
def ctc_read(encoder, head: CTCHead, images: torch.Tensor, image_mask: torch.Tensor, tokenizer=None) -> list:
    """Greedy CTC over a padded batch -> [Hypothesis]: fast, no language model.
    Confidence = mean best-frame log-prob over the line's real frames."""

    tokens, token_mask = encoder(images, image_mask)
    logits = head(tokens).float()
    frames = head.frame_mask(token_mask)
    best = logits.log_softmax(-1).max(-1).values
    out = []
    for b, ids in enumerate(ctc_greedy_decode(logits, frames)):
        real = best[b][frames[b]]
        text = tokenizer.decode(ids) if tokenizer is not None else ""
        out.append(Hypothesis(ids, text, float(real.mean()) if real.numel() else 0.0))
    return out
