"""Crowded lines read again wider (models/widening.py): the density, the scales, the stretch, the merge."""

import pytest
import torch
import torch.nn as nn

from bridgeocr.models.ctc import BLANK
from bridgeocr.models.ocr import OCRModel
from bridgeocr.models.widening import MAX_SCALE, ctc_density, widen_images, widen_scales, widened_tokens
from test_models_ocr import StubTokenizer, V, make_batch, tiny_cfg


def one_hot_logits(paths, vocab=6):
    """Frame label paths -> logits whose argmax is that path."""
    return torch.nn.functional.one_hot(torch.tensor(paths), vocab).float() * 10


def test_density_counts_emitted_letters_over_real_frames():
    # a a _ b c | padding frames (a letter there must not count)
    logits = one_hot_logits([[1, 1, BLANK, 2, 3, 4, 4], [2, BLANK, 2, BLANK, BLANK, 5, 5]])
    mask = torch.tensor([[True] * 5 + [False] * 2, [True] * 5 + [False] * 2])
    assert ctc_density(logits, mask).tolist() == pytest.approx([3 / 5, 2 / 5])


def test_scales_widen_only_lines_above_the_threshold_and_cap_them():
    density = torch.tensor([0.3, 0.5, 0.6, 1.5])
    assert widen_scales(density, 0.5).tolist() == pytest.approx([1.0, 1.0, 1.2, MAX_SCALE])
    assert widen_scales(density, 0.0).tolist() == [1.0] * 4  # off


def test_widen_images_stretches_real_columns_and_keeps_the_rest():
    images = torch.zeros(2, 1, 4, 24)
    images[0, :, :, :16] = torch.linspace(0, 1, 16)
    images[1, :, :, :8] = 0.7
    mask = torch.zeros(2, 24, dtype=torch.bool)
    mask[0, :16], mask[1, :8] = True, True
    wide, wide_mask = widen_images(images, mask, [1.5, 1.0], width_multiple=8)
    assert wide.shape == (2, 1, 4, 24)
    assert wide_mask.sum(1).tolist() == [24, 8]
    torch.testing.assert_close(wide[1, :, :, :8], images[1, :, :, :8])  # scale 1: the very same pixels
    assert (wide[1, :, :, 8:] == 0).all()
    ramp = wide[0, 0, 0]
    assert ramp[0] == 0 and ramp[-1] == pytest.approx(1.0) and (ramp.diff() >= 0).all()  # a stretched ramp
    capped, capped_mask = widen_images(images, mask, [2.0, 1.0], width_multiple=8, max_width=20)
    assert capped_mask.sum(1).tolist() == [20, 8] and capped.shape[-1] == 20


class ColumnEncoder(nn.Module):
    """8 px columns -> one token each (their mean ink), with the column mask."""

    def forward(self, images, image_mask):
        b, _, h, w = images.shape
        tokens = images.mean(2).view(b, w // 8, 8).mean(-1, keepdim=True)
        return tokens, image_mask.view(b, w // 8, 8).all(-1)


class InkHead(nn.Module):
    """A CTC head that emits a new letter on every inked frame (letters alternate, so none collapse)."""

    upsample, vocab_size = 1, 4

    def forward(self, tokens):
        b, n, _ = tokens.shape
        letters = 1 + torch.arange(n) % 2
        ids = torch.where(tokens[..., 0] > 0.25, letters.expand(b, n), torch.zeros(b, n, dtype=torch.long))
        return torch.nn.functional.one_hot(ids, self.vocab_size).float() * 10

    def frame_mask(self, mask):
        return mask


def test_widened_tokens_reencodes_crowded_lines_only():
    images = torch.zeros(2, 1, 4, 32)
    images[0, :, :, :32] = 1.0  # every frame inked: 1 letter per frame, crowded
    images[1, :, :, :8] = 1.0  # 1 of 4 frames: room
    mask = torch.ones(2, 32, dtype=torch.bool)
    encoder, head = ColumnEncoder(), InkHead()
    once, once_mask = encoder(images, mask)
    tokens, tmask = widened_tokens(encoder, head, images, mask, threshold=0.5, width_multiple=8)
    assert tmask.sum(1).tolist() == [8, 4]  # line 0 read at 2x (density 1.0 / 0.5), line 1 as it was
    torch.testing.assert_close(tokens[1, :4], once[1])
    assert (tokens[1, 4:] == 0).all()
    off, off_mask = widened_tokens(encoder, head, images, mask, threshold=0.0)
    torch.testing.assert_close(off, once)
    assert torch.equal(off_mask, once_mask)


def test_a_model_reads_the_same_when_no_line_is_crowded_and_differently_when_forced():
    torch.manual_seed(0)
    model = OCRModel(tiny_cfg(ctc_head=True, decoding="ctc", widen_crowded=0.0), V, 32, StubTokenizer(V)).eval()
    b = make_batch()
    plain = model.read(b.images, b.image_mask)
    assert not model.widens
    model.cfg.widen_crowded = 50.0  # more letters per frame than a head can emit: nothing is crowded
    assert model.widens
    assert [h.ids for h in model.read(b.images, b.image_mask)] == [h.ids for h in plain]
    model.cfg.widen_crowded = 1e-6  # every line with a letter is crowded, read again twice as wide
    tokens, tmask = model.reading_tokens(b.images, b.image_mask)
    once, once_mask = model.encoder_tokens(b.images, b.image_mask)
    density = ctc_density(model.ctc_head(once), model.ctc_head.frame_mask(once_mask))
    crowded = (density > 0).tolist()
    expect = [m * 2 if c else m for m, c in zip(once_mask.sum(1).tolist(), crowded)]
    assert any(crowded) and tmask.sum(1).tolist() == expect
