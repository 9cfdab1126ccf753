"""The trainer's resume state (`last.ckpt/`) as safetensors + JSON: never a pickle, never half written.

Lightning's own checkpoint is a `torch.save` pickle written through a temporary file that is *copied* when
the run directory is on another filesystem than `$TMPDIR`: a kill or a full disk left it 0 bytes or
truncated and `--resume` then failed forever. `SafeCheckpointIO` (a Lightning CheckpointIO plugin) writes
the same dict as a directory instead: every tensor in `tensors.safetensors`, everything else in
`state.json` (tensors as `{"__tensor__": key}`, tuples and non-string keys tagged so they come back as
they were). The directory is written beside the old one, fsynced and renamed into place
(`checkpoint.atomic_dir`); the one it replaces is kept as `last.ckpt.prev/`, so a damaged `last.ckpt`
(checked on load) falls back to the one before, and says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bridgeocr.errors import BridgeOCRError
from bridgeocr.train.checkpoint import atomic_dir, remove_path

__all__ = ["SafeCheckpointIO", "TensorSink", "encode_state", "decode_state", "resume_point"]

TENSORS, STATE = "tensors.safetensors", "state.json"
TAGS = {"__tensor__", "__tuple__", "__items__"}  # a one-key dict with one of these is an encoded value


class TensorSink:
    """The tensors of one checkpoint by key: the same view gets the same key (tied weights are stored once),
    another view of storage already stored gets a copy (safetensors holds no shared memory)."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self._views: dict[tuple, str] = {}

    def add(self, t: torch.Tensor) -> str:
        t = t.detach()
        storage = (t.untyped_storage().data_ptr(), t.device)
        view = (*storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in self._views:
            return self._views[view]
        shared = any(v[:2] == storage for v in self._views)
        key = self._views[view] = f"t{len(self._views)}"
        t = t.cpu()
        self.tensors[key] = t.clone() if shared or not t.is_contiguous() else t
        return key


def encode_state(obj: Any, sink: TensorSink) -> Any:
    """A JSON-able copy of `obj`, its tensors moved into `sink`."""
    if torch.is_tensor(obj):
        return {"__tensor__": sink.add(obj)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not TAGS & obj.keys():
            return {k: encode_state(v, sink) for k, v in obj.items()}
        return {"__items__": [[encode_state(k, sink), encode_state(v, sink)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, sink) for v in obj]}
    if isinstance(obj, list):
        return [encode_state(v, sink) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (tensors, numbers, text only)")


def decode_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj and len(obj) == 1:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj and len(obj) == 1:
        return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj and len(obj) == 1:
        return {_hashable(decode_state(k, tensors)): decode_state(v, tensors) for k, v in obj["__items__"]}
    return {k: decode_state(v, tensors) for k, v in obj.items()}


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


def _read(path: Path) -> dict:
    """A checkpoint directory -> its dict; ValueError saying what is wrong."""
    if not path.is_dir():
        raise ValueError("not a checkpoint directory (a pickle from an older bridgeocr, or damaged)")
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
        tensors = load_file(str(path / TENSORS))
    except FileNotFoundError as exc:
        raise ValueError(f"{Path(exc.filename).name} is missing") from None
    except (OSError, ValueError, SafetensorError) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    try:
        return decode_state(state, tensors)
    except KeyError as exc:
        raise ValueError(f"{STATE} names a tensor {exc} that {TENSORS} does not hold") from None


def previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def resume_point(path: str | Path) -> Path | None:
    """The checkpoint a resume reads: `path` if it is there, else the one kept before it, else None."""
    path = Path(path)
    for p in (path, previous(path)):
        if p.exists():
            return p
    return None


class SafeCheckpointIO(CheckpointIO):
    """Lightning's checkpoint dict <-> a `last.ckpt/` directory of safetensors + JSON (module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        sink = TensorSink()
        state = encode_state(checkpoint, sink)

        def write(tmp: Path) -> None:
            save_file(sink.tensors, str(tmp / TENSORS))
            (tmp / STATE).write_text(json.dumps(state), encoding="utf-8")

        if path.is_file():  # a pickle from an older bridgeocr: replaced by the first directory written
            path.unlink()
        atomic_dir(path, write, keep_previous=previous(path))

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        path = Path(path)
        problems = []
        for p in (path, previous(path)):
            if not p.exists():
                continue
            try:
                checkpoint = _read(p)
            except ValueError as exc:
                problems.append(f"{p}: {exc}")
                continue
            if problems:
                print(f"{problems[0]}; resuming from the checkpoint before it, {p} (step "
                      f"{checkpoint.get('global_step', '?')})", flush=True)
            return checkpoint
        raise BridgeOCRError("; ".join(problems) if problems else f"{path}: no checkpoint to resume from")

    def remove_checkpoint(self, path) -> None:
        remove_path(Path(path))
