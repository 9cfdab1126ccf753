"""Filling the feature cache (data/features.py) with a frozen encoder, and `bridgeocr data cache-features`.

The fingerprint that names a store hashes everything the tokens depend on: the encoder's weights and
buffers, its structure (`encoder_meta`) and the image settings. Train, validation and test of a run, every
setting of the demo and every sweep cell with the same frozen encoder share one store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bridgeocr.config import ExperimentConfig, ImageConfig, load_config
from bridgeocr.data.features import FeatureStore
from bridgeocr.data.preprocess import make_loader
from bridgeocr.data.sample import LineSample
from bridgeocr.data.sources import open_source
from bridgeocr.errors import ConfigError
from bridgeocr.models.encoder import adopt_encoder_image, check_image_height, encoder_meta, load_encoder

__all__ = ["encoder_fingerprint", "fill_store", "fill_for_config", "open_store", "store_root",
           "cache_features_cli"]

FEATURES_VERSION = 1  # bump when the stored layout or meaning changes: every old store becomes stale


def encoder_fingerprint(encoder: torch.nn.Module, image_cfg: ImageConfig) -> str:
    """blake2b over the encoder's tensors (name, dtype, shape, bytes), its structure and the image settings."""

    meta = encoder_meta(encoder)
    meta["encoder"] = {k: v for k, v in meta["encoder"].items() if k not in ("freeze", "pretrained")}
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps({"v": FEATURES_VERSION, "meta": meta, "image": image_key(image_cfg)}, sort_keys=True,
                        default=str).encode())
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def image_key(image_cfg: ImageConfig) -> dict:
    """The image settings a line's pixels depend on (the other policy's width does not matter)."""
    key = {"height": image_cfg.height, "width_policy": image_cfg.width_policy,
           "width_multiple": image_cfg.width_multiple}
    if image_cfg.width_policy == "resize":
        key["resize_width"] = image_cfg.resize_width
    else:
        key["max_width"] = image_cfg.max_width
        if image_cfg.width_scale != 1.0:  # absent at 1: the stores made before the setting stay valid
            key["width_scale"] = image_cfg.width_scale
    return key


def open_store(encoder, image_cfg: ImageConfig, root: str | Path) -> FeatureStore:
    meta = {"version": FEATURES_VERSION, "image": image_key(image_cfg), "d": int(getattr(encoder, "d_out", 0)),
            "encoder": type(encoder).__name__}
    return FeatureStore(root, encoder_fingerprint(encoder, image_cfg), meta)


class _NoText:
    """The tokenizer slot of a loader that only needs pixels (the texts are not read here)."""

    pad_id, bos_id, eos_id = 0, 1, 2

    @staticmethod
    def encode(text: str) -> list[int]:
        return []


@torch.no_grad()
def fill_store(encoder, store: FeatureStore, samples: list[LineSample], image_cfg: ImageConfig,
               batch_size: int = 16, shard_lines: int = 1024, progress: bool = True, desc: str = "features",
               device: torch.device | str | None = None) -> dict:
    """Compute and store the tokens of every sample not cached yet -> {"computed", "cached", "skipped",
    "skip_messages"}. Preprocessing is `make_loader`'s (the training path's); the encoder runs in eval mode.
    A shard is written every `shard_lines` lines, so an interrupted fill keeps what it finished."""

    todo, keys = store.missing(samples)
    stats = {"computed": 0, "cached": len(samples) - len(todo), "skipped": 0, "skip_messages": []}
    if not todo:
        return stats
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    keyed = [replace(s, id=k, text="-") for s, k in zip(todo, keys)]  # ids are keys; texts never rejected
    loader = make_loader(keyed, image_cfg, _NoText(), batch_size=batch_size, shuffle=False)
    was_training = encoder.training
    encoder.eval()
    pending: dict[str, torch.Tensor] = {}
    bar = tqdm(total=len(todo), desc=desc, disable=not progress, dynamic_ncols=True, unit="line")
    try:
        for batch in loader:
            if batch is None:
                continue
            tokens, mask = encoder(batch.images.to(device), batch.image_mask.to(device))
            for i, key in enumerate(batch.ids):
                pending[key] = tokens[i, : int(mask[i].sum())].float().cpu()
            bar.update(len(batch))
            if len(pending) >= shard_lines:
                store.put(pending)
                stats["computed"] += len(pending)
                pending = {}
        store.put(pending)
        stats["computed"] += len(pending)
    finally:
        bar.close()
        encoder.train(was_training)
    stats["skipped"] = loader.dataset.skipped
    stats["skip_messages"] = list(loader.dataset.skip_messages)[:20]
    return stats


def store_root(cfg: ExperimentConfig) -> Path | None:
    """Where a run's cached features live: None when `data.feature_cache` is off or the encoder trains."""
    value = str(cfg.data.feature_cache)
    value = {"false": "off", "none": "off", "": "off", "true": "auto", "on": "auto"}.get(value.lower(), value)
    if value == "off":
        return None
    if not cfg.model.encoder.freeze:  # auto: nothing to cache; a directory asked for is a mistake
        if value != "auto":
            raise ConfigError(f"data.feature_cache={value}: features can be cached only for a frozen encoder "
                              "(set model.encoder.freeze=true, or data.feature_cache=off)")
        return None
    return Path(cfg.train.out_dir) / ".feature_cache" if value == "auto" else Path(value)


def fill_for_config(cfg: ExperimentConfig, splits: dict[str, int | None], batch_size: int = 16,
                    progress: bool = True) -> FeatureStore | None:
    """Fill the store a `train` run with `cfg` reads, for {split: max lines or None}; None if it caches nothing."""

    adopt_encoder_image(cfg)
    root = store_root(cfg)
    if root is None:
        return None
    if not cfg.model.encoder.pretrained:
        raise ConfigError("cache-features: name the frozen encoder (--encoder DIR or model.encoder.pretrained)")
    enc, _ = load_encoder(cfg.model.encoder.pretrained)
    check_image_height(enc, cfg.data.image.height, cfg.model.encoder.pretrained)
    store = open_store(enc, cfg.data.image, root)
    d = cfg.data
    for split, limit in splits.items():
        samples = list(open_source(d.source, split, split_file=d.split_file, iam_split_dir=d.iam_split_dir,
                                   drop_err=d.drop_err, allow_outside=d.allow_outside,
                                   split_by=d.split_by))[:limit]
        stats = fill_store(enc, store, samples, d.image, batch_size=batch_size, desc=f"encoder features [{split}]",
                           progress=progress)
        print(f"{d.source} [{split}]: {len(samples)} lines, {stats['computed']} computed, "
              f"{stats['cached']} already cached, {stats['skipped']} unreadable"
              + (f" (e.g. {stats['skip_messages'][0]})" if stats["skip_messages"] else ""), flush=True)
    print(f"features: {store.dir} ({len(store)} lines, {d.image.height} px high)", flush=True)
    return store


def cache_features_cli(config: str | None, overrides: list[str], splits: list[str], cache_dir: str | None = None,
                       encoder: str | None = None, data: str | None = None, batch_size: int = 16) -> int:
    """`bridgeocr data cache-features`: fill the cache a `train` run with this config reads (training fills
    it too; this does it ahead, e.g. once for a whole sweep). `--encoder`/`--data` override the config's."""

    cfg = load_config(config, list(overrides or []) + ["model.encoder.freeze=true"])
    if encoder:
        cfg.model.encoder.pretrained = encoder
    if data:
        cfg.data.source = data
    if cache_dir:
        cfg.data.feature_cache = cache_dir
    if str(cfg.data.feature_cache).lower() in ("off", "false", "none", ""):
        raise ConfigError("cache-features: data.feature_cache=off")
    if config is None and cfg.model.encoder.pretrained:  # no experiment config: the encoder's own line height
        cfg.data.image.height = int(load_encoder(cfg.model.encoder.pretrained)[0].image_height)
    fill_for_config(cfg, {s: None for s in splits}, batch_size=batch_size)
    return 0
