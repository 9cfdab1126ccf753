"""Shipped parts: `shipped:` names resolve, and a float16 export loads back with the same predictions."""

import pytest
import torch
from safetensors.torch import load_file

from bridgeocr.config import ModelConfig
from bridgeocr.data.sample import Batch
from bridgeocr.errors import ConfigError
from bridgeocr.models.ocr import OCRModel
from bridgeocr.shipped import HALF_FROM, SHIPPED_DIR, export_shipped, resolve_pretrained


def test_resolve_passes_paths_and_rejects_unknown_names(tmp_path):
    assert resolve_pretrained(None) is None
    assert resolve_pretrained(tmp_path) == tmp_path
    with pytest.raises(ConfigError, match="no shipped model"):
        resolve_pretrained("shipped:does_not_exist")


def test_every_shipped_part_has_a_card():
    for folder in (p for p in SHIPPED_DIR.glob("*") if p.is_dir()):
        assert (folder / "MODEL_CARD.md").is_file(), folder
        assert (folder / "config.json").is_file(), folder


def test_fp16_export_round_trip(tmp_path):
    cfg = ModelConfig()
    cfg.encoder.dim, cfg.encoder.depth, cfg.encoder.heads = 32, 1, 2
    cfg.decoder.n_layer, cfg.decoder.n_embd, cfg.decoder.n_head = 1, 32, 2
    cfg.connector.kind = "linear_ln"
    torch.manual_seed(0)
    model = OCRModel(cfg, vocab_size=20, image_height=32).eval()
    model.save_pretrained(tmp_path / "full")
    shipped = export_shipped(tmp_path / "full", tmp_path / "ship", "tiny", "made by a test")
    assert (shipped / "MODEL_CARD.md").read_text().startswith("# tiny")
    assert (shipped / "model.safetensors").stat().st_size < 0.6 * (tmp_path / "full" / "model.safetensors").stat().st_size
    stored = load_file(str(shipped / "model.safetensors"))
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    assert any(v.dtype == torch.float16 for v in stored.values())
    for k, v in stored.items():  # large weights halved; small tensors (scalars, norms, biases) kept exact
        if full[k].is_floating_point() and full[k].numel() < HALF_FROM:
            assert v.dtype == torch.float32 and torch.equal(v, full[k]), k
        elif full[k].is_floating_point():
            assert v.dtype == torch.float16, k
    loaded = OCRModel.from_pretrained(shipped).eval()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    images, mask = torch.rand(2, 1, 32, 64), torch.ones(2, 64, dtype=torch.bool)
    ids = torch.tensor([[1, 5, 6, 2]])
    batch = Batch(images[:1], mask[:1], ids, torch.ones_like(ids, dtype=torch.bool))
    assert torch.allclose(model(batch).logits, loaded(batch).logits, atol=5e-2)


def _printed_line(text: str, family: str, size: int, width: int, height: int, ink: int):
    """A clean printed line in a matplotlib-bundled font (found on every machine)."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("L", (width, height), 255)
    ImageDraw.Draw(img).text((8, 6), text, font=ImageFont.truetype(font_manager.findfont(family), size), fill=ink)
    return img


def test_shipped_encoder_reads_a_printed_line_out_of_the_box():
    """shipped:encoder_ctc (PP-OCR based) reads a clean line with its CTC head alone, at its own 48 px."""
    from bridgeocr.api import BridgeOCR
    from bridgeocr.eval.metrics import cer

    text = "The quick brown fox jumps over the lazy dog, 1897."
    img = _printed_line(text, "DejaVu Serif", 28, 760, 48, ink=20)
    ocr = BridgeOCR.from_pretrained("shipped:encoder_ctc")
    assert ocr.image_cfg.height == 48
    assert cer([text], [ocr.recognize([img], decoding="ctc")[0].text]) < 0.1


def test_the_fast_model_reads_32_px_lines_as_the_default_model_reads_48():
    """shipped:ocr_fast is shipped:ocr_default on an encoder re-targeted to 32 px: the same GPT and decoding,
    lines as wide as before (width scale 1.875 at 32 px = 1.25 at 48), and it reads a printed line."""
    from bridgeocr.api import BridgeOCR
    from bridgeocr.eval.metrics import cer

    fast, default = BridgeOCR.from_pretrained("shipped:ocr_fast"), BridgeOCR.from_pretrained("shipped:ocr_default")
    assert (fast.image_cfg.height, default.image_cfg.height) == (32, 48)
    assert fast.image_cfg.width_scale * 32 == pytest.approx(default.image_cfg.width_scale * 48)
    assert fast.model.cfg.decoding == default.model.cfg.decoding == "joint"
    text = "Received of Mr. Hooker the sum of 12 shillings."
    img = _printed_line(text, "DejaVu Sans", 26, 700, 44, ink=30)
    assert cer([text], [fast.recognize([img])[0].text]) < 0.1
