"""Checkpoint helpers: atomic directory writes and optimizer state as safetensors + JSON (no pickles)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["atomic_dir", "save_optimizer", "load_optimizer", "write_json", "read_json"]


def atomic_dir(final: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a fresh temporary directory beside `final`, then swap it into place.

    A crash while writing leaves the previous `final` intact (readers never see half a checkpoint).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{time.time_ns()}"
    old = final.parent / f".{final.name}.old-{os.getpid()}-{time.time_ns()}"
    try:
        tmp.mkdir()
        write(tmp)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        with suppress(FileNotFoundError):
            shutil.rmtree(tmp)
        with suppress(FileNotFoundError):
            shutil.rmtree(old)
    return final


def write_json(path: str | Path, data) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_optimizer(optimizer: torch.optim.Optimizer, path: str | Path, extra: dict | None = None) -> None:
    """Optimizer state tensors -> `path` (safetensors); param_groups and scalars -> `path`.json."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    path = Path(path)
    save_file(tensors, str(path))
    write_json(path.with_suffix(".json"), {"param_groups": sd["param_groups"], "scalars": scalars,
                                           **({"extra": extra} if extra else {})})


def load_optimizer(optimizer: torch.optim.Optimizer, path: str | Path) -> dict:
    """Inverse of save_optimizer; returns the saved `extra` dict. Tensors go to each param's device."""
    path = Path(path)
    meta = read_json(path.with_suffix(".json"))
    tensors = load_file(str(path))
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, vals in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(vals)
    current = optimizer.state_dict()
    groups = meta["param_groups"]
    if len(groups) != len(current["param_groups"]):
        raise ValueError(f"{path}: optimizer has {len(current['param_groups'])} groups, saved {len(groups)}")
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return meta.get("extra", {})
