"""Python API and the `recognize` command: line images in, text out.

    from bridgeocr import BridgeOCR
    ocr = BridgeOCR.from_pretrained("runs/train/qformer_kd/best")   # or None: the shipped model
    for r in ocr.recognize(["line1.png", "line2.png"]):
        print(r.text, r.confidence)
"""

from __future__ import annotations

import glob
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bridgeocr.errors import BridgeOCRError, DataError

__all__ = ["BridgeOCR", "Recognition", "recognize_cli", "expand_inputs", "IMAGE_EXTENSIONS",
           "DEFAULT_MODEL_DIR"]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".pgm", ".ppm", ".pbm"}
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "resources" / "models" / "ocr_default"


@dataclass
class Recognition:
    text: str
    confidence: float  # mean token log-probability (<= 0); exp() of it is a per-token probability
    source: str | None = None

    @property
    def probability(self) -> float:
        return math.exp(self.confidence) if self.confidence is not None else float("nan")


def _to_pil(image) -> Image.Image:
    """PIL image, path or array (H x W or H x W x C, uint8 0-255, 16-bit 0-65535 or float 0-1; dark ink on
    light paper), as 8-bit grayscale (`data.sample.to_grayscale`)."""
    from bridgeocr.data.sample import to_grayscale

    if isinstance(image, Image.Image):
        return to_grayscale(image)  # 16-bit scaled, transparency onto white paper
    if isinstance(image, (str, Path)):
        from bridgeocr.data.sample import LineSample

        return LineSample(id=str(image), text="", image_path=Path(image)).load_image()
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.dtype != np.uint8:
            arr = np.asarray(arr, dtype=np.float32)
            if arr.size and arr.max() <= 1.0:
                arr = arr * 255.0
            elif arr.size and 255.0 < arr.max() <= 65535.0 and arr.min() >= 0:  # 16-bit values
                arr = arr / 257.0
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise DataError("array", f"expected an H x W (x C) image, got shape {tuple(image.shape)}")
        return to_grayscale(Image.fromarray(arr))
    raise DataError(type(image).__name__, "not an image (expected a PIL image, a path or an array)")


class BridgeOCR:
    """A trained OCRModel with its preprocessing; `recognize` batches lines of similar width."""

    def __init__(self, model, image_cfg, meta: dict | None = None, path: Path | None = None):
        self.model = model
        self.image_cfg = image_cfg
        self.meta = meta or {}
        self.path = path

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | None = None) -> BridgeOCR:
        """A model directory (`save_pretrained` / a run's `best/`); None: the model shipped with bridgeocr."""
        from bridgeocr.eval.evaluate import load_checkpoint

        if path is None:
            if not (DEFAULT_MODEL_DIR / "config.json").is_file():
                raise BridgeOCRError(f"no model shipped with this install ({DEFAULT_MODEL_DIR} is missing); "
                                     "pass a checkpoint directory (e.g. --checkpoint runs/train/NAME/best)")
            path = DEFAULT_MODEL_DIR
        else:
            from bridgeocr.shipped import resolve_pretrained

            path = resolve_pretrained(path)
        model, image_cfg, meta = load_checkpoint(path, device=device)
        return cls(model, image_cfg, meta, Path(path))

    @property
    def device(self) -> torch.device:
        from bridgeocr.eval.evaluate import model_device

        return model_device(self.model)

    def _batches(self, tensors: list[torch.Tensor], batch_size: int):
        """Indices sorted by width, cut into batches -> (indices, images [B,1,H,W], image_mask [B,W])."""
        mult = max(1, int(self.image_cfg.width_multiple))
        order = sorted(range(len(tensors)), key=lambda i: tensors[i].shape[-1])
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start: start + batch_size]
            h = tensors[idx[0]].shape[1]
            width = max(t.shape[-1] for t in (tensors[i] for i in idx))
            width = max(mult, -(-width // mult) * mult)
            images = torch.zeros(len(idx), 1, h, width)
            mask = torch.zeros(len(idx), width, dtype=torch.bool)
            for j, i in enumerate(idx):
                w = tensors[i].shape[-1]
                images[j, :, :, :w] = tensors[i]
                mask[j, :w] = True
            yield idx, images, mask

    def decode(self, images, image_mask, beam: int | None = None,
               decoding: str | None = None) -> list[tuple[str, float]]:
        """One padded batch -> [(text, confidence)]: `decoding` gpt (greedy / beam), ctc (the encoder's CTC
        head) or joint (both); None follows the model's `decoding` setting."""
        return [(h.text, float(h.confidence))
                for h in self.model.read(images, image_mask, beam=beam, decoding=decoding)]

    @torch.no_grad()
    def recognize(self, images, beam: int | None = None, batch_size: int = 32,
                  decoding: str | None = None) -> list[Recognition]:
        """Transcribe line images (PIL images, paths or arrays; one or a list), in input order."""
        from bridgeocr.data.preprocess import preprocess_image

        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        tensors = [preprocess_image(_to_pil(im), self.image_cfg) for im in items]
        results: list[Recognition | None] = [None] * len(items)
        dev = self.device
        for idx, batch, mask in self._batches(tensors, batch_size):
            decoded = self.decode(batch.to(dev), mask.to(dev), beam=beam, decoding=decoding)
            for i, (text, conf) in zip(idx, decoded):
                src = str(items[i]) if isinstance(items[i], (str, Path)) else None
                results[i] = Recognition(text, conf, src)
        return results[0:1] if single else results  # type: ignore[return-value]



def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their images, sorted) and glob patterns -> (paths, problems)."""
    paths: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                problems.append(f"{item}: no images in this folder")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        elif glob.has_magic(item):
            found = sorted(Path(q) for q in glob.glob(item, recursive=True)
                           if Path(q).is_file() and Path(q).suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                problems.append(f"{item}: no images match")
            paths.extend(found)
        else:
            problems.append(f"{item}: no such file or directory")
    return paths, problems


def _format(path: str, r: Recognition, fmt: str) -> str:
    if fmt == "tsv":
        text = r.text.replace("\t", " ").replace("\n", " ")
        return f"{path}\t{text}\t{r.confidence:.4f}"
    if fmt == "jsonl":
        return json.dumps({"path": path, "text": r.text, "confidence": round(r.confidence, 6)},
                          ensure_ascii=False)
    return f"{path}: {r.text} ({r.confidence:.3f})"


def recognize_cli(inputs, checkpoint, beam, batch_size, format, decoding) -> int:
    """Print one result per readable image; unreadable ones -> `error: FILE: ...` on stderr, exit 1."""
    from bridgeocr.data.preprocess import preprocess_image

    fmt = format
    paths, problems = expand_inputs(list(inputs))
    for msg in problems:
        print(f"error: {msg}", file=sys.stderr, flush=True)
    if not paths:
        return 1
    ocr = BridgeOCR.from_pretrained(checkpoint)
    failed = bool(problems)
    batch_size = max(1, int(batch_size))
    if fmt == "tsv":
        print("path\ttext\tconfidence", flush=True)
    # read in chunks (bounded memory); a bad file is reported and skipped, the rest still transcribed
    chunk = max(batch_size, 256)
    for start in range(0, len(paths), chunk):
        good, tensors = [], []
        for p in paths[start: start + chunk]:
            try:
                tensors.append(preprocess_image(_to_pil(p), ocr.image_cfg))
                good.append(p)
            except DataError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                failed = True
            except Exception as exc:  # e.g. decompression bombs
                print(f"error: {p}: unreadable image ({type(exc).__name__})", file=sys.stderr, flush=True)
                failed = True
        results: list[Recognition | None] = [None] * len(good)
        dev = ocr.device
        with torch.no_grad():
            for idx, batch, mask in ocr._batches(tensors, batch_size):
                decoded = ocr.decode(batch.to(dev), mask.to(dev), beam=beam, decoding=decoding)
                for i, (text, conf) in zip(idx, decoded):
                    results[i] = Recognition(text, conf, str(good[i]))
        for p, r in zip(good, results):
            print(_format(str(p), r, fmt), flush=True)
    return 1 if failed else 0
