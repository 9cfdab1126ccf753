"""The optimizer parameter groups of every training stage (`train`, `lm train`, `encoder train`, the baseline):
one place that says which weights get which learning rate and which decay.

Each named part of the model (`group_of(parameter name)`) gets its own learning rate; within a part, matrices
decay and vectors (biases, norms, scales) do not, unless `decay_vectors`. Frozen parameters are left out; a
tied parameter (the GPT's embedding and LM head) appears once. Groups are named `part` and `part/no_decay`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from bridgeocr.errors import ConfigError

__all__ = ["param_groups"]


def param_groups(model: nn.Module, lrs: dict[str, float], group_of: Callable[[str], str] | None = None,
                 weight_decay: float = 0.01, decay_vectors: bool = False) -> list[dict]:
    """-> AdamW parameter groups, part by part in the order of `lrs` (a one-part model: `{"all": lr}`)."""
    group_of = group_of or (lambda name: next(iter(lrs)))
    groups = []
    for part, lr in lrs.items():
        decay, no_decay = [], []
        for name, p in model.named_parameters():  # shared tensors once (named_parameters drops repeats)
            if p.requires_grad and group_of(name) == part:
                (decay if p.ndim >= 2 or decay_vectors else no_decay).append(p)
        for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, "/no_decay")):
            if params:
                groups.append({"params": params, "lr": lr, "initial_lr": lr, "weight_decay": wd,
                               "name": part + suffix})
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen")
    return groups
