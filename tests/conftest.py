"""Shared fixtures for the data tests: tiny line images and the location of ../shared/data."""

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def line_image(width: int = 60, height: int = 20, text: str = "ab") -> Image.Image:
    """A white line image with dark ink (grayscale)."""
    img = Image.new("L", (width, height), 255)
    ImageDraw.Draw(img).text((2, 2), text, fill=0)
    return img


@pytest.fixture
def make_line_png():
    def make(path: Path, width: int = 60, height: int = 20, text: str = "ab") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        line_image(width, height, text).save(path)
        return path

    return make


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent")
    return SHARED_DATA


def tiny_ocr_model(ctc: bool = False):
    """A tiny untrained OCRModel (16 px lines, char vocabulary "abcd xyz") for API and evaluation tests."""
    import torch

    from bridgeocr.config import ModelConfig
    from bridgeocr.data.tokenizers import CharTokenizer
    from bridgeocr.models.ocr import OCRModel

    torch.manual_seed(0)
    m = ModelConfig()
    m.encoder.dim, m.encoder.depth, m.encoder.heads = 32, 1, 2
    m.encoder.patch_height, m.encoder.patch_width, m.encoder.conv_stem = 16, 4, False
    m.connector.kind = "linear"
    m.decoder.n_layer, m.decoder.n_embd, m.decoder.n_head, m.decoder.n_positions = 1, 32, 2, 64
    m.max_text_tokens = 12
    m.ctc_head = ctc
    tok = CharTokenizer.build(["abcd xyz"])
    return OCRModel(m, tok.vocab_size, image_height=16, tokenizer=tok)
