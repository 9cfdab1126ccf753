"""Decoding: the KV cache gives exactly full recomputation (greedy, beam); padding never changes an item."""

import pytest
import torch

from bridgeocr.config import ConnectorConfig, DecoderConfig, EncoderConfig, ModelConfig
from bridgeocr.models.decoding import generate
from bridgeocr.models.ocr import OCRModel

V = 16


def make_model(kind="linear_gelu_ln", attach=0, **conn):
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=EncoderConfig(dim=32, depth=1, heads=2, max_width=256),
                      connector=ConnectorConfig(kind=kind, **conn),
                      decoder=DecoderConfig(n_layer=2, n_embd=32, n_head=2, n_positions=32),
                      attach_layer=attach, max_text_tokens=8)
    model = OCRModel(cfg, V, 32).eval()
    with torch.no_grad():  # let attention dominate the residual stream, so lines differ and stop at EOS
        for block in model.decoder.h:
            block.attn.c_proj.weight.mul_(50)
            block.attn.c_attn.weight.mul_(3)
    return model


def lines(widths, total):
    g = torch.Generator().manual_seed(1)
    imgs = torch.zeros(len(widths), 1, 32, total)
    mask = torch.zeros(len(widths), total, dtype=torch.bool)
    for i, w in enumerate(widths):
        imgs[i, :, :, :w] = torch.rand(1, 32, w, generator=g)
        mask[i, :w] = True
    return imgs, mask


@pytest.mark.parametrize("attach", [0, 1])
@pytest.mark.parametrize("beam", [1, 3])
def test_cache_equals_full_recomputation(attach, beam):
    model = make_model(attach=attach)
    imgs, mask = lines([40, 64, 17], 64)
    cached = generate(model, imgs, mask, beam=beam, length_penalty=0.8)
    full = generate(model, imgs, mask, beam=beam, length_penalty=0.8, use_cache=False)
    assert [h.ids for h in cached] == [h.ids for h in full]
    for a, b in zip(cached, full):
        assert abs(a.confidence - b.confidence) < 1e-4
    assert len({round(h.confidence, 4) for h in cached}) == 3  # the lines are really read differently


SETTINGS = [dict(kind="linear_gelu_ln"), dict(kind="mlp", reduce="pool", reduce_k=2),
            dict(kind="linear_ln", reduce="concat", reduce_k=4),
            dict(kind="qformer", num_queries=4, layers=1), dict(kind="cabstractor", num_queries=4, layers=1)]


@pytest.mark.parametrize("conn", SETTINGS, ids=lambda s: s["kind"] + str(s.get("reduce", "")))
def test_padding_a_batch_never_changes_an_item(conn):
    model = make_model(**conn)
    imgs, mask = lines([40, 17], 40)
    alone = [model.generate(imgs[i:i + 1, :, :, :w], mask[i:i + 1, :w], beam=2) for i, w in enumerate([40, 17])]
    wide, wmask = lines([40, 17, 200], 200)
    batch = model.generate(wide, wmask, beam=2)
    for i in range(2):
        assert batch[i].ids == alone[i][0].ids
        assert abs(batch[i].confidence - alone[i][0].confidence) < 1e-4


def test_max_new_tokens_and_length():
    model = make_model()
    imgs, mask = lines([40, 30], 40)
    for beam in (1, 2):
        hyps = model.generate(imgs, mask, beam=beam, max_new_tokens=3)
        assert all(len(h.ids) <= 3 for h in hyps)
