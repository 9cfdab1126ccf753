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
