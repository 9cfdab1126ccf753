"""Two readings of a line's ground-truth text by a GPT: the KD teacher's Q and the loss-gap Reference.

- **lm**: the GPT as a plain LM reading the text (no prefix): how predictable the text is from itself
  (the seed's "reference" path).
- **prefix**: the GPT given the text's own token embeddings (`wte`, specials dropped) *in place of the
  visual tokens*, at the same attach layer, then predicting the text: what a perfect connector would
  produce (speech LLMs align the audio path with the text path this way: BLSP, DiVA). A GPT taught to
  read collapsed prefixes (`train/prefix_reading.py`, the shipped `gpt_lm`) reads it well.

Both give logits at the same text positions as the image path, so `kd_loss` and `ce_loss` apply as they are.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from bridgeocr.errors import ConfigError
from bridgeocr.shipped import resolve_pretrained
from bridgeocr.train.losses import ctc_targets

__all__ = ["READINGS", "KDTeacher", "kd_teacher_spec", "read_text", "teacher_logits", "text_prefix"]

READINGS = ("lm", "prefix")


def text_prefix(wte: nn.Embedding, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                special_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefix [B, L, C], prefix_mask [B, L]): the embeddings of each line's text tokens, no BOS/EOS/PAD."""
    tokens, lengths = ctc_targets(input_ids, attention_mask, drop_ids=special_ids)
    mask = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]
    return wte(tokens), mask


def read_text(gpt, input_ids: torch.Tensor, attention_mask: torch.Tensor, reading: str = "lm",
              special_ids=(), attach_layer: int = 0) -> torch.Tensor:
    """Next-token logits [B, T, V] of `gpt` reading the text the `reading` way (see the module doc)."""
    if reading == "lm":
        return gpt(input_ids, attention_mask)[0]
    if reading != "prefix":
        raise ConfigError(f"reading: expected one of {', '.join(READINGS)}, got {reading!r}")
    prefix, pmask = text_prefix(gpt.wte, input_ids, attention_mask, special_ids)
    return gpt(input_ids, attention_mask, prefix=prefix, prefix_mask=pmask, attach_layer=attach_layer)[0]


class KDTeacher(nn.Module):
    """A frozen LM and how it reads the text. A module, so `.to(device)` / `.eval()` reach the LM; the
    training module keeps it out of its submodules (no optimizer, no DDP, no checkpoint)."""

    def __init__(self, lm, reading: str = "lm", special_ids=(), attach_layer: int = 0, memo_mb: float = 0.0):
        super().__init__()
        if reading not in READINGS:
            raise ConfigError(f"loss.kd_teacher: expected one of {', '.join(READINGS)}, got {reading!r}")
        if reading == "prefix" and not 0 <= attach_layer < len(lm.h):
            raise ConfigError(f"model.attach_layer: {attach_layer} not in the teacher's blocks "
                              f"[0, {len(lm.h) - 1}] (loss.kd_teacher=prefix)")
        self.lm = lm
        self.reading = reading
        self.special_ids = tuple(i for i in special_ids if i is not None)
        self.attach_layer = attach_layer
        self.memo_bytes = int(memo_mb * 2**20)
        self._memo: dict[tuple[int, ...], torch.Tensor] = {}
        self._memo_used = 0
        self.memo_hits = self.memo_misses = 0

    @property
    def vocab_size(self) -> int:
        return self.lm.vocab_size

    def _read(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return read_text(self.lm, input_ids, attention_mask, self.reading, self.special_ids, self.attach_layer)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Q's logits [B, T, V]. With a memo (`memo_mb` > 0), a line's logits are computed once and reused in
        later epochs: the frozen teacher reads the text alone, so a row's logits depend on its tokens only
        (right padding and the other rows change nothing). Positions past a row's end are zeros."""
        if self.memo_bytes <= 0:
            return self._read(input_ids, attention_mask)
        lengths = attention_mask.sum(1).tolist()
        keys = [tuple(row[:n]) for row, n in zip(input_ids.tolist(), lengths)]
        missing = [i for i, k in enumerate(keys) if k not in self._memo]
        fresh = {}
        if missing:
            rows = torch.tensor(missing, device=input_ids.device)
            width = max(lengths[i] for i in missing)
            out = self._read(input_ids[rows, :width], attention_mask[rows, :width])
            for j, i in enumerate(missing):
                fresh[i] = out[j, : lengths[i]]
                if self._memo_used + fresh[i].numel() * fresh[i].element_size() <= self.memo_bytes:
                    self._memo[keys[i]] = fresh[i].detach().clone()
                    self._memo_used += fresh[i].numel() * fresh[i].element_size()
        self.memo_misses += len(missing)
        self.memo_hits += len(keys) - len(missing)
        rows = [fresh[i] if i in fresh else self._memo[k] for i, k in enumerate(keys)]
        logits = rows[0].new_zeros(*input_ids.shape, rows[0].shape[-1])
        for i, row in enumerate(rows):
            logits[i, : row.shape[0]] = row
        return logits

    forward = logits


def teacher_logits(teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Q's logits from a KDTeacher, or from a bare GPT read as a plain LM (what older callers pass)."""
    if isinstance(teacher, KDTeacher):
        return teacher.logits(input_ids, attention_mask)
    return teacher(input_ids, attention_mask)[0]


def kd_teacher_spec(kd_teacher: str | None, kd_teacher_dir: str | None,
                    decoder_pretrained: str | None) -> tuple[str, Path | None]:
    """(reading, LM dir or None) from `loss.kd_teacher` (None | lm | prefix | an LM dir) and
    `loss.kd_teacher_dir` (the LM for lm / prefix; default: the decoder's pretrained dir).

    A directory given as kd_teacher keeps its old meaning: that LM, read as a plain LM. The names win
    over a directory that happens to be called `lm` or `prefix`.
    """
    if kd_teacher is None or kd_teacher in READINGS:
        if kd_teacher_dir:
            return kd_teacher or "lm", _lm_dir(kd_teacher_dir, "loss.kd_teacher_dir")
        return kd_teacher or "lm", _lm_dir(decoder_pretrained, "model.decoder.pretrained", check=False)
    path = _lm_dir(kd_teacher, "loss.kd_teacher",
                   why=f"expected {' | '.join(READINGS)} or an LM directory, got {kd_teacher!r}")
    if kd_teacher_dir:
        raise ConfigError(f"loss.kd_teacher: {kd_teacher!r} is a directory and loss.kd_teacher_dir is set too; "
                          "use kd_teacher=lm|prefix with kd_teacher_dir")
    return "lm", path


def _lm_dir(spec: str | None, key: str, why: str | None = None, check: bool = True) -> Path | None:
    """`spec` (a dir or `shipped:NAME`) as a Path; a ConfigError naming `key` if it is not a directory."""

    try:
        path = resolve_pretrained(spec)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if check and path is not None and not path.is_dir():
        raise ConfigError(f"{key}: {why or f'{spec!r} is not a directory'}")
    return path
