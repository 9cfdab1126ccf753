"""Python API and the `recognize` command: line images in, text out.

    from bridgeocr import BridgeOCR
    ocr = BridgeOCR.from_pretrained("runs/train/qformer_kd/best")   # or None: the shipped model
    for r in ocr.recognize(["line1.png", "line2.png"]):
        print(r.text, r.confidence)
"""

from __future__ import annotations

import glob
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bridgeocr.errors import BridgeOCRError, DataError
from bridgeocr.preflight import ensure_writable

__all__ = ["BridgeOCR", "Recognition", "recognize_cli", "expand_inputs", "IMAGE_EXTENSIONS",
           "DEFAULT_MODEL_DIR", "iter_inputs"]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".pgm", ".ppm", ".pbm"}
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "resources" / "models" / "ocr_default"
WINDOW_BATCHES = 4  # recognize reads this many batches of images at a time (width-bucketed within them)


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

    def recognize(self, images, beam: int | None = None, batch_size: int = 32,
                  decoding: str | None = None) -> list[Recognition]:
        """Transcribe line images (PIL images, paths or arrays; one or a list), in input order."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        out = list(self.iter_recognize(items, beam=beam, batch_size=batch_size, decoding=decoding,
                                       window=max(1, len(items))))
        return out[0:1] if single else out

    def iter_recognize(self, images: Iterable, beam: int | None = None, batch_size: int = 32,
                       decoding: str | None = None, window: int | None = None,
                       on_error: Callable[[object, Exception], None] | None = None) -> Iterator[Recognition]:
        """Stream: line images (any iterable, read lazily) -> Recognition, in input order, as batches finish.

        At most `window` images (default `WINDOW_BATCHES` batches) are read and held at a time; within a
        window lines are batched by width, the batch holding the earliest line not yet yielded goes first,
        and after each batch every line whose predecessors are all done is yielded. An image that cannot
        be read goes to `on_error(item, exc)` and is skipped (without `on_error` the error is raised).
        """
        batch_size = max(1, int(batch_size))
        window = max(batch_size, int(window or WINDOW_BATCHES * batch_size))
        it = iter(images)
        while True:
            chunk = list(itertools.islice(it, window))
            if not chunk:
                return
            yield from self._recognize_window(chunk, beam, batch_size, decoding, on_error)

    def _recognize_window(self, chunk: list, beam, batch_size: int, decoding, on_error):
        from bridgeocr.data.preprocess import preprocess_image

        items, tensors = [], []
        for item in chunk:
            try:
                tensors.append(preprocess_image(_to_pil(item), self.image_cfg))
            except Exception as exc:  # DataError, or e.g. a decompression bomb
                if on_error is None:
                    raise
                on_error(item, exc)
                continue
            items.append(item)
        if not items:
            return
        batches = sorted(self._batches(tensors, batch_size), key=lambda b: min(b[0]))
        results: list[Recognition | None] = [None] * len(items)
        done = 0  # results[:done] are yielded
        dev = self.device
        for idx, batch, mask in batches:
            with torch.no_grad():
                decoded = self.decode(batch.to(dev), mask.to(dev), beam=beam, decoding=decoding)
            for i, (text, conf) in zip(idx, decoded):
                src = str(items[i]) if isinstance(items[i], (str, Path)) else None
                results[i] = Recognition(text, conf, src)
            while done < len(items) and results[done] is not None:
                yield results[done]
                results[done] = None  # drop it once handed on
                done += 1


def iter_inputs(inputs: Iterable[str], recursive: bool = False,
                on_problem: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Files, folders (their images, sorted; with `recursive` also their subfolders', depth first in name
    order) and glob patterns -> image paths, lazily, in the order given. Each input that yields nothing
    goes to `on_problem` as one message."""
    for item in inputs:
        p = Path(item)
        found = 0
        if p.is_dir():
            for q in (_walk_images(p) if recursive else _folder_images(p)):
                found += 1
                yield q
            if not found:
                _problem(on_problem, f"{item}: no images in this folder" + (" or below" if recursive else ""))
        elif p.is_file():
            yield p
        elif glob.has_magic(item):
            for q in sorted(Path(q) for q in glob.glob(item, recursive=True)
                            if Path(q).is_file() and Path(q).suffix.lower() in IMAGE_EXTENSIONS):
                found += 1
                yield q
            if not found:
                _problem(on_problem, f"{item}: no images match")
        else:
            _problem(on_problem, f"{item}: no such file or directory")


def _problem(on_problem, msg: str) -> None:
    if on_problem is not None:
        on_problem(msg)


def _folder_images(folder: Path) -> list[Path]:
    return sorted(q for q in folder.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)


def _walk_images(folder: Path, seen: set | None = None) -> Iterator[Path]:
    """The images in `folder` and below, sorted by name at each level (files and folders interleaved,
    as sorting the relative paths would); a symlinked folder already visited is not entered again."""
    seen = set() if seen is None else seen
    try:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for q in entries:
        if q.is_dir():
            yield from _walk_images(q, seen)
        elif q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS:
            yield q


def expand_inputs(inputs: list[str], recursive: bool = False) -> tuple[list[Path], list[str]]:
    """Files, folders (their images, sorted) and glob patterns -> (paths, problems)."""
    problems: list[str] = []
    paths = list(iter_inputs(inputs, recursive, problems.append))
    return paths, problems


def _format(path: str, r: Recognition, fmt: str) -> str:
    if fmt == "tsv":
        text = r.text.replace("\t", " ").replace("\r", " ").replace("\n", " ")  # one row per image
        return f"{path}\t{text}\t{r.confidence:.4f}"
    if fmt == "jsonl":
        return json.dumps({"path": path, "text": r.text, "confidence": round(r.confidence, 6)},
                          ensure_ascii=False)
    text = r.text.replace("\r", " ").replace("\n", " ")  # one line per image
    return f"{path}: {text} ({r.confidence:.3f})"


def recognize_cli(inputs, checkpoint, beam, batch_size, format, decoding, recursive=False, out=None) -> int:
    """Stream one result line per readable image, in input order, to stdout or `out`, each line written and
    flushed as its batch finishes (a Ctrl-C or a kill leaves only whole lines). Unreadable images and inputs
    that match nothing -> one `error: ...` line each on stderr, skipped; exit 1 if there was any. Ctrl-C:
    `interrupted: N lines written` on stderr, exit 130."""
    fmt = format
    failed = False

    def problem(msg: str) -> None:
        nonlocal failed
        failed = True
        print(f"error: {msg}", file=sys.stderr, flush=True)

    paths = iter_inputs(list(inputs), recursive=bool(recursive), on_problem=problem)
    first = next(paths, None)  # nothing to read: no model is loaded
    if first is None:
        return 1
    if out:  # a full or read-only disk is found now, not after the decode
        ensure_writable(Path(out).parent)
    ocr = BridgeOCR.from_pretrained(checkpoint)
    skipped = 0

    def bad_image(path, exc: Exception) -> None:
        nonlocal skipped
        skipped += 1
        problem(str(exc) if isinstance(exc, DataError) else f"{path}: unreadable image ({type(exc).__name__})")

    try:
        stream = open(out, "w", encoding="utf-8") if out else sys.stdout
    except OSError as exc:
        raise BridgeOCRError(f"{out}: cannot write the results ({exc.strerror or type(exc).__name__})") from None
    where = f" to {out}" if out else ""
    written = 0
    try:
        if fmt == "tsv":
            _write_line(stream, "path\ttext\tconfidence")
        for r in ocr.iter_recognize(itertools.chain([first], paths), beam=beam, batch_size=batch_size,
                                    decoding=decoding, on_error=bad_image):
            _write_line(stream, _format(r.source, r, fmt))
            written += 1
    except KeyboardInterrupt:
        try:
            stream.flush()  # a line cut by the signal mid-write is completed, never left half
        except Exception:
            pass
        print(f"interrupted: {written} lines written{where}", file=sys.stderr, flush=True)
        return 130
    finally:
        if out:
            stream.close()
    if skipped:
        print(f"{written} lines written{where}, {skipped} unreadable image{'s' * (skipped != 1)} skipped",
              file=sys.stderr, flush=True)
    return 1 if failed else 0


def _write_line(stream, line: str) -> None:
    """One whole line, then flush: what a reader (or a kill) sees ends at a line end."""
    stream.write(line + "\n")
    stream.flush()
