"""Token-wise projections: `linear`, `linear_ln` (the seed's "without GELU"), `linear_gelu_ln` (the seed's
setting 1), `mlp` (Linear-GELU-Linear, LLaVA-1.5). One output token per input token; no settings."""

from __future__ import annotations

import torch.nn as nn

from bridgeocr.models.connectors.registry import ConnectorBody, register_connector


class Projector(ConnectorBody):
    """A token-wise projection; the output mask is the input mask."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.proj = nn.Sequential(*layers)

    def forward(self, x, mask):
        return self.proj(x), mask


@register_connector("linear")
def _linear(settings, d_in: int, d_model: int):
    return Projector([nn.Linear(d_in, d_model)])


@register_connector("linear_ln")
def _linear_ln(settings, d_in: int, d_model: int):
    return Projector([nn.Linear(d_in, d_model), nn.LayerNorm(d_model)])


@register_connector("linear_gelu_ln")
def _linear_gelu_ln(settings, d_in: int, d_model: int):
    return Projector([nn.Linear(d_in, d_model), nn.GELU(), nn.LayerNorm(d_model)])


@register_connector("mlp")
def _mlp(settings, d_in: int, d_model: int):
    return Projector([nn.Linear(d_in, d_model), nn.GELU(), nn.Linear(d_model, d_model)])
