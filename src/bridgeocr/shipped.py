"""Pretrained parts that ship inside the package, named `shipped:NAME` in configs.

`shipped:encoder_ctc` (CTC-pretrained line encoder), `shipped:gpt_lm` (GPT LM), `shipped:ocr_default`
(a full OCR model, what `recognize` uses without --checkpoint). Each is a directory of JSON +
safetensors with a MODEL_CARD.md saying how it was made.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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


CARD_FILES = ("encoder_card.json", "lm_card.json", "metrics.json", "model_card.json")


# Tensors of fewer elements stay float32. Why: they are the ones whose value matters most and costs least,
# scalars of an imported graph (a Gelu's sqrt(2), a LayerNorm's epsilon: rounded to float16, onnxruntime no
# longer recognises the pattern and runs the PP-OCR trunk 10-20 % slower), BatchNorm statistics, biases, norms.
HALF_FROM = 4096


def shipped_tensor(v: torch.Tensor) -> torch.Tensor:
    """A tensor as the package stores it: float16 when it is a large float tensor, else as it is."""
    return (v.half() if v.is_floating_point() and v.numel() >= HALF_FROM else v).contiguous()


def export_shipped(src: str | Path, dest: str | Path, title: str, how: str) -> Path:
    """Copy a model directory into the package, its large weights as float16 (half the bytes; loaders upcast;
    `shipped_tensor`).

    Keeps config.json, tokenizer.json and the run's card JSON; writes MODEL_CARD.md from `how` (the exact
    commands) and the card's numbers.
    """

    src, dest = Path(src), Path(dest)
    if not (src / "model.safetensors").is_file():
        raise ConfigError(f"{src}: no model.safetensors to ship")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    tensors = {k: shipped_tensor(v) for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(tensors, str(dest / "model.safetensors"),
              metadata={"format": "pt", "dtype": f"float16 (tensors of >= {HALF_FROM} elements)"})
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "training.json",
                 "generation_config.json") + CARD_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    card = {}
    for name in CARD_FILES:
        for folder in (src, src.parent):
            if (folder / name).is_file() and not card:
                card = json.loads((folder / name).read_text())
                if folder != src:
                    shutil.copy2(folder / name, dest / name)
    params = sum(v.numel() for v in tensors.values())
    lines = [f"# {title}", "", how.strip(), "", "## Numbers", "",
             f"- parameters (tensors stored): {params:,} (16-bit floats; tensors of fewer than {HALF_FROM:,} "
             f"elements 32-bit; {(dest / 'model.safetensors').stat().st_size / 2**20:.1f} MiB)"]
    for key, value in card.items():
        if isinstance(value, (int, float, str)) and key not in ("command",):
            lines.append(f"- {key}: {value}")
    if card.get("command"):
        lines += ["", "Command as recorded by the run:", "", "```", str(card["command"]), "```"]
    (dest / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
    return dest
