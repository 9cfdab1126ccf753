"""Line encoder: shapes, token mask, padding invariance, save/load (+CTC head), HF ViT wrapper, CTC decode."""

import pytest
import torch
from transformers import ViTConfig, ViTModel

from bridgeocr.config import EncoderConfig
from bridgeocr.models.ctc import CTCHead, ctc_greedy_decode
from bridgeocr.models.encoder import HFLineEncoder, LineEncoder, load_encoder


def enc_cfg(**kw):
    base = dict(dim=32, depth=2, heads=2, patch_width=8, max_width=256)
    base.update(kw)
    return EncoderConfig(**base)


def line(W, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, 32, W, generator=g)


def pad_batch(widths, total):
    imgs = torch.zeros(len(widths), 1, 32, total)
    mask = torch.zeros(len(widths), total, dtype=torch.bool)
    for i, w in enumerate(widths):
        imgs[i, :, :, :w] = line(w, i)
        mask[i, :w] = True
    return imgs, mask


def test_shapes_and_token_mask():
    enc = LineEncoder(enc_cfg(), 32).eval()
    imgs, mask = pad_batch([64, 21], 64)
    tokens, tmask = enc(imgs, mask)
    assert tokens.shape == (2, 8, 32)
    assert tmask[1].tolist() == [True] * 3 + [False] * 5  # 21 columns touch 3 patches of 8


@pytest.mark.parametrize("kw", [dict(), dict(pos_embedding="learned", conv_stem=False), dict(patch_height=16)])
def test_padding_never_changes_an_item(kw):
    torch.manual_seed(0)
    enc = LineEncoder(enc_cfg(**kw), 32).eval()
    alone, m_alone = pad_batch([37], 40)
    both, m_both = pad_batch([37, 120], 128)
    with torch.no_grad():
        a, am = enc(alone, m_alone)
        b, bm = enc(both, m_both)
    n = int(am[0].sum())
    assert n == int(bm[0].sum())
    torch.testing.assert_close(b[0, :n], a[0, :n], atol=1e-5, rtol=0)


def test_learned_positions_refuse_too_wide():
    enc = LineEncoder(enc_cfg(pos_embedding="learned", max_width=64), 32)
    imgs, mask = pad_batch([80], 80)
    with pytest.raises(ValueError, match="max_width"):
        enc(imgs, mask)


def test_save_load_with_ctc_head(tmp_path):
    torch.manual_seed(0)
    enc, head = LineEncoder(enc_cfg(pos_embedding="learned"), 32).eval(), CTCHead(32, 11)
    enc.save_pretrained(tmp_path, ctc_head=head)
    enc2, head2 = load_encoder(tmp_path, 32)
    imgs, mask = pad_batch([40, 24], 40)
    torch.testing.assert_close(enc2.eval()(imgs, mask)[0], enc(imgs, mask)[0], atol=0, rtol=0)
    torch.testing.assert_close(head2.proj.weight, head.proj.weight, atol=0, rtol=0)
    assert isinstance(LineEncoder.from_pretrained(tmp_path), LineEncoder)
    enc.save_pretrained(tmp_path / "bare")
    assert load_encoder(tmp_path / "bare")[1] is None


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("vit")
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, num_channels=3)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(d)
    return d


def test_hf_vit_wrapper(vit_dir, tmp_path):
    enc, head = load_encoder(vit_dir, 32)
    assert isinstance(enc, HFLineEncoder) and head is None and enc.d_out == 32
    enc.eval()
    alone, m_alone = pad_batch([37], 40)
    both, m_both = pad_batch([37, 120], 128)
    with torch.no_grad():
        a, am = enc(alone, m_alone)
        b, bm = enc(both, m_both)
    assert a.shape == (1, 17, 32) and am.all()  # 16 patches + CLS, all real
    torch.testing.assert_close(b[0], a[0], atol=1e-5, rtol=0)
    # saved as our encoder dir (with a CTC head), rebuilt from the stored HF config alone
    enc.save_pretrained(tmp_path, ctc_head=CTCHead(32, 9))
    enc2, head2 = load_encoder(tmp_path, 32)
    assert isinstance(enc2, HFLineEncoder) and head2.vocab_size == 9
    torch.testing.assert_close(enc2.eval()(both, m_both)[0], b, atol=0, rtol=0)


def test_ctc_greedy_decode():
    V = 5
    path = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 3], [4, 4, 4, 0, 4, 3, 3, 3]])
    logits = torch.nn.functional.one_hot(path, V).float()
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    assert ctc_greedy_decode(logits, mask) == [[1, 1, 2, 3], [4, 4]]
