"""A CTC head on the encoder tokens (encoder pretraining, joint CTC + attention loss, fast decoding).

The CTC vocabulary *is* the tokenizer vocabulary and the **blank is index 0**, which is the tokenizer's
`pad_id` (0 for CharTokenizer / BPETokenizer): PAD never occurs inside a target, so it can serve as blank
and no extra class is needed. Use `F.ctc_loss(..., blank=0)`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

BLANK = 0


class CTCHead(nn.Module):
    def __init__(self, d_enc: int, vocab_size: int):
        super().__init__()
        self.d_enc, self.vocab_size = d_enc, vocab_size
        self.proj = nn.Linear(d_enc, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, d_enc] -> logits [B, N, V] (blank = 0)."""
        return self.proj(tokens)


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
