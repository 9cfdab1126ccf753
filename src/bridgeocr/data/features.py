"""Cached encoder features: each line's visual tokens, computed once by a frozen encoder, read many times.

While the encoder is frozen (the seed's bridge stage), its tokens for a line never change, so training the
connector and the GPT needs the encoder only once per line, not once per epoch, setting and sweep cell.
A `FeatureStore` is one directory per *encoder fingerprint* (weights + structure + image settings: a
changed encoder or preprocessing gets a new directory, so stale features are never read):

    ROOT/<fingerprint>/meta.json               what made these features (for people; the name is the key)
    ROOT/<fingerprint>/shard-00000.safetensors  tensors named by line key: [N, d] float32 tokens
    ROOT/<fingerprint>/index.json               line key -> [shard, N]

A line's key is a hash of its image bytes (file or in-memory pixels), so the same picture under another id
or in another source shares its entry, and an edited image gets a new one. Shards are written atomically
(temp file, then rename) and the index last, so an interrupted fill keeps every finished shard.

Batches from the cache are ordinary `Batch`es whose `images` are the encoder tokens [B, N, d] and whose
`image_mask` marks real tokens [B, N]: `OCRModel.encoder_tokens` passes them through unchanged.
Computing the features (which needs a model) lives in `train/features.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from bridgeocr.config import ImageConfig
from bridgeocr.data.preprocess import LineDataset, ResumableLoader, WidthBucketSampler, text_batch
from bridgeocr.data.sample import Batch, LineSample
from bridgeocr.errors import DataError

__all__ = ["FeatureStore", "FeatureDataset", "FeatureCollator", "line_key", "make_feature_loader"]

INDEX = "index.json"
META = "meta.json"


_KEY_CACHE: dict[tuple[str, int, int], str] = {}


def line_key(sample: LineSample) -> str:
    """A content hash of the line's image (file bytes, or the in-memory image's mode, size and pixels).
    A file's hash is remembered by path, mtime and size, as `image_size` remembers sizes: a run asks for
    every line's key several times (fill, training loader, connector fit, test)."""
    if sample.image is not None:
        img = sample.image
        h = hashlib.blake2b(f"{img.mode}:{img.width}x{img.height}:".encode(), digest_size=16)
        h.update(img.tobytes())
        return h.hexdigest()
    if getattr(sample, "crop", None) is not None:  # a part of a page: the page's bytes and the geometry
        return sample.crop.key()
    if sample.image_path is None:
        return ""
    try:
        st = os.stat(sample.image_path)
        where = (str(sample.image_path), st.st_mtime_ns, st.st_size)
        if where not in _KEY_CACHE:
            _KEY_CACHE[where] = hashlib.blake2b(Path(sample.image_path).read_bytes(), digest_size=16).hexdigest()
        return _KEY_CACHE[where]
    except OSError:
        return ""  # unreadable: never cached; LineDataset reports it when the line is computed


class FeatureStore:
    """The features of one encoder fingerprint under `root`; all tensors are loaded on first read."""

    def __init__(self, root: str | Path, fingerprint: str, meta: dict | None = None):
        self.dir = Path(root) / fingerprint
        self.fingerprint = fingerprint
        self.meta = meta or {}
        self._index: dict[str, list] | None = None
        self._tensors: dict[str, torch.Tensor] = {}
        self._loaded: set[str] = set()

    # ------------------------------------------------------------------------------------- index

    @property
    def index(self) -> dict[str, list]:
        if self._index is None:
            path = self.dir / INDEX
            try:
                self._index = json.loads(path.read_text()) if path.is_file() else {}
            except (OSError, ValueError) as exc:
                raise DataError(str(path), f"unreadable feature index ({exc}); remove {self.dir}") from None
        return self._index

    def __contains__(self, key: str) -> bool:
        return bool(key) and key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def length(self, key: str) -> int:
        """Number of tokens of a cached line (for width bucketing without loading tensors)."""
        return int(self.index[key][1])

    # ------------------------------------------------------------------------------------ read/write

    def get(self, key: str) -> torch.Tensor:
        shard = self.index[key][0]
        if shard not in self._loaded:

            self._tensors.update(load_file(str(self.dir / shard)))
            self._loaded.add(shard)
        return self._tensors[key]

    def put(self, features: dict[str, torch.Tensor]) -> None:
        """Write one new shard with these lines' tokens ([N, d] each), then the index (both atomically)."""
        if not features:
            return

        self.dir.mkdir(parents=True, exist_ok=True)
        if self.meta and not (self.dir / META).is_file():
            _atomic_write_text(self.dir / META, json.dumps(self.meta, indent=2))
        n = len({entry[0] for entry in self.index.values()})
        while (self.dir / f"shard-{n:05d}.safetensors").exists():
            n += 1
        shard = f"shard-{n:05d}.safetensors"
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in features.items()}
        tmp = self.dir / f".{shard}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.dir / shard)
        for k, v in tensors.items():
            self.index[k] = [shard, int(v.shape[0])]
        self._tensors.update(tensors)
        self._loaded.add(shard)
        _atomic_write_text(self.dir / INDEX, json.dumps(self.index))

    def missing(self, samples: Sequence[LineSample]) -> tuple[list[LineSample], list[str]]:
        """The samples (and their keys) not cached yet, each distinct image once."""
        out, keys, seen = [], [], set()
        for s in samples:
            k = line_key(s)
            if k and k not in self and k not in seen:
                seen.add(k)
                out.append(s)
                keys.append(k)
        return out, keys


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class FeatureDataset(LineDataset):
    """source[i] -> dict(features [N, d], ids, text, id), or None when bad (counted in `.skipped`, as
    LineDataset does: an empty text, too many tokens, or a line the encoder could not read). Its `widths`
    are LineDataset's (pixel widths), so both loaders form the same batches."""

    def __init__(self, source: Sequence[LineSample], store: FeatureStore, tokenizer, image_cfg: ImageConfig,
                 max_text_tokens: int | None = None):
        super().__init__(source, image_cfg, tokenizer, max_text_tokens=max_text_tokens)
        self.store = store
        self.keys = [line_key(s) for s in source]

    def __getitem__(self, idx: int):
        sample, key = self.source[idx], self.keys[idx]
        where = sample.origin or sample.id
        if not sample.text.strip():
            self._skip(idx, f"{where}: empty transcription")
            return None
        if key not in self.store:
            self._skip(idx, f"{where}: no cached features (the image could not be read)")
            return None
        ids = self.tokenizer.encode(sample.text)
        if self.max_text_tokens is not None and len(ids) + 2 > self.max_text_tokens:
            self._skip(idx, f"{where}: {len(ids)} tokens + BOS/EOS > max_text_tokens={self.max_text_tokens}")
            return None
        return {"features": self.store.get(key), "ids": ids, "text": sample.text, "id": sample.id}


class FeatureCollator:
    """Items -> a Batch with `images` = tokens [B, N, d] zero-padded to the longest, `image_mask` [B, N]."""

    def __init__(self, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2):
        self.pad_id, self.bos_id, self.eos_id = int(pad_id), int(bos_id), int(eos_id)

    def __call__(self, items) -> Batch | None:
        items = [it for it in items if it is not None]
        if not items:
            return None
        n = max(it["features"].shape[0] for it in items)
        d = items[0]["features"].shape[1]
        feats = torch.zeros(len(items), n, d, dtype=torch.float32)
        mask = torch.zeros(len(items), n, dtype=torch.bool)
        for i, it in enumerate(items):
            k = it["features"].shape[0]
            feats[i, :k] = it["features"]
            mask[i, :k] = True
        input_ids, attention_mask = text_batch([it["ids"] for it in items], self.bos_id, self.eos_id, self.pad_id)
        return Batch(feats, mask, input_ids, attention_mask, texts=[it["text"] for it in items],
                     ids=[it["id"] for it in items])


def make_feature_loader(source: Sequence[LineSample], store: FeatureStore, image_cfg: ImageConfig, tokenizer,
                        batch_size: int, shuffle: bool, seed: int = 0, max_text_tokens: int | None = None,
                        drop_last: bool = False) -> DataLoader:
    """`make_loader`'s twin over cached features: the same width-bucketed batches, tokens for pixels."""
    dataset = FeatureDataset(source, store, tokenizer, image_cfg, max_text_tokens=max_text_tokens)
    sampler = WidthBucketSampler(dataset.widths(), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    collate = FeatureCollator(tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
    return ResumableLoader(dataset, batch_sampler=sampler, collate_fn=collate)
