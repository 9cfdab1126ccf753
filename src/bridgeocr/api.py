"""Python API and the `recognize` command: line images in, text out; or pages with their PAGE / ALTO
layout in, the same PAGE / ALTO with the transcriptions out (`recognize page.jpg --layout page.xml
--format page`, see `recognize_layout` and data/layout.py).

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
from tqdm import tqdm

from bridgeocr.data.layout import (
    OUTPUT_SUFFIX,
    LayoutError,
    LayoutPage,
    page_image_size,
    page_samples,
    page_stem,
    parse_layout,
    write_page_result,
)
from bridgeocr.data.preprocess import WidthBucketSampler, pad_images, preprocess_image
from bridgeocr.data.sample import LineSample, to_grayscale
from bridgeocr.errors import BridgeOCRError, DataError
from bridgeocr.eval.evaluate import model_device
from bridgeocr.models.load import load_checkpoint
from bridgeocr.preflight import ensure_writable
from bridgeocr.shipped import resolve_pretrained

__all__ = ["BridgeOCR", "Recognition", "recognize_cli", "recognize_layout", "expand_inputs", "IMAGE_EXTENSIONS",
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

    if isinstance(image, Image.Image):
        return to_grayscale(image)  # 16-bit scaled, transparency onto white paper

    if isinstance(image, LineSample):  # e.g. a line cut from a page (data/layout.py)
        return image.load_image()
    if isinstance(image, (str, Path)):
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
    def from_pretrained(cls, path: str | Path | None = None, device: str | None = None,
                        widen: float | None = None) -> BridgeOCR:
        """A model directory (`save_pretrained` / a run's `best/`); None: the model shipped with bridgeocr.
        `widen`: its `model.widen_crowded` (None: its own; models/widening.py)."""

        if path is None:
            if not (DEFAULT_MODEL_DIR / "config.json").is_file():
                raise BridgeOCRError(f"no model shipped with this install ({DEFAULT_MODEL_DIR} is missing); "
                                     "pass a checkpoint directory (e.g. --checkpoint runs/train/NAME/best)")
            path = DEFAULT_MODEL_DIR
        else:
            path = resolve_pretrained(path)
        model, image_cfg, meta = load_checkpoint(path, device=device, widen=widen)
        return cls(model, image_cfg, meta, Path(path))

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def _batches(self, tensors: list[torch.Tensor], batch_size: int):
        """Lines batched by width as evaluation batches them (WidthBucketSampler in width order, `pad_images`)
        -> (indices, images [B,1,H,W], image_mask [B,W])."""
        for idx in WidthBucketSampler([t.shape[-1] for t in tensors], max(1, batch_size), shuffle=False):
            yield (idx, *pad_images([tensors[i] for i in idx], self.image_cfg.width_multiple))

    def decode(self, images, image_mask, beam: int | None = None,
               decoding: str | None = None) -> list[tuple[str, float]]:
        """One padded batch -> [(text, confidence)]: `decoding` gpt (greedy / beam), ctc (the encoder's CTC
        head), joint (both) or fast (joint at beam 1, the speed preset); None follows the model's setting."""
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
        """Stream: line images (any iterable, read lazily; PIL images, paths, arrays or `LineSample`s, whose
        id becomes the result's `source`) -> Recognition, in input order, as batches finish.

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
                item = items[i]
                src = str(item) if isinstance(item, (str, Path)) else item.id if isinstance(item, LineSample) \
                    else None
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


PROGRESS_MIN_LINES = 100  # recognize shows a progress bar on stderr when it is a TTY or above this many lines


def _progress(total: int | None, desc: str):
    """A tqdm bar on stderr when stderr is a terminal or there are more than PROGRESS_MIN_LINES lines; a
    disabled one (no output at all) otherwise."""

    tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
    show = tty or (total is not None and total > PROGRESS_MIN_LINES)
    return tqdm(total=total, desc=desc, unit="line", file=sys.stderr, disable=not show, dynamic_ncols=True,
                mininterval=0.5 if tty else 10.0)


class _Problems:
    """`problem(msg)`: one `error:` line on stderr (above the progress bar `.bar` once there is one); `.failed`
    once there was any (the command then exits 1)."""

    def __init__(self):
        self.failed = False
        self.bar = None

    def __call__(self, msg: str) -> None:
        self.failed = True
        _say(self.bar, f"error: {msg}")


def _say(bar, msg: str) -> None:
    """One line on stderr, above the progress bar when one is shown."""
    if bar is not None and not bar.disable:
        bar.write(msg, file=sys.stderr)
        sys.stderr.flush()
    else:
        print(msg, file=sys.stderr, flush=True)


def recognize_cli(inputs, checkpoint, beam, batch_size, format, decoding, recursive=False, out=None,
                  layout=None, overwrite=False, widen=None) -> int:
    """Stream one result line per readable image, in input order, to stdout or `out`, each line written and
    flushed as its batch finishes (a Ctrl-C or a kill leaves only whole lines). Unreadable images and inputs
    that match nothing -> one `error: ...` line each on stderr, skipped; exit 1 if there was any. Ctrl-C:
    `interrupted: N lines written` on stderr, exit 130. A progress bar on stderr when it is a terminal or
    there are more than PROGRESS_MIN_LINES images.

    `layout` (with `format` page or alto): the inputs are page images and `layout` their PAGE / ALTO file
    or folder; see `recognize_layout`."""
    if format in ("page", "alto") or layout is not None:
        _check_layout_format(format, layout)
        return recognize_layout(inputs, layout, checkpoint, beam, batch_size, format, decoding, recursive, out,
                                overwrite, widen)
    fmt = format or "text"
    problem = _Problems()
    paths = iter_inputs(list(inputs), recursive=bool(recursive), on_problem=problem)
    first = next(paths, None)  # nothing to read: no model is loaded
    if first is None:
        return 1
    if out:  # a full or read-only disk is found now, not after the decode
        ensure_writable(Path(out).parent)
    ocr = BridgeOCR.from_pretrained(checkpoint, widen=widen)
    skipped = _SkippedImages(problem)
    stream = _open_results(out)
    where = f" to {out}" if out else ""
    bar = problem.bar = _progress(sum(1 for _ in iter_inputs(list(inputs), recursive=bool(recursive))),
                                  "recognize")
    try:
        written, interrupted = _stream_lines(ocr.iter_recognize(itertools.chain([first], paths), beam=beam,
                                                                batch_size=batch_size, decoding=decoding,
                                                                on_error=skipped),
                                             stream, fmt, bar, where)
    finally:
        bar.close()
        if out:
            stream.close()
    if interrupted:
        return 130
    if skipped.count:
        print(f"{written} lines written{where}, {skipped.count} unreadable image{'s' * (skipped.count != 1)} "
              "skipped", file=sys.stderr, flush=True)
    return 1 if problem.failed else 0


def _check_layout_format(fmt, layout) -> None:
    """--format page / alto and --layout go together, and --layout writes nothing but PAGE or ALTO."""
    if layout is None:
        raise BridgeOCRError(f"--format {fmt} needs --layout (the pages' PAGE / ALTO file or folder)")
    if fmt not in ("page", "alto", None):
        raise BridgeOCRError(f"--layout writes PAGE or ALTO: use --format page or --format alto, not {fmt}")


class _SkippedImages:
    """`on_error` for the line reader: counts an unreadable image (`.count`), moves the progress bar past it
    and reports it as one `error:` line."""

    def __init__(self, problem: _Problems):
        self.problem = problem
        self.count = 0

    def __call__(self, path, exc: Exception) -> None:
        self.count += 1
        if self.problem.bar is not None:
            self.problem.bar.update(1)
        self.problem(str(exc) if isinstance(exc, DataError)
                     else f"{path}: unreadable image ({type(exc).__name__})")


def _open_results(out):
    """Where the result lines go: `out` opened for writing (one that cannot be is a clear error), else
    stdout."""
    try:
        return open(out, "w", encoding="utf-8") if out else sys.stdout
    except OSError as exc:
        raise BridgeOCRError(f"{out}: cannot write the results ({exc.strerror or type(exc).__name__})") from None


def _stream_lines(results: Iterable[Recognition], stream, fmt: str, bar, where: str) -> tuple[int, bool]:
    """Write each result as one flushed line (a tsv header first) -> (lines written, interrupted). A Ctrl-C
    completes the line it cut (flush), closes the bar and says how many lines were written."""
    written = 0
    try:
        if fmt == "tsv":
            _write_line(stream, "path\ttext\tconfidence")
        for r in results:
            _write_line(stream, _format(r.source, r, fmt))
            written += 1
            bar.update(1)
    except KeyboardInterrupt:
        try:
            stream.flush()  # a line cut by the signal mid-write is completed, never left half
        except Exception:
            pass
        bar.close()
        print(f"interrupted: {written} lines written{where}", file=sys.stderr, flush=True)
        return written, True
    return written, False


def _layout_files(layout) -> list[Path]:
    p = Path(layout)
    if p.is_dir():
        return sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() == ".xml"
                      and not q.name.lower().endswith(OUTPUT_SUFFIX))
    return [p] if p.is_file() else []


def _layout_target(xml: Path, out, overwrite: bool) -> Path:
    """Where a page's result goes: `out`/<the XML's name>, else the input itself with `overwrite`, else
    <stem>.bridgeocr.xml beside it."""
    if out:
        return Path(out) / xml.name
    if overwrite:
        return xml
    return xml.with_name(page_stem(xml) + OUTPUT_SUFFIX)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def recognize_layout(inputs, layout, checkpoint=None, beam=None, batch_size=32, fmt=None, decoding=None,
                     recursive=False, out=None, overwrite=False, widen=None) -> int:
    """Page images + their PAGE / ALTO layout -> the same PAGE / ALTO with every line's transcription and
    confidence (data/layout.py, `write_page_result`: all other elements kept as they were).

    `layout`: one XML file (with one image input: that pair, whatever the names) or a folder of them; an
    XML is matched with the input image of the same stem, else with the input named as the XML names its
    image. `fmt` (page | alto), when given, must be the XML's own kind (nothing is converted; None: each
    file's own). Each page is written, as a
    whole (a temporary file, then a rename), as soon as its last line is read: to `out`/<its name> when
    `out` (a folder) is given, else beside the input as <stem>.bridgeocr.xml; the input file itself is
    only replaced with `overwrite` (then, without `out`, in place). Every line of the layout is read, those
    without text too. One `error:` line on stderr for each XML, image or line that cannot be used (a line
    that cannot be cut is left as it was); exit 1 if there was any. stdout: `wrote PATH (N lines)` per page.
    """
    problem = _Problems()

    if out and Path(out).exists() and not Path(out).is_dir():
        raise BridgeOCRError(f"{out}: --out must be a folder with --layout (one file per page goes there)")
    xmls = _layout_files(layout)
    if not xmls:
        raise BridgeOCRError(f"{layout}: no PAGE / ALTO .xml file here")
    images = list(iter_inputs(list(inputs), recursive=bool(recursive), on_problem=problem))
    pages = _read_layouts(xmls, fmt, problem)
    jobs = _pair_pages(pages, images, len(xmls) == 1, out, overwrite, problem)
    _report_unpaired_images(images, jobs, xmls, pages, layout, problem)
    if not jobs:
        return 1
    for folder in sorted({str(t.parent) for _, _, t in jobs}):  # a full or read-only disk: now, not later
        ensure_writable(folder)
    plans = _plan_pages(jobs, problem)
    ocr = BridgeOCR.from_pretrained(checkpoint, widen=widen)
    return _PageWriter(plans, problem).run(ocr, beam=beam, batch_size=batch_size, decoding=decoding)


def _read_layouts(xmls: list[Path], fmt, problem: _Problems) -> list[LayoutPage]:
    """The XMLs that parse and are of the kind `fmt` asks for (None: any); each other one is reported."""
    pages = []
    for xml in xmls:
        try:
            page = parse_layout(xml)
        except LayoutError as exc:
            problem(f"{xml}: {exc}; file skipped")
            continue
        if fmt is not None and page.kind != fmt:
            problem(f"{xml}: a {page.kind.upper()} file; --format {fmt} writes {fmt.upper()} into a {fmt.upper()} "
                    f"file (there is no conversion): use --format {page.kind}")
            continue
        pages.append(page)
    return pages


def _declared_image(page: LayoutPage) -> str | None:
    """The file name of the image the XML names (its folders dropped, Windows ones too), if it names one."""
    return Path(page.image_name.replace("\\", "/")).name if page.image_name else None


def _pair_pages(pages: list[LayoutPage], images: list[Path], one_xml: bool, out, overwrite: bool,
                problem: _Problems) -> list[tuple[LayoutPage, Path, Path]]:
    """Each page with its input image and where its result goes -> [(page, image, target)]; a page without
    an image, or whose result would replace its input without `overwrite`, is reported and skipped."""
    by_stem, by_name = {}, {}
    for img in images:
        by_stem.setdefault(img.stem, img)
        by_name.setdefault(img.name, img)
    jobs = []
    for page in pages:
        if one_xml and len(images) == 1:
            img = images[0]
        else:
            declared = _declared_image(page)
            img = by_stem.get(page_stem(page.path)) or (by_name.get(declared) if declared else None)
        if img is None:
            problem(f"{page.path}: no input image for it (expected {page_stem(page.path)}.jpg/.png/.tif"
                    + (f" or {page.image_name!r}" if page.image_name else "") + "); file skipped")
            continue
        target = _layout_target(page.path, out, overwrite)
        if not overwrite and _same_file(target, page.path):
            problem(f"{page.path}: the result would replace its input; pass --overwrite (or another --out); "
                    "file skipped")
            continue
        jobs.append((page, img, target))
    return jobs


def _report_unpaired_images(images: list[Path], jobs, xmls: list[Path], pages: list[LayoutPage], layout,
                            problem: _Problems) -> None:
    """An input image that no page uses, and that no XML (by stem or declared name) claims, is reported."""
    used = {img for _, img, _ in jobs}
    claimed = {page_stem(x) for x in xmls} | {_declared_image(p) for p in pages if p.image_name}
    for img in images:
        if img not in used and img.stem not in claimed and img.name not in claimed:
            problem(f"{img}: no PAGE / ALTO file for it in {layout}; image skipped")


def _plan_pages(jobs, problem: _Problems) -> list[tuple[LayoutPage, Path, list]]:
    """Every line of every page, as samples cut lazily from their page (the page is cached while read) ->
    [(page, target, [(line, sample)])]; a page whose image size cannot be read is reported and skipped."""
    plans = []
    for page, img, target in jobs:
        try:
            size = page_image_size(img)
        except ValueError as exc:
            problem(f"{page.path}: {exc}; file skipped")
            continue
        pairs, line_problems = page_samples(page, img, size, keep_empty=True)
        for msg in line_problems:
            problem(msg)
        plans.append((page, target, pairs))
    return plans


class _PageWriter:
    """Reads the lines of all planned pages in one stream and writes each page as soon as its last line is
    read (or could not be), printing `wrote PATH (N lines)`."""

    def __init__(self, plans: list[tuple[LayoutPage, Path, list]], problem: _Problems):
        self.plans = plans
        self.problem = problem
        self.owner: dict[str, int] = {}  # sample id -> plan index
        self.pending = [len(p[2]) for p in plans]
        self.results: list[dict] = [{} for _ in plans]
        self.written = 0
        self.bar = None

    def run(self, ocr: BridgeOCR, beam, batch_size, decoding) -> int:
        """Recognize and write every page -> the exit code (130 after a Ctrl-C, 1 after any problem)."""
        self.bar = self.problem.bar = _progress(sum(len(p[2]) for p in self.plans), "recognize")
        try:
            for k, p in enumerate(self.plans):
                if not p[2]:
                    self._finish(k)
            for r in ocr.iter_recognize(self._samples(), beam=beam, batch_size=batch_size, decoding=decoding,
                                        on_error=self._bad_line):
                self.results[self.owner[r.source]][r.source] = (r.text, r.confidence)
                self._done_one(r.source)
        except KeyboardInterrupt:
            self.bar.close()
            print(f"interrupted: {self.written} of {len(self.plans)} pages written", file=sys.stderr,
                  flush=True)
            return 130
        finally:
            self.bar.close()
        return 1 if self.problem.failed else 0

    def _finish(self, k: int) -> None:
        """Write page `k` with the results read for it (a line without one is left as it was)."""
        page, target, pairs = self.plans[k]
        by_sample = {sample.id: line.id for line, sample in pairs}
        path = write_page_result(page, {by_sample[sid]: r for sid, r in self.results[k].items()}, target)
        self.results[k] = {}
        self.written += 1
        print(f"wrote {path} ({len(by_sample)} lines)", flush=True)

    def _samples(self):
        """Every page's line samples in order, each noted with the page it belongs to as it is handed on."""
        for k, (_, _, pairs) in enumerate(self.plans):
            if not pairs:
                continue
            for _, sample in pairs:
                self.owner[sample.id] = k
                yield sample

    def _done_one(self, sid: str) -> None:
        """One line is through (read or not): the bar moves, and its page is written once it has no more."""
        k = self.owner.pop(sid)
        self.pending[k] -= 1
        self.bar.update(1)
        if self.pending[k] == 0:
            self._finish(k)

    def _bad_line(self, sample, exc: Exception) -> None:
        """`on_error`: a line that cannot be read is reported and left as it was."""
        self.problem(str(exc) if isinstance(exc, DataError)
                     else f"{sample.origin}: unreadable ({type(exc).__name__}); line left as it was")
        self._done_one(sample.id)


def _write_line(stream, line: str) -> None:
    """One whole line, then flush: what a reader (or a kill) sees ends at a line end."""
    stream.write(line + "\n")
    stream.flush()
