"""Prefix reading: teach the text-only GPT to read a noisy copy of a line placed in its prefix.

Why. An OCR decoder trained from scratch (or from a plain LM) learns the language prior long before it
learns to look at the visual prefix: nothing in LM pretraining ever rewarded attending to a prefix. Large
LLMs bring that skill (in-context copying) from pretraining, which is why a LLaVA-style connector can be
trained alone. A 1.5M-parameter char LM does not have it, so we pretrain it on purpose: the prefix is the
line itself as the encoder would see it -- each "visual token" covers 1/r of a character (r ~ 1-3 tokens
per character, as 8-px patches over 8-24-px glyphs), holds the mean embedding of the characters it
overlaps, blank margins on both sides, some tokens blanked as a CTC head leaves them (one firing token per
character), some characters swapped and Gaussian noise on top -- and the GPT must write the line. Half the
lines come collapsed instead, one token per character as a CTC transcript (`ctc_collapse` connector), with
characters swapped, dropped and inserted. A connector then only has to map visual features near the
character embeddings, which a CTC-trained encoder makes linearly easy.

The prefix gets the GPT's position embeddings (`decoder.prefix_positions`), so the GPT learns to find
character t near token ~r*t (stretched) or at token t (collapsed), and the OCR model keeps the same convention.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from bridgeocr.data.preprocess import text_batch
from bridgeocr.train.losses import ce_loss


@dataclass
class PrefixNoise:
    """How the synthetic prefix departs from the clean text (defaults sized to a 32-px line, 8-px patches)."""

    min_ratio: float = 1.0  # prefix tokens per character
    max_ratio: float = 3.0
    max_margin: int = 4  # blank tokens before and after the text, each side up to this many
    swap_prob: float = 0.1  # a character's embedding replaced by another character's
    noise_std: float = 0.5  # Gaussian noise, in units of the embedding table's standard deviation
    # CTC-like sparsity: a line draws p ~ U(0, max_blank_prob) and each token that is not the main token of a
    # character turns blank with probability p (a CTC head fires once per character, blank elsewhere)
    max_blank_prob: float = 0.8
    # the collapsed form (what the `ctc_collapse` connector gives): one token per read character, like a CTC
    # transcript -- characters swapped (swap_prob), dropped and inserted; no stretch, margins or blanks
    collapsed_prob: float = 0.5  # fraction of lines given in this form
    delete_prob: float = 0.04
    insert_prob: float = 0.04


def coverage_matrix(n_chars: int, ratio: float, margin_left: int, n_tokens: int) -> torch.Tensor:
    """[n_tokens, n_chars]: the fraction of token j that lies over character c (rows sum to <= 1).

    Token j spans [(j - margin_left) / ratio, (j - margin_left + 1) / ratio) in character units.
    """
    j = torch.arange(n_tokens, dtype=torch.float32)[:, None]
    c = torch.arange(n_chars, dtype=torch.float32)[None, :]
    lo = (j - margin_left) / ratio
    hi = lo + 1.0 / ratio
    overlap = (torch.minimum(hi, c + 1) - torch.maximum(lo, c)).clamp(min=0.0)
    return overlap * ratio


def noisy_prefix(wte: torch.nn.Embedding, lines: list[list[int]], blank_id: int, char_ids: list[int],
                 rng: random.Random, noise: PrefixNoise | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix embeddings [B, M, C] and mask [B, M] (True = real) for token-id lines (no BOS/EOS).

    Differentiable in `wte`: the GPT's own embeddings are the "clean" visual tokens it learns to read.
    """
    noise = noise or PrefixNoise()
    weight = wte.weight
    dev = weight.device
    rows, lengths = [], []
    for ids in lines:
        if rng.random() < noise.collapsed_prob:
            edited = []
            for t in ids:
                if rng.random() < noise.delete_prob:
                    continue
                edited.append(rng.choice(char_ids) if rng.random() < noise.swap_prob else t)
                if rng.random() < noise.insert_prob:
                    edited.append(rng.choice(char_ids))
            rows.append(weight[torch.tensor(edited or [blank_id], device=dev)])
            lengths.append(len(rows[-1]))
            continue
        n = max(1, len(ids))
        ratio = rng.uniform(noise.min_ratio, noise.max_ratio)
        left, right = rng.randint(0, noise.max_margin), rng.randint(0, noise.max_margin)
        m = left + math.ceil(n * ratio) + right
        cover = coverage_matrix(n, ratio, left, m)
        p_blank = rng.uniform(0.0, noise.max_blank_prob)
        if p_blank > 0:
            peaks = set(cover.argmax(0).tolist())
            drop = [j for j in range(m) if j not in peaks and rng.random() < p_blank]
            cover[drop] = 0.0
        cover = cover.to(dev)
        noisy = [rng.choice(char_ids) if rng.random() < noise.swap_prob else t for t in ids] or [blank_id]
        emb = weight[torch.tensor(noisy, device=dev)]  # [n, C]
        blank = (1.0 - cover.sum(1, keepdim=True)).clamp(min=0.0)
        rows.append(cover @ emb + blank * weight[blank_id][None])
        lengths.append(m)
    width = max(lengths)
    prefix = weight.new_zeros(len(lines), width, weight.shape[1])
    mask = torch.zeros(len(lines), width, dtype=torch.bool, device=dev)
    for i, (r, m) in enumerate(zip(rows, lengths)):
        prefix[i, :m] = r
        mask[i, :m] = True
    if noise.noise_std > 0:
        prefix = prefix + torch.randn_like(prefix) * (noise.noise_std * float(weight.detach().std()))
    return prefix, mask


def prefix_reading_loss(model, lines: list[list[int]], tokenizer, char_ids: list[int], rng: random.Random,
                        noise: PrefixNoise | None = None, max_len: int = 160, reduction: str = "mean"):
    """Next-token CE of the text given its noisy prefix (the GPT must carry `prefix_positions=True`)."""

    dev = model.wte.weight.device
    clipped = [ln[: max_len - 2] for ln in lines]
    ids, am = (t.to(dev) for t in text_batch(clipped, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id))
    prefix, pmask = noisy_prefix(model.wte, clipped, tokenizer.pad_id, char_ids, rng, noise)
    logits, _ = model(ids, am, prefix=prefix, prefix_mask=pmask)
    return ce_loss(logits, ids, am, reduction=reduction), int(am[:, 1:].sum())
