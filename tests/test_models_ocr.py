"""OCRModel: forward contract, pretrained parts, freezing, save/load, generate."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bridgeocr.config import ConnectorConfig, DecoderConfig, EncoderConfig, ModelConfig
from bridgeocr.data.sample import Batch
from bridgeocr.errors import ConfigError
from bridgeocr.models.ctc import CTCHead
from bridgeocr.models.encoder import LineEncoder
from bridgeocr.models.ocr import OCRModel


class StubTokenizer:
    """Just enough of the tokenizer interface: ids 0-2 special, others are letters."""

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, vocab_size=20):
        self.vocab_size = vocab_size

    def decode(self, ids):
        return "".join(chr(ord("a") + i - 4) for i in ids if i >= 4)

    def save(self, path):
        open(path, "w").write(json.dumps({"stub": self.vocab_size}))


V = 20


def tiny_cfg(**kw):
    cfg = ModelConfig(encoder=EncoderConfig(dim=32, depth=1, heads=2, patch_width=8),
                      connector=ConnectorConfig(kind="linear_gelu_ln"),
                      decoder=DecoderConfig(n_layer=2, n_embd=32, n_head=2, n_positions=48), max_text_tokens=12)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def make_batch(B=2, W=48, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 1, 32, W, generator=g)
    image_mask = torch.ones(B, W, dtype=torch.bool)
    image_mask[1:, W // 2:] = False
    images = images * image_mask[:, None, None, :]
    ids = torch.randint(4, V, (B, T), generator=g)
    ids[:, 0] = 1
    return Batch(images, image_mask, ids, torch.ones(B, T, dtype=torch.bool))


def test_forward_contract():
    torch.manual_seed(0)
    model = OCRModel(tiny_cfg(ctc_head=True), V, 32).eval()
    b = make_batch()
    out = model(b)
    assert out.logits.shape == (2, 7, V)
    assert out.visual.shape == (2, 6, 32) and out.visual_mask.shape == (2, 6)
    assert out.visual_tokens is out.visual
    assert out.visual_mask[1].tolist() == [True] * 3 + [False] * 3
    up = model.ctc_head.upsample
    assert out.ctc_logits.shape == (2, 6 * up, V)
    assert out.ctc_mask[1].tolist() == [True] * 3 * up + [False] * 3 * up
    # logits[:, t] predicts input_ids[:, t+1]: changing token t+1 leaves logits[:, :t+1] alone
    b2 = make_batch()
    b2.input_ids[:, 4] = 5
    torch.testing.assert_close(model(b2).logits[:, :4], out.logits[:, :4], atol=1e-6, rtol=0)
    # text-only path = plain decoder
    torch.testing.assert_close(model.text_logits(b.input_ids, b.attention_mask), model.decoder(b.input_ids)[0])


def test_bad_attach_layer_is_config_error():
    with pytest.raises(ConfigError, match="attach_layer"):
        OCRModel(tiny_cfg(attach_layer=2), V, 32)


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = OCRModel(tiny_cfg(ctc_head=True, attach_layer=1), V, 32, StubTokenizer(V)).eval()
    b = make_batch()
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["vocab_size"] == V and meta["image_height"] == 32 and meta["model"]["attach_layer"] == 1
    loaded = OCRModel.from_pretrained(tmp_path, tokenizer=StubTokenizer(V)).eval()
    a, c = model(b), loaded(b)
    torch.testing.assert_close(c.logits, a.logits, atol=0, rtol=0)
    torch.testing.assert_close(c.ctc_logits, a.ctc_logits, atol=0, rtol=0)
    assert loaded.cfg == model.cfg


def test_from_pretrained_loads_tokenizer_json(tmp_path):
    from bridgeocr.data.tokenizers import CharTokenizer

    tok = CharTokenizer.build(["abc def"])
    model = OCRModel(tiny_cfg(), tok.vocab_size, 32, tok)
    model.save_pretrained(tmp_path)
    loaded = OCRModel.from_pretrained(tmp_path)
    assert type(loaded.tokenizer) is CharTokenizer and loaded.tokenizer.decode([4, 5]) == tok.decode([4, 5])


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=40, n_embd=48, n_layer=3, n_head=4)).save_pretrained(d)
    return d


def test_pretrained_parts(tmp_path, gpt2_dir):
    torch.manual_seed(0)
    enc = LineEncoder(EncoderConfig(dim=24, depth=1, heads=2, conv_stem=False), 32)
    head = CTCHead(24, V)
    enc.save_pretrained(tmp_path / "enc", ctc_head=head)
    cfg = tiny_cfg(ctc_head=True)
    cfg.encoder = EncoderConfig(pretrained=str(tmp_path / "enc"), freeze=True)
    cfg.decoder = DecoderConfig(n_layer=2, pretrained=str(gpt2_dir), freeze="top:1")
    model = OCRModel(cfg, V, 32)
    # architecture comes from the checkpoints
    assert model.cfg.encoder.dim == 24 and not model.cfg.encoder.conv_stem
    assert model.cfg.decoder.n_embd == 48 and model.cfg.decoder.n_positions == 40 and len(model.decoder.h) == 2
    torch.testing.assert_close(model.ctc_head.proj.weight, head.proj.weight, atol=0, rtol=0)
    hf = GPT2LMHeadModel.from_pretrained(gpt2_dir, local_files_only=True)
    torch.testing.assert_close(model.decoder.h[1].mlp.c_fc.weight, hf.transformer.h[1].mlp.c_fc.weight.t())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not any(p.requires_grad for p in model.decoder.h[0].parameters())
    assert all(p.requires_grad for p in model.decoder.h[1].parameters())
    assert all(p.requires_grad for p in model.connector.parameters())
    # the saved model no longer needs the part directories
    model.save_pretrained(tmp_path / "ocr")
    (tmp_path / "enc" / "model.safetensors").unlink()
    loaded = OCRModel.from_pretrained(tmp_path / "ocr")
    b = make_batch()
    torch.testing.assert_close(loaded.eval()(b).logits, model.eval()(b).logits, atol=0, rtol=0)


def test_generate_returns_hypotheses():
    torch.manual_seed(0)
    model = OCRModel(tiny_cfg(), V, 32, StubTokenizer(V))
    model.train()
    b = make_batch()
    hyps = model.generate(b.images, b.image_mask, max_new_tokens=5)
    assert model.training  # mode restored
    assert len(hyps) == 2
    for h in hyps:
        assert len(h.ids) <= 5 and all(i not in (0, 1, 2) for i in h.ids)
        assert h.text == StubTokenizer().decode(h.ids) and h.confidence <= 0
    beams = model.generate(b.images, b.image_mask, beam=3, max_new_tokens=5)
    assert len(beams) == 2 and all(h.confidence <= 0 for h in beams)


def test_gradients_reach_encoder_and_connector_through_frozen_decoder():
    torch.manual_seed(0)
    cfg = tiny_cfg(attach_layer=1)
    cfg.decoder.freeze = "all"
    model = OCRModel(cfg, V, 32)
    b = make_batch()
    logits = model(b).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), b.input_ids[:, 1:].reshape(-1))
    loss.backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert model.connector.body.proj[0].weight.grad.abs().sum() > 0
    assert model.encoder.patch.weight.grad.abs().sum() > 0


def test_a_model_directory_carries_its_image_settings(tmp_path):
    """How a model reads (its ImageConfig) is in its own config.json; a directory from before, with the
    settings only in the trainer's training.json, still loads with them; without either, the encoder's
    patch size decides."""
    import json

    from bridgeocr.config import ImageConfig
    from bridgeocr.models.load import load_checkpoint
    from conftest import tiny_ocr_model

    model = tiny_ocr_model()
    image = ImageConfig(height=16, max_width=300, width_multiple=4, width_policy="pad")
    model.save_pretrained(tmp_path / "new", image=image)
    assert json.loads((tmp_path / "new" / "config.json").read_text())["image"]["max_width"] == 300
    _, got, meta = load_checkpoint(tmp_path / "new", device="cpu")
    assert got == image and meta == {}
    model.save_pretrained(tmp_path / "old")  # settings only in training.json
    (tmp_path / "old" / "training.json").write_text(json.dumps({"image": {"height": 16, "max_width": 200}}))
    assert load_checkpoint(tmp_path / "old", device="cpu")[1].max_width == 200
    (tmp_path / "old" / "training.json").unlink()
    plain = load_checkpoint(tmp_path / "old", device="cpu")[1]
    assert (plain.height, plain.width_multiple) == (16, model.cfg.encoder.patch_width)


def test_one_rule_for_where_a_model_runs():
    import torch

    from bridgeocr.errors import ConfigError
    from bridgeocr.models.load import resolve_device

    assert resolve_device(None) == resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
