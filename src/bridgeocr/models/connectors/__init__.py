"""Connectors: visual tokens [B, N, d_enc] + mask -> decoder inputs [B, M, d_model] + mask.

Built by name: `build_connector(cfg, d_enc, d_model)` (builder.py). An optional token reduction
(`reduce=pool|concat`, `reduce_k` neighbours along the width, reduce.py) runs first, then the registered
kind. Every connector is mask-aware: padding a batch (a wider image in it) never changes another item's
output.

One file per family of kinds, each laid out alike (its settings dataclass, its modules, the registered
kind): projectors.py (`linear`, `linear_ln`, `linear_gelu_ln`, `mlp`), qformer.py (`qformer`),
cabstractor.py (`cabstractor`), ctc.py (`ctc_embed`, `ctc_collapse`). A new kind is a new file here with
`@register_connector("name", settings=...)` (registry.py): every module of this package is imported below,
so nothing else has to name it.
"""

import importlib
import pkgutil

from bridgeocr.models.connectors.builder import Connector, build_connector, check_connector
from bridgeocr.models.connectors.reduce import Reduce
from bridgeocr.models.connectors.registry import (
    CONNECTORS,
    ConnectorBody,
    NoSettings,
    connector_names,
    connector_settings,
    register_connector,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["CONNECTORS", "Connector", "ConnectorBody", "NoSettings", "Reduce", "build_connector",
           "check_connector", "connector_names", "connector_settings", "register_connector"]
