"""Checks made before long work starts, so that it does not fail (or lose its result) at the end."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bridgeocr.errors import BridgeOCRError

MiB = 1 << 20
TRAIN_NEED = 64 * MiB  # checkpoints (weights + optimiser state) of the small models, logs, metrics
OUTPUT_NEED = 4 * MiB  # predictions and metrics of a decode


def _size(n: int) -> str:
    return f"{n / MiB:.0f} MiB" if n >= MiB else f"{n} bytes"


def ensure_writable(directory: str | Path, need_bytes: int = OUTPUT_NEED) -> Path:
    """Create `directory`, write + fsync + delete a probe file in it and check that `need_bytes` are free;
    BridgeOCRError("<dir>: cannot write here (...)") otherwise. Returns the directory."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise BridgeOCRError(f"{directory}: cannot write here (a file, not a directory)")
    probe = directory / f".bridgeocr-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"bridgeocr write probe\n")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
        raise BridgeOCRError(f"{directory}: cannot write here ({exc.strerror or type(exc).__name__})") from None
    if free < need_bytes:
        raise BridgeOCRError(f"{directory}: cannot write here (only {_size(free)} free, need {_size(need_bytes)})")
    return directory
