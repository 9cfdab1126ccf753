"""Training losses: next-token CE, KD = KL(Q || P) from a teacher LM reading the text (train/teacher.py),
CTC, and their mix.

Alignment convention (docs/architecture.md): `logits[:, t]` predicts `input_ids[:, t + 1]`; the loss is
taken only where the *target* token is real (attention_mask[:, t + 1]), so PAD never contributes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bridgeocr.errors import ConfigError

__all__ = ["ce_loss", "kd_loss", "combine", "ctc_loss", "ctc_targets", "target_mask"]


def target_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True at logit positions t whose target input_ids[:, t+1] is a real token."""
    mask = torch.zeros_like(attention_mask, dtype=torch.bool)
    mask[:, :-1] = attention_mask[:, 1:].bool()
    return mask


def ce_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy averaged over real target tokens (PAD ignored).

    logits [B, T, V] (T may equal input_ids' length; the last position has no target and is dropped),
    input_ids [B, T], attention_mask [B, T]. reduction: "mean" (over tokens), "sum", or "none" ([B, T-1]).
    """
    t = min(logits.shape[1], input_ids.shape[1] - 1)
    pred = logits[:, :t].float()
    tgt = input_ids[:, 1:t + 1]
    m = attention_mask[:, 1:t + 1].bool()
    tgt = tgt.masked_fill(~m, -100)
    loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1), ignore_index=-100,
                           reduction="none").view(tgt.shape)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / m.sum().clamp(min=1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
            tau: float = 1.0) -> torch.Tensor:
    """KL(Q || P) with Q = softmax(teacher / tau), log P = log_softmax(student / tau).

    Summed over the vocabulary, averaged over positions where `mask` [B, T] is True, times tau^2
    (the seed's `F.kl_div(log_probs_connector, probs_reference)` per token). The teacher gets no gradient.
    If the vocabularies differ in size the common prefix is used (ids are shared by construction).
    """
    if tau <= 0:
        raise ConfigError(f"loss.kd_tau: must be > 0, got {tau}")
    t = min(student_logits.shape[1], teacher_logits.shape[1], mask.shape[1])
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    s = student_logits[:, :t, :v].float() / tau
    q_logits = teacher_logits[:, :t, :v].detach().float() / tau
    m = mask[:, :t].bool()
    log_p = F.log_softmax(s, dim=-1)
    log_q = F.log_softmax(q_logits, dim=-1)
    q = log_q.exp()
    kl = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(-1)  # [B, T]; 0 log 0 = 0
    kl = (kl * m).sum() / m.sum().clamp(min=1)
    return kl * (tau ** 2)


def combine(ce: torch.Tensor, kd: torch.Tensor | None, alpha: float, form: str = "sum") -> torch.Tensor:
    """form "sum": CE + alpha*KD; form "interpolate": (1-alpha)*CE + alpha*KD."""
    if kd is None or alpha == 0:
        return ce if form == "sum" or kd is None else (1 - alpha) * ce
    if form == "sum":
        return ce + alpha * kd
    if form == "interpolate":
        return (1 - alpha) * ce + alpha * kd
    raise ConfigError(f"loss.kd_form: expected sum or interpolate, got {form!r}")


def ctc_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor, drop_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Text tokens without specials (BOS/EOS/PAD in `drop_ids`): (targets [B, L] padded, lengths [B])."""
    keep = attention_mask.bool().clone()
    for i in drop_ids:
        if i is not None:
            keep &= input_ids != i
    lengths = keep.sum(1)
    L = int(lengths.max().item()) if lengths.numel() else 0
    out = torch.zeros(input_ids.shape[0], max(L, 1), dtype=torch.long, device=input_ids.device)
    for b in range(input_ids.shape[0]):
        row = input_ids[b][keep[b]]
        out[b, :row.numel()] = row
    return out, lengths


def ctc_loss(ctc_logits: torch.Tensor, input_mask: torch.Tensor | None, targets: torch.Tensor,
             target_lengths: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """CTC over encoder frames. ctc_logits [B, N, C]; input_mask [B, N] marks real frames (None: all).

    Mean over the batch of per-line loss divided by target length (PyTorch's "mean"); infinite losses
    (target longer than the frames) are zeroed.
    """
    b, n, _ = ctc_logits.shape
    log_probs = F.log_softmax(ctc_logits.float(), dim=-1).transpose(0, 1)  # [N, B, C]
    if input_mask is None:
        in_lens = torch.full((b,), n, dtype=torch.long, device=ctc_logits.device)
    else:
        in_lens = input_mask.long().sum(1)
    return F.ctc_loss(log_probs, targets, in_lens, target_lengths.to(in_lens.device), blank=blank,
                      reduction="mean", zero_infinity=True)
