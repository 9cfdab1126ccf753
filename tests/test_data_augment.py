import pickle
import random
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from bridgeocr.data.augment import OPS, AugmentConfig, Augmenter, augment, paper_colour, preset
from bridgeocr.errors import ConfigError

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
OP_NAMES = [name for name, _ in OPS]


def text_line(paper: int = 255, ink: int = 20, width: int = 240, height: int = 32) -> Image.Image:
    """A printed line with margins on all sides (so borders are paper)."""
    img = Image.new("L", (width, height), paper)
    font = ImageFont.truetype(str(FONT), 18)
    ImageDraw.Draw(img).text((12, height // 2), "Hello, augmented 0123", fill=ink, font=font, anchor="lm")
    return img


def only(name: str, **kw) -> AugmentConfig:
    """Every line augmented, by the one op `name` only."""
    probs = {f"{n}_p": (1.0 if n == name else 0.0) for n in OP_NAMES}
    return AugmentConfig(p=1.0, **probs, **kw)


def ink_pixels(img: Image.Image, paper: int, ink: int) -> int:
    return int((np.asarray(img) < (paper + ink) / 2).sum())


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_presets_and_validation():
    assert preset("print").elastic_p == 0 and preset("print").ink_width_p == 0
    hw = preset("handwriting")
    assert hw.elastic_p > 0 and hw.ink_width_p > 0 and hw.blur_p > 0 and hw.jpeg_p > 0
    assert preset("none").p == 0 and AugmentConfig().p == 0.8
    with pytest.raises(ConfigError, match="nope"):
        preset("nope")
    with pytest.raises(ConfigError, match="blur_p"):
        AugmentConfig(blur_p=1.5)
    with pytest.raises(ConfigError, match="jpeg_quality"):
        AugmentConfig(jpeg_quality=(70, 20))


def test_augmenter_deterministic_per_key():
    img = text_line()
    aug = Augmenter("handwriting", seed=3)
    outs = [aug(img, (0, i)) for i in range(8)]
    again = pickle.loads(pickle.dumps(aug))  # as a DataLoader worker gets it
    assert all(same(o, again(img, (0, i))) for i, o in enumerate(outs))
    assert all(same(o, aug(img, (0, i))) for i, o in enumerate(outs))  # no state carried between calls
    # different keys (index, epoch) and seeds give different augmentations
    assert len({np.asarray(o).tobytes() + bytes(o.size) for o in outs}) >= 6
    assert not all(same(a, b) for a, b in zip(outs, [aug(img, (1, i)) for i in range(8)]))
    other = Augmenter("handwriting", seed=4)
    assert not all(same(a, b) for a, b in zip(outs, [other(img, (0, i)) for i in range(8)]))
    # keys that only differ by trailing zeros or 32-bit splits are different streams
    gens = [aug.generator(k).random() for k in [(1,), (1, 0), (2**32,), (0, 1), ()]]
    assert len(set(gens)) == 5
    with pytest.raises(TypeError):
        aug(img, ("a",))


def test_augment_deterministic_for_rng_state():
    img = text_line()
    cfg = preset("handwriting")
    assert same(augment(img, np.random.default_rng(7), cfg), augment(img, np.random.default_rng(7), cfg))
    assert same(augment(img, random.Random(7), cfg), augment(img, random.Random(7), cfg))


def test_mode_and_height_kept_and_ink_remains():
    img = text_line()
    aug = Augmenter(AugmentConfig(p=1.0, **{f"{n}_p": 0.7 for n in OP_NAMES}), seed=0)
    for i in range(12):
        out = aug(img, (i,))
        assert out.mode == "L" and out.height == img.height and out.width > 0
        assert ink_pixels(out, paper_colour(out), int(np.percentile(out, 0.5))) > 50
    rgb = aug(img.convert("RGB"), (0,))
    assert rgb.mode == "L" and rgb.height == img.height


def test_p_zero_is_identity():
    img = text_line()
    for cfg in (preset("none"), AugmentConfig(p=0.0, **{f"{n}_p": 1.0 for n in OP_NAMES})):
        out = augment(img, np.random.default_rng(0), cfg)
        assert same(out, img) and out is not img
    empty = Image.new("L", (0, 32))
    assert augment(empty, np.random.default_rng(0), only("rotate")).size == (0, 32)


@pytest.mark.parametrize("name", OP_NAMES)
def test_each_op_changes_and_keeps_ink(name):
    img = text_line(paper=230, ink=30)
    before = ink_pixels(img, 230, 30)
    for seed in range(3):
        out = augment(img, np.random.default_rng(seed), only(name))
        assert out.mode == "L" and out.height == img.height
        assert not same(out, img), f"{name} (seed {seed}) left the line unchanged"
        paper, ink = paper_colour(out), float(np.percentile(out, 0.5))
        assert paper - ink > 24, f"{name} (seed {seed}) washed the ink out"
        assert ink_pixels(out, paper, ink) > 0.25 * before * out.width / img.width


def test_thinning_never_erases_hairlines():
    img = Image.new("L", (120, 24), 255)
    ImageDraw.Draw(img).line([(10, 12), (110, 12)], fill=0, width=1)  # 1 px strokes: MaxFilter erases them
    cfg = only("ink_width", ink_width=(1.0, 1.0))
    for seed in range(6):
        out = augment(img, np.random.default_rng(seed), cfg)
        paper, ink = paper_colour(out), int(np.percentile(out, 0.5))
        assert paper - ink >= 100 and ink_pixels(out, paper, ink) >= 100


@pytest.mark.parametrize("name", ["elastic", "rotate", "shear"])
def test_geometric_ops_fill_borders_with_paper(name):
    img = text_line(paper=200, ink=40)
    for seed in range(3):
        out = np.asarray(augment(img, np.random.default_rng(seed), only(name)), dtype=np.int16)
        border = np.concatenate([out[0], out[-1], out[:, 0], out[:, -1]])
        assert np.abs(border - 200).max() <= 2, f"{name} (seed {seed}): border not paper-coloured"


def test_contrast_makes_faded_ink_and_grey_paper():
    img = text_line()
    cfg = only("contrast", contrast=(0.35, 0.35), paper=(160.0, 160.0))
    out = augment(img, np.random.default_rng(0), cfg)
    assert abs(paper_colour(out) - 160) <= 1
    assert np.asarray(out).min() > 60  # ink lightened from 20 towards the paper
