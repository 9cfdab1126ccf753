"""Build a connector by name (LLaVA `multimodal_projector/builder.py` style): the optional token reduction,
then the registered kind with its own settings. Also the config check for the connector's section."""

from __future__ import annotations

import torch
import torch.nn as nn

from bridgeocr.config import CHECKS, ConnectorConfig, ExperimentConfig
from bridgeocr.errors import ConfigError
from bridgeocr.models.connectors.reduce import Reduce
from bridgeocr.models.connectors.registry import (
    ConnectorBody,
    connector_kind,
    connector_settings,
    resolved_options,
)

__all__ = ["Connector", "build_connector", "check_connector"]


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
    kind = connector_kind(cfg)
    reduce = Reduce(cfg.reduce, cfg.reduce_k, d_enc)
    body = kind.build(connector_settings(cfg), reduce.d_out, d_model)
    if reduce.kind is not None and not getattr(body, "reduces", True):
        raise ConfigError(f"connector {cfg.kind}: token reduction is not supported (one token per CTC step)")
    return Connector(reduce, body, cfg.kind)


def check_connector(cfg: ExperimentConfig) -> None:
    """The config's connector section: a registered kind with settings that can be meant; its options are
    then the kind's settings in full (what a saved config records)."""
    conn = cfg.model.connector
    conn.options = resolved_options(conn)


CHECKS["model.connector"] = check_connector
