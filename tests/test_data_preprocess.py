import torch

from bridgeocr.config import ImageConfig
from bridgeocr.data.preprocess import (
    Collator,
    LineDataset,
    WidthBucketSampler,
    make_loader,
    preprocess_image,
)
from bridgeocr.data.sample import Batch, LineSample
from bridgeocr.data.tokenizers import CharTokenizer
from conftest import line_image

CFG = ImageConfig(height=16, max_width=64, resize_width=40, width_multiple=8)


def test_pad_policy_keeps_aspect_and_inverts():
    img = line_image(60, 20)
    x = preprocess_image(img, CFG, "pad")
    assert x.shape == (1, 16, 48) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert x[0, :, -1].max() == 0.0  # white paper -> 0
    assert x.max() > 0.5  # black ink -> near 1
    # only lines wider than max_width are squeezed
    assert preprocess_image(line_image(200, 20), CFG, "pad").shape == (1, 16, 64)
    # small images are upscaled to the height, aspect kept
    assert preprocess_image(line_image(30, 8), CFG).shape == (1, 16, 60)


def test_width_scale_stretches_every_line_and_max_width_still_caps_it():
    from dataclasses import replace

    wide = replace(CFG, width_scale=1.25)
    assert preprocess_image(line_image(40, 20), wide).shape == (1, 16, 40)  # 32 px at height 16, x1.25
    assert preprocess_image(line_image(60, 20), wide).shape == (1, 16, 60)
    assert preprocess_image(line_image(200, 20), wide).shape == (1, 16, 64)


def test_resize_policy_fixed_width():
    for w in (10, 60, 300):
        assert preprocess_image(line_image(w, 20), CFG, "resize").shape == (1, 16, 40)


def _item(w, ids, name):
    img = torch.rand(1, 16, w)
    return {"image": img, "ids": ids, "text": name, "id": name}


def test_collator_padding_mask_and_ids():
    a, b = _item(20, [5, 6, 7], "a"), _item(33, [8], "b")
    batch = Collator(pad_id=0, bos_id=1, eos_id=2, width_multiple=8)([a, None, b])
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.images.shape == (2, 1, 16, 40)  # 33 -> 40
    assert torch.equal(batch.images[0, :, :, :20], a["image"])  # pixels unchanged by padding
    assert torch.equal(batch.images[1, :, :, :33], b["image"])
    assert batch.images[0, :, :, 20:].abs().sum() == 0
    assert batch.image_mask[0].sum() == 20 and batch.image_mask[0, :20].all()
    assert batch.image_mask[1].sum() == 33
    assert batch.input_ids.tolist() == [[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]]
    assert batch.attention_mask.tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert batch.texts == ["a", "b"] and batch.ids == ["a", "b"]
    assert Collator()([None, None]) is None


def test_dataset_skips_bad_samples(tmp_path):
    tok = CharTokenizer.build(["hello"])
    src = [LineSample("ok", "hello", image=line_image()),
           LineSample("gone", "hello", image_path=tmp_path / "nope.png", origin="m.tsv:2"),
           LineSample("empty", " ", image=line_image(), origin="m.tsv:3"),
           LineSample("long", "hello" * 10, image=line_image(), origin="m.tsv:4")]
    ds = LineDataset(src, CFG, tok, max_text_tokens=20)
    items = [ds[i] for i in range(len(ds))]
    assert items[0]["ids"] == tok.encode("hello") and items[0]["image"].shape[1] == 16
    assert items[1:] == [None, None, None]
    assert ds.skipped == 3
    assert "m.tsv:2" in ds.skip_messages[0] and "not found" in ds.skip_messages[0]
    assert "m.tsv:3" in ds.skip_messages[1]
    ds[1]
    assert ds.skipped == 3  # counted once


def test_width_bucket_sampler_deterministic_and_complete():
    widths = [(i * 37) % 101 for i in range(100)]
    s = WidthBucketSampler(widths, 8, shuffle=True, seed=3, chunk_batches=4)
    b1 = list(s)
    assert b1 == list(WidthBucketSampler(widths, 8, shuffle=True, seed=3, chunk_batches=4))
    assert sorted(i for b in b1 for i in b) == list(range(100)) and len(b1) == len(s) == 13
    s.set_epoch(1)
    assert list(s) != b1
    spread = max(max(widths[i] for i in b) - min(widths[i] for i in b) for b in b1 if len(b) == 8)
    assert spread < 50  # batches are width-homogeneous
    assert len(list(WidthBucketSampler(widths, 8, shuffle=False, drop_last=True))) == 12


def test_make_loader(tmp_path, make_line_png):
    src = [LineSample(f"s{i}", "ab" * (i + 1), image_path=make_line_png(tmp_path / f"{i}.png", 20 + 10 * i))
           for i in range(6)]
    tok = CharTokenizer.build(["ab"])
    loader = make_loader(src, CFG, tok, batch_size=4, shuffle=True, seed=1)
    batches = list(loader)
    assert sum(len(b) for b in batches) == 6
    assert all(b.images.shape[-1] % 8 == 0 for b in batches)
    assert loader.dataset.skipped == 0
