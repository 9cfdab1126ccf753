"""Checkpoint helpers: atomic directory writes and optimizer state as safetensors + JSON (no pickles)."""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bridgeocr.errors import BridgeOCRError
from bridgeocr.files import read_json, write_json

__all__ = ["atomic_dir", "save_optimizer", "load_optimizer", "write_json", "read_json", "guard_run_dir",
           "remove_path", "disk_full"]

# what a finished or started run leaves in its directory (OCR run, `encoder train`, `lm train`)
RUN_ARTEFACTS = ("metrics.json", "best", "last", "last.ckpt", "model.safetensors", "encoder_card.json")
# what `--overwrite` removes besides them: the old run's logs and outputs, so nothing of it mixes with the new
RUN_OUTPUTS = ("metrics.csv", "csv", "tb", "predictions_val.tsv", "predictions_test.tsv", "loss_gap.json",
               "loss_gap_samples.csv", "config.json", "config.yaml", "tokenizer.json", "training.json",
               "generation_config.json", "tokenizer_config.json", "special_tokens_map.json", "MODEL_CARD.md")


def atomic_dir(final: str | Path, write: Callable[[Path], None], keep_previous: Path | None = None) -> Path:
    """Call `write(tmp)` on a fresh temporary directory beside `final`, fsync it, then swap it into place.

    A crash, a kill or a full disk while writing leaves the previous `final` intact (readers never see half a
    checkpoint) and no temporary directory behind (a killed writer's is removed by the next write).
    `keep_previous`: move the replaced `final` there instead of deleting it (a fallback for resuming).
    A full disk is one BridgeOCRError naming `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{time.time_ns()}"
    old = final.parent / f".{final.name}.old-{os.getpid()}-{time.time_ns()}"
    try:
        tmp.mkdir()
        write(tmp)
        _fsync_tree(tmp)
        if final.exists():
            if keep_previous is not None:
                remove_path(keep_previous)
                os.replace(final, keep_previous)
            else:
                os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except Exception as exc:
        if disk_full(exc):
            raise BridgeOCRError(f"{final}: no space left on the device while writing it (what was written "
                                 "before is kept)") from None
        raise
    finally:
        remove_path(tmp)
        remove_path(old)
    return final


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or quota) is full: an OSError, or safetensors' own I/O error."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(exc)
    return f"os error {errno.ENOSPC})" in text or f"os error {errno.EDQUOT})" in text


def remove_path(path: Path, strict: bool = False) -> None:
    """Remove a file, link or directory tree if it is there (a link is removed, never followed).
    `strict`: a tree that cannot be removed is an error (else best effort, as for temporary directories)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=not strict)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


def _remove_orphans(final: Path) -> None:
    """Temporary directories a killed writer of `final` left (its pid no longer runs)."""
    for p in final.parent.glob(f".{final.name}.tmp-*"):
        pid = p.name.rsplit(".tmp-", 1)[-1].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            remove_path(p)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(d)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory
    finally:
        os.close(fd)


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


def guard_run_dir(run_dir: str | Path, resume: bool, overwrite: bool, resume_asked: bool = False) -> None:
    """Never replace a run by accident: a directory holding a run is refused unless the run is continued
    (`resume`: there is a state to continue from) or `--overwrite` is given, which removes the old run's files
    (and only those) first. `resume_asked`: --resume was given but there is nothing to continue from."""
    if int(os.environ.get("LOCAL_RANK", 0) or 0) or int(os.environ.get("NODE_RANK", 0) or 0):
        return  # a DDP process Lightning started: the first process decided before it
    run_dir = Path(run_dir)
    found = [name for name in RUN_ARTEFACTS if (run_dir / name).exists()]
    if not found or resume:
        return
    if not overwrite and resume_asked:
        raise BridgeOCRError(f"{run_dir}: holds a run ({', '.join(found)}) without a state to resume from; "
                             "replace it with --overwrite")
    if not overwrite:
        raise BridgeOCRError(f"{run_dir}: holds a run already ({', '.join(found)}); continue it with --resume, "
                             "or replace it with --overwrite")
    for name in RUN_ARTEFACTS + RUN_OUTPUTS:
        remove_path(run_dir / name, strict=True)
    print(f"--overwrite: removed the run in {run_dir}", flush=True)
