"""Loading a model directory to read with: an OCRModel (or an encoder + CTC head alone) with the preprocessing
it was trained with. Where the image settings come from, in order: the model's own config.json ("image"), the
trainer's training.json beside it (older directories), else defaults from the encoder's patch size: never
guessed from the data."""

from __future__ import annotations

from pathlib import Path

import torch

from bridgeocr.config import ImageConfig
from bridgeocr.errors import BridgeOCRError, ConfigError
from bridgeocr.models.encoder import is_encoder_dir
from bridgeocr.models.encoder_reader import EncoderReader, encoder_image_config
from bridgeocr.models.model_dir import check_tokenizer_matches, read_config_json
from bridgeocr.models.ocr import OCRModel, image_config_from
from bridgeocr.shipped import resolve_pretrained

__all__ = ["load_checkpoint", "image_config_for", "reading_image_config", "resolve_device", "TRAINING_META"]

TRAINING_META = "training.json"  # written by the trainer beside an OCRModel's own files


def load_checkpoint(path: str | Path, device: str | torch.device | None = None, widen: float | None = None):
    """-> (model, its ImageConfig, training metadata (epoch, step, ...) or {}), the model on `device` in eval mode.
    `widen`: its `model.widen_crowded` for this session (None: its own; models/widening.py).

    A directory that does not match is refused with one BridgeOCRError naming the file (models/model_dir.py):
    no tokenizer.json (its output could not be turned into text), a tokenizer of another size than the
    model's vocabulary or CTC head, a broken config.json / training.json, a truncated or corrupt
    model.safetensors, missing / extra / wrong-shape tensors."""
    path = resolve_pretrained(path)  # a directory, or shipped:NAME
    if not path.is_dir() or not (path / "config.json").is_file():
        raise BridgeOCRError(f"{path}: not a model checkpoint directory (no config.json)")
    if not (path / "tokenizer.json").is_file():
        raise BridgeOCRError(f"{path}: no tokenizer.json, so the model's output cannot be turned into text "
                             "(copy the tokenizer the model was trained with into the directory)")
    device = resolve_device(device)
    if is_encoder_dir(path):  # an encoder + CTC head alone: reads with greedy CTC
        reader = _widen(EncoderReader.from_pretrained(path), widen)
        classes = reader.ctc_head.vocab_size
        check_tokenizer_matches(reader.tokenizer, classes, path / "tokenizer.json", exact=classes,
                                exact_what="the encoder's CTC head has {n} classes")
        return reader.to(device).eval(), encoder_image_config(reader.encoder), {}
    model = _widen(OCRModel.from_pretrained(path), widen)
    meta = read_config_json(path / TRAINING_META) if (path / TRAINING_META).is_file() else {}
    image_cfg = image_config_for(model, meta)
    model.to(device).eval()
    return model, image_cfg, meta


def _widen(model, widen: float | None):
    if widen is not None:
        model.cfg.widen_crowded = float(widen)
    return model


def image_config_for(model, meta: dict | None = None) -> ImageConfig:
    """The preprocessing a model reads with: its own (config.json), else the training metadata's, else
    defaults with the encoder's patch height and width."""
    return reading_image_config(model.image_config, (meta or {}).get("image"), model.image_height,
                                model.cfg.encoder.patch_width)


def reading_image_config(own: ImageConfig | None, trained: dict | None, image_height: int,
                         patch_width: int) -> ImageConfig:
    """`image_config_for`'s rule on its parts (also for tools that edit a model directory's JSON without
    building the model): `own` (config.json "image"), else `trained` (training.json "image"), else defaults
    at `image_height` with widths in multiples of `patch_width`."""
    if own is not None:
        return own
    from_meta = image_config_from(trained)
    if from_meta is not None:
        return from_meta
    return ImageConfig(height=int(image_height), width_multiple=int(patch_width))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Where a model runs: None / "auto" -> the GPU when there is one, else the CPU; a CUDA device asked for
    on a machine without one is a ConfigError, not a crash later."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here")
    return device
