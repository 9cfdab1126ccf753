"""The connector registry: a kind is a name, a builder and the dataclass of its own settings.

`@register_connector("name", settings=Settings)` on a `ConnectorBody` subclass (or a factory returning one)
taking `(settings, d_in, d_model)`. The settings dataclass sits in the kind's file, beside the kind; the
config keeps them as `model.connector.options` (written flat in YAML: `model.connector.num_queries=64`) and
`connector_settings` turns them into the kind's typed settings, refusing a value that cannot be meant.
A kind that reads parts of the model when it is built (the CTC ones: the encoder's CTC head and the GPT's
embedding table) names them in `needs` and receives them in `bind`: the model hands over what is asked
for and never looks inside a connector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch.nn as nn
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bridgeocr.config import ConnectorConfig
from bridgeocr.errors import ConfigError

__all__ = ["CONNECTORS", "ConnectorKind", "ConnectorBody", "NoSettings", "register_connector", "connector_names",
           "connector_kind", "connector_settings", "resolved_options", "require"]


class ConnectorBody(nn.Module):
    """What every connector kind is: `forward(tokens [B, N, d_in], mask [B, N]) -> (out [B, M, d_model],
    mask [B, M])`. `needs`: the parts of the model it is built from (names OCRModel provides: `ctc_head`,
    `wte`), handed to `bind` once the model has them. `reduces`: False for a kind that must see every
    encoder token (no `reduce` before it)."""

    needs: tuple[str, ...] = ()
    reduces: bool = True

    def bind(self, **parts: nn.Module) -> None:
        """Receive the parts named in `needs` (nothing to do for a kind that needs none)."""


@dataclass
class NoSettings:
    """The settings of a kind that has none of its own."""


@dataclass(frozen=True)
class ConnectorKind:
    build: Callable[..., ConnectorBody]
    settings: type = NoSettings


CONNECTORS: dict[str, ConnectorKind] = {}


def register_connector(name: str, settings: type = NoSettings):
    def deco(builder):
        CONNECTORS[name] = ConnectorKind(builder, settings)
        return builder
    return deco


def connector_names() -> list[str]:
    return sorted(CONNECTORS)


def require(key: str, ok: bool, requirement: str, value) -> None:
    """A settings check in the config's words: `config: model.connector.KEY must be REQUIREMENT, got VALUE`."""
    if not ok:
        raise ConfigError(f"config: model.connector.{key} must be {requirement}, got {value!r}")


def _declared() -> set[str]:
    return {f.name for kind in CONNECTORS.values() for f in fields(kind.settings)}


def connector_settings(cfg: ConnectorConfig):
    """`cfg.options` as the kind's typed settings (defaults filled in). An option another kind declares is
    left out (a sweep over kinds shares its options); one no kind declares is refused, as is a wrong type."""
    kind = connector_kind(cfg)
    own = {f.name for f in fields(kind.settings)}
    unknown = sorted(set(cfg.options) - _declared())
    if unknown:
        raise ConfigError(f"config: model.connector.{unknown[0]}: no connector kind has this setting "
                          f"({cfg.kind}'s: {', '.join(sorted(own)) or 'none'})")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(kind.settings),
                                                   {k: v for k, v in cfg.options.items() if k in own}))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "options"
        raise ConfigError(f"config: model.connector.{key}: {str(exc).splitlines()[0]}") from None


def connector_kind(cfg: ConnectorConfig) -> ConnectorKind:
    if cfg.kind not in CONNECTORS:
        raise ConfigError(f"config: model.connector.kind must be one of {' | '.join(connector_names())}, "
                          f"got {cfg.kind!r}")
    return CONNECTORS[cfg.kind]


def resolved_options(cfg: ConnectorConfig) -> dict:
    """The kind's settings as the options a saved config records (defaults filled in, others' left out)."""
    return asdict(connector_settings(cfg))
