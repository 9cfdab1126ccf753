"""Pretrained parts that ship inside the package, named `shipped:NAME` in configs.

`shipped:encoder_ctc` (CTC-pretrained line encoder), `shipped:gpt_lm` (GPT LM), `shipped:ocr_default`
(a full OCR model, what `recognize` uses without --checkpoint). Each is a directory of JSON +
safetensors with a MODEL_CARD.md saying how it was made.
"""

from __future__ import annotations

from pathlib import Path

from bridgeocr.errors import ConfigError

SHIPPED_DIR = Path(__file__).resolve().parent / "resources" / "models"
PREFIX = "shipped:"


def shipped_names() -> list[str]:
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if p.is_dir()) if SHIPPED_DIR.is_dir() else []


def resolve_pretrained(path: str | Path | None) -> Path | None:
    """`shipped:NAME` -> the packaged directory; other paths pass through. None stays None."""
    if path is None:
        return None
    text = str(path)
    if not text.startswith(PREFIX):
        return Path(text)
    name = text[len(PREFIX):]
    target = SHIPPED_DIR / name
    if not target.is_dir():
        known = ", ".join(shipped_names()) or "none in this install"
        raise ConfigError(f"{text}: no shipped model of that name (shipped: {known})")
    return target
