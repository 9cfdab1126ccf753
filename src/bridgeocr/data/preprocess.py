"""Line images -> tensors, datasets, padded batches and width-bucketed loaders.

Convention: images are float in [0, 1] with **ink = 1 and paper = 0**, so zero padding is blank paper.
"""

from __future__ import annotations

import math
import os
import random
import sys
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from bridgeocr.config import ImageConfig
from bridgeocr.data.sample import Batch, LineSample, load_line_image, to_grayscale
from bridgeocr.errors import ConfigError, DataError

POLICIES = ("pad", "resize")


def _policy(cfg: ImageConfig, policy: str | None) -> str:
    policy = policy or cfg.width_policy
    if policy not in POLICIES:
        raise ConfigError(f"data.image.width_policy: {policy!r} is not one of {', '.join(POLICIES)}")
    return policy


def target_width(width: int, height: int, cfg: ImageConfig, policy: str | None = None) -> int:
    """The width a `width x height` image gets after preprocessing."""
    if _policy(cfg, policy) == "resize":
        return int(cfg.resize_width)
    if width <= 0 or height <= 0:
        return 0
    w = max(1, round(width * cfg.height / height * cfg.width_scale))
    return min(w, int(cfg.max_width))


def preprocess_image(img: Image.Image, cfg: ImageConfig, policy: str | None = None) -> torch.Tensor:
    """PIL image -> float tensor [1, cfg.height, W] in [0, 1], grayscale, ink = 1, paper = 0.

    `pad`: keep the aspect ratio (only lines wider than `cfg.max_width` are squeezed down to it);
    `resize`: every line becomes `cfg.resize_width` wide. 16-bit, float and transparent images are
    read as `to_grayscale` says (scaled by their range, composited onto white paper).
    """
    gray = to_grayscale(img)
    if gray.width == 0 or gray.height == 0:
        raise DataError("image", "zero-size image")
    w = target_width(gray.width, gray.height, cfg, policy)
    if (w, cfg.height) != gray.size:
        gray = gray.resize((w, cfg.height), Image.Resampling.BILINEAR)
    arr = np.asarray(gray, dtype=np.float32)
    return torch.from_numpy(1.0 - arr / 255.0).unsqueeze(0)


MIN_SIDE = 2  # an image narrower or lower than this is degenerate (a 1 x 1 placeholder, a 1 px sliver)
MAX_SQUEEZE = 4.0  # pad policy: a line squeezed more than this many times by max_width is warned about
_WARNED: set[tuple[str, str]] = set()  # (file, kind) already warned about in this process


def size_warnings(width: int, height: int, cfg: ImageConfig, policy: str | None = None,
                  patch_width: int | None = None) -> list[tuple[str, str]]:
    """(kind, message) for a `width x height` line the preprocessing will read badly, else [].

    kinds: `degenerate` (width or height < MIN_SIDE), `narrow` (narrower than one encoder patch,
    `patch_width`, default `cfg.width_multiple`, after scaling to `cfg.height`), `squeezed` (pad
    policy: scaled to `cfg.height` it is more than MAX_SQUEEZE times `cfg.max_width`).
    """
    if width <= 0 or height <= 0:
        return []  # unreadable or empty: reported as a skipped sample instead
    if width < MIN_SIDE or height < MIN_SIDE:
        return [("degenerate", f"degenerate image {width}x{height} px (nothing to read)")]
    out = []
    policy = _policy(cfg, policy)
    patch = int(patch_width or cfg.width_multiple or 8)
    w = target_width(width, height, cfg, policy)
    if w < patch:
        out.append(("narrow", f"{width}x{height} px is {w} px wide at height {cfg.height}, narrower than "
                    f"one {patch} px encoder patch"))
    if policy == "pad":
        natural = width * cfg.height / height * cfg.width_scale
        if natural > MAX_SQUEEZE * cfg.max_width:
            out.append(("squeezed", f"{width}x{height} px is squeezed {natural / cfg.max_width:.1f}x "
                        f"horizontally (about {round(natural)} px at height {cfg.height} into max_width "
                        f"{cfg.max_width})"))
    return out


def warn_image_size(where: str, width: int, height: int, cfg: ImageConfig, policy: str | None = None,
                    patch_width: int | None = None, key: str | None = None) -> list[str]:
    """Print each of `size_warnings` as one `warning: WHERE: message` line on stderr, once per file
    (`key`, default `where`) and kind in this process; returns the lines printed."""
    printed = []
    for kind, msg in size_warnings(width, height, cfg, policy, patch_width):
        if (key or where, kind) in _WARNED:
            continue
        _WARNED.add((key or where, kind))
        line = f"warning: {where}: {msg}"
        print(line, file=sys.stderr, flush=True)
        printed.append(line)
    return printed


def _where(sample: LineSample) -> tuple[str, str]:
    """(how a message names the sample, the key it is warned once by)."""
    if sample.image_path is not None:
        where = f"{sample.image_path} (from {sample.origin})" if sample.origin else str(sample.image_path)
        return where, str(sample.image_path)
    where = sample.origin or sample.id
    return where, where


class LineDataset(Dataset):
    """source[i] -> dict(image [1,H,W], ids list[int] (no specials), text, id), or None if bad.

    A bad sample (unreadable image, empty text, too many tokens) is never fatal: it is counted in
    `.skipped` and its one-line message kept in `.skip_messages` (in this process; worker processes
    keep their own counts). `max_text_tokens` counts BOS and EOS.

    A line the preprocessing reads badly (degenerate, narrower than one patch, squeezed more than
    MAX_SQUEEZE times by max_width; `size_warnings`) gets one `warning:` line on stderr naming its
    file, once per file: from the headers in `widths()` (the loader does that in the main process)
    or, without it, when the item is first read in the main process. `.warn_messages` keeps them.
    """

    def __init__(self, source: Sequence[LineSample], image_cfg: ImageConfig, tokenizer,
                 policy: str | None = None, max_text_tokens: int | None = None, augment=None):
        self.source = source
        self.augment = augment  # (PIL image, key) -> PIL image (data/augment.py), training only
        self.epoch = 0  # part of the augmentation key: set by the training loop with the sampler's epoch
        self.cfg = image_cfg
        self.tokenizer = tokenizer
        self.policy = _policy(image_cfg, policy)
        self.max_text_tokens = max_text_tokens
        self.skipped = 0
        self.skip_messages: list[str] = []
        self._skipped_idx: set[int] = set()
        self.warn_messages: list[str] = []
        self._warned_idx: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def _skip(self, idx: int, msg: str) -> None:
        if idx not in self._skipped_idx:  # count each bad sample once, however many epochs
            self._skipped_idx.add(idx)
            self.skipped += 1
            self.skip_messages.append(msg)

    def _warn(self, idx: int, size: tuple[int, int]) -> None:
        if idx in self._warned_idx:
            return
        self._warned_idx.add(idx)
        where, key = _where(self.source[idx])
        self.warn_messages += warn_image_size(where, size[0], size[1], self.cfg, self.policy, key=key)

    def __getitem__(self, idx: int):
        sample = self.source[idx]
        where = sample.origin or sample.id
        try:
            if not sample.text.strip():
                raise DataError(where, "empty transcription")
            img = sample.load_image()
            if idx not in self._warned_idx and get_worker_info() is None:
                self._warn(idx, img.size)
            if self.augment is not None:
                img = self.augment(img, (self.epoch, idx))
            image = preprocess_image(img, self.cfg, self.policy)
            ids = self.tokenizer.encode(sample.text)
            if self.max_text_tokens is not None and len(ids) + 2 > self.max_text_tokens:
                raise DataError(where, f"{len(ids)} tokens + BOS/EOS > max_text_tokens={self.max_text_tokens}")
        except DataError as exc:
            self._skip(idx, str(exc))
            return None
        except Exception as exc:  # never fatal: e.g. decompression bombs, truncated files
            self._skip(idx, f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return None
        return {"image": image, "ids": ids, "text": sample.text, "id": sample.id}

    def widths(self) -> list[int]:
        """Preprocessed widths (from image headers only; cached) for width bucketing; warns about
        lines the preprocessing reads badly (see the class)."""
        sizes = image_sizes(self.source)
        for idx, size in enumerate(sizes):
            self._warn(idx, size)
        return [target_width(w, h, self.cfg, self.policy) for w, h in sizes]


_SIZE_CACHE: dict[tuple[str, int], tuple[int, int]] = {}


def image_size(sample: LineSample) -> tuple[int, int]:
    """(width, height) read from the file header only; (0, 0) when unreadable. Cached by path+mtime."""
    if sample.image is not None:
        return sample.image.size
    if getattr(sample, "crop", None) is not None:  # a part of a page (data/layout.py): known from geometry
        return sample.crop.size
    if sample.image_path is None:
        return (0, 0)
    path = str(sample.image_path)
    try:
        key = (path, os.stat(path).st_mtime_ns)
    except OSError:
        return (0, 0)
    size = _SIZE_CACHE.get(key)
    if size is None:
        try:
            with Image.open(path) as img:
                size = img.size
        except Exception:
            size = (0, 0)
        _SIZE_CACHE[key] = size
    return size


def image_sizes(source: Sequence[LineSample]) -> list[tuple[int, int]]:
    return [image_size(s) for s in source]


def text_batch(lines: Sequence[Sequence[int]], bos_id: int, eos_id: int,
               pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BOS ids EOS per line, right-padded with PAD: input_ids [B, T] (long), attention_mask [B, T] (bool)."""
    seqs = [[bos_id, *ids, eos_id] for ids in lines]
    t = max(len(seq) for seq in seqs)
    input_ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(seqs), t, dtype=torch.bool)
    for i, seq in enumerate(seqs):
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = True
    return input_ids, attention_mask


class Collator:
    """List of dataset items (Nones dropped) -> `Batch`; an all-None list -> None.

    input_ids = BOS + ids + EOS, right-padded with PAD. Images are zero-padded on the right to the
    batch's max width rounded up to `width_multiple`; `image_mask[b, x]` is True on real columns.
    """

    def __init__(self, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2, width_multiple: int = 8):
        self.pad_id, self.bos_id, self.eos_id = int(pad_id), int(bos_id), int(eos_id)
        self.width_multiple = max(1, int(width_multiple))

    @classmethod
    def for_tokenizer(cls, tokenizer, width_multiple: int = 8) -> Collator:
        return cls(tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, width_multiple)

    def __call__(self, items) -> Batch | None:
        items = [it for it in items if it is not None]
        if not items:
            return None
        images, image_mask = pad_images([it["image"] for it in items], self.width_multiple)
        input_ids, attention_mask = text_batch([it["ids"] for it in items], self.bos_id, self.eos_id, self.pad_id)
        return Batch(images, image_mask, input_ids, attention_mask,
                     texts=[it["text"] for it in items], ids=[it["id"] for it in items])


def pad_images(images: list[torch.Tensor], width_multiple: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Line tensors [1, H, W_i] -> (images [B, 1, H, W], image_mask [B, W]): zero-padded (blank paper) on the
    right to the widest rounded up to `width_multiple`; `image_mask[b, x]` is True on real columns. The one
    place a batch of lines is padded (training, evaluation, `recognize`)."""
    heights = {t.shape[1] for t in images}
    if len(heights) != 1:
        raise ValueError(f"Collator: images of different heights {sorted(heights)}")
    mult = max(1, int(width_multiple))
    width = max(mult, math.ceil(max(t.shape[2] for t in images) / mult) * mult)
    device = images[0].device  # a batch is padded where its lines are (models/widening.py re-pads on the GPU)
    batch = torch.zeros(len(images), 1, heights.pop(), width, dtype=torch.float32, device=device)
    mask = torch.zeros(len(images), width, dtype=torch.bool, device=device)
    for i, t in enumerate(images):
        batch[i, :, :, :t.shape[2]] = t
        mask[i, :t.shape[2]] = True
    return batch, mask


class WidthBucketSampler(Sampler[list[int]]):
    """Batches of similar width: shuffle, cut into chunks of `batch_size * chunk_batches`, sort each
    chunk by width, batch it, shuffle the batches. Deterministic for (seed, epoch); `set_epoch(e)`.

    Without shuffling, batches follow the global width order (fast, deterministic evaluation).
    """

    def __init__(self, widths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, chunk_batches: int = 50):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.widths = list(widths)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.chunk = self.batch_size * max(1, chunk_batches)
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches done) of a resumed run

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next pass over `epoch` starts after its first `batches_done` batches (a resumed run)."""
        self._resume = (int(epoch), int(batches_done))

    def _batches(self) -> list[list[int]]:
        n = len(self.widths)
        if self.shuffle:
            rng = random.Random(self.seed * 1_000_003 + self.epoch)
            order = list(range(n))
            rng.shuffle(order)
            chunks = [order[i: i + self.chunk] for i in range(0, n, self.chunk)]
            order = [i for c in chunks for i in sorted(c, key=lambda j: self.widths[j])]
        else:
            order = sorted(range(n), key=lambda j: (self.widths[j], j))
        batches = [order[i: i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == self.epoch:
            batches = batches[resume[1]:]
        yield from batches

    def __len__(self) -> int:
        n = len(self.widths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


class ResumableLoader(DataLoader):
    """A DataLoader whose place in the epoch survives a checkpoint (Lightning's `_Stateful`): a run killed
    mid-epoch and resumed goes on with the batch after the last one trained, not with the epoch's first.
    `progress()` (set by the trainer): how many batches of this epoch it has finished."""

    progress = None

    def state_dict(self) -> dict:
        return {"epoch": int(self.batch_sampler.epoch), "batches": int(self.progress()) if self.progress else 0}

    def load_state_dict(self, state: dict) -> None:
        """Also the epoch itself: Lightning draws a resumed epoch's first batch without calling
        `on_train_epoch_start` (which sets it for the epochs after), so without it an epoch resumed in the
        middle would replay epoch 0's order (and augmentation) from its start."""
        epoch = int(state.get("epoch", 0))
        self.batch_sampler.set_epoch(epoch)
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = epoch  # part of the augmentation's key
        self.batch_sampler.resume_at(epoch, int(state.get("batches", 0)))


def make_loader(source: Sequence[LineSample], image_cfg: ImageConfig, tokenizer, batch_size: int,
                shuffle: bool, policy: str | None = None, seed: int = 0, num_workers: int = 0,
                max_text_tokens: int | None = None, drop_last: bool = False, augment=None) -> DataLoader:
    """A DataLoader of `Batch`es (or None for an all-bad batch) with width-bucketed batches.

    `loader.dataset` is the `LineDataset` (its `.skipped`), `loader.batch_sampler.set_epoch(e)`.
    """
    dataset = LineDataset(source, image_cfg, tokenizer, policy=policy, max_text_tokens=max_text_tokens,
                          augment=augment)
    sampler = WidthBucketSampler(dataset.widths(), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    collate = Collator.for_tokenizer(tokenizer, image_cfg.width_multiple)
    return ResumableLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                           persistent_workers=num_workers > 0)


__all__ = ["preprocess_image", "pad_images", "target_width", "size_warnings", "warn_image_size", "load_line_image",
           "to_grayscale", "LineDataset", "Collator", "WidthBucketSampler", "ResumableLoader",
           "make_loader", "image_size", "image_sizes"]
