"""The frozen-encoder feature cache: a store keyed by encoder, image settings and image; training on cached
tokens gives the same run as training on pixels; `bridgeocr data cache-features`."""

import csv
import json
from pathlib import Path

import pytest
import torch

from bridgeocr.cli import main
from bridgeocr.config import ImageConfig, load_config
from bridgeocr.data.features import FeatureStore, line_key, make_feature_loader
from bridgeocr.data.sample import LineSample
from bridgeocr.data.sources import open_source
from bridgeocr.errors import ConfigError
from conftest import line_image, make_box_dataset, tiny_ocr_model
from test_train_run import TINY_YAML

FROZEN = ["model.encoder.freeze=true", "optim.max_steps=6", "train.val_every_steps=3"]


def test_store_roundtrip_content_keys_and_shards(tmp_path):
    store = FeatureStore(tmp_path, "fp")
    a = LineSample("a", "x", image=line_image(40, text="ab"))
    same = LineSample("other id", "y", image=line_image(40, text="ab"))
    b = LineSample("b", "x", image=line_image(40, text="cd"))
    assert line_key(a) == line_key(same) != line_key(b)
    todo, keys = store.missing([a, same, b])
    assert [s.id for s in todo] == ["a", "b"]  # one entry per distinct image
    store.put({keys[0]: torch.ones(3, 4)})
    store.put({keys[1]: torch.zeros(5, 4)})
    again = FeatureStore(tmp_path, "fp")  # a new process reads what the first wrote
    assert len(again) == 2 and again.length(keys[1]) == 5
    assert torch.equal(again.get(keys[0]), torch.ones(3, 4))
    assert len(list((tmp_path / "fp").glob("shard-*.safetensors"))) == 2
    assert again.missing([a, b, same])[0] == []
    missing = LineSample("gone", "x", image_path=tmp_path / "nope.png")
    assert line_key(missing) == "" and again.missing([missing])[0] == []


def test_fingerprint_follows_weights_and_image_settings_not_the_freeze_flag():
    from bridgeocr.train.features import encoder_fingerprint

    model = tiny_ocr_model()
    image = ImageConfig(height=16, width_multiple=4)
    fp = encoder_fingerprint(model.encoder, image)
    model.encoder.cfg.freeze = True
    assert encoder_fingerprint(model.encoder, image) == fp
    assert encoder_fingerprint(model.encoder, ImageConfig(height=16, width_multiple=4, resize_width=99)) == fp
    assert encoder_fingerprint(model.encoder, ImageConfig(height=16, width_multiple=4, max_width=99)) != fp
    assert encoder_fingerprint(model.encoder, ImageConfig(height=16, width_multiple=4, width_scale=1.25)) != fp
    with torch.no_grad():
        next(model.encoder.parameters()).add_(1e-3)
    assert encoder_fingerprint(model.encoder, image) != fp


def test_cached_batches_are_the_encoders_tokens(tmp_path):
    from bridgeocr.data.preprocess import make_loader
    from bridgeocr.train.features import fill_store, open_store

    src = list(open_source(make_box_dataset(tmp_path / "data", n=12), "train"))
    model = tiny_ocr_model().eval()
    image = ImageConfig(height=16, width_multiple=4, max_width=256)
    store = open_store(model.encoder, image, tmp_path / "cache")
    stats = fill_store(model.encoder, store, src, image, batch_size=4, progress=False)
    assert stats["computed"] == len(src) and fill_store(model.encoder, store, src, image)["computed"] == 0
    pix = make_loader(src, image, model.tokenizer, batch_size=4, shuffle=True, seed=3)
    feat = make_feature_loader(src, store, image, model.tokenizer, batch_size=4, shuffle=True, seed=3)
    for pb, fb in zip(pix, feat, strict=True):
        assert pb.ids == fb.ids and torch.equal(pb.input_ids, fb.input_ids)
        tokens, mask = model.encoder(pb.images, pb.image_mask)
        assert torch.equal(mask, fb.image_mask[:, : mask.shape[1]])
        torch.testing.assert_close(fb.images * fb.image_mask[..., None], (tokens * mask[..., None])[:, : fb.images.shape[1]],
                                   atol=1e-5, rtol=1e-5)
        with torch.no_grad():  # the model reads both the same
            lp, lf = model(pb).logits, model(fb).logits
        torch.testing.assert_close(lp, lf, atol=1e-4, rtol=1e-4)


def _losses(run: Path) -> list[float]:
    with (run / "metrics.csv").open() as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_training_on_cached_tokens_matches_training_on_pixels(tmp_path):
    from bridgeocr.train.run import train

    src = make_box_dataset(tmp_path / "data", n=16)
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(TINY_YAML.format(src=src, out=tmp_path / "runs"))
    plain = train(load_config(cfg_file, FROZEN + ["data.feature_cache=off", "train.name=pixels"]))
    cached = train(load_config(cfg_file, FROZEN + ["train.name=cached"]))
    store_dir = tmp_path / "runs" / ".feature_cache"
    stores = list(store_dir.iterdir())
    assert len(stores) == 1 and len(json.loads((stores[0] / "index.json").read_text())) == 16  # all 3 splits
    lp, lc = _losses(tmp_path / "runs" / "pixels"), _losses(tmp_path / "runs" / "cached")
    assert len(lp) == len(lc) == 6
    assert lp == pytest.approx(lc, rel=1e-4, abs=1e-5)
    assert plain["val_cer"] == pytest.approx(cached["val_cer"]) and plain["test_cer"] == pytest.approx(cached["test_cer"])
    shards = sorted(p.name for p in stores[0].glob("shard-*"))
    train(load_config(cfg_file, FROZEN + ["train.name=again"]))  # a second run computes nothing new
    assert sorted(p.name for p in stores[0].glob("shard-*")) == shards


def test_a_cache_dir_for_a_trained_encoder_is_a_config_error(tmp_path):
    from bridgeocr.train.features import store_root

    cfg = load_config(None, [f"data.feature_cache={tmp_path}"])
    with pytest.raises(ConfigError, match="frozen encoder"):
        store_root(cfg)
    assert store_root(load_config(None, [])) is None  # auto + a trained encoder: no cache
    assert store_root(load_config(None, ["model.encoder.freeze=true", "data.feature_cache=off"])) is None


def test_cache_features_cli(tmp_path, capsys):
    model = tiny_ocr_model(ctc=True)
    from bridgeocr.models.encoder import save_encoder

    save_encoder(tmp_path / "enc", model.encoder, model.ctc_head)
    src = make_box_dataset(tmp_path / "data", n=8, bad=1)
    argv = ["data", "cache-features", "--encoder", str(tmp_path / "enc"), "--data", str(src),
            "--cache-dir", str(tmp_path / "cache"), "data.image.width_multiple=4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[train]: 5 lines, 4 computed, 0 already cached, 1 unreadable" in out
    assert main(argv) == 0
    assert "[train]: 5 lines, 0 computed, 4 already cached" in capsys.readouterr().out
