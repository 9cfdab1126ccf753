"""JSON files every layer writes (metrics, cards, run state): written to a temporary name and renamed into
place, so that a reader never sees half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["write_json", "read_json"]


def write_json(path: str | Path, data) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))
