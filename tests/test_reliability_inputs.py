"""Issue 16, points 5 and 8: images read right (16-bit, float, transparency, size warnings) and
manifest paths and duplicates (outside the folder refused unless allowed, duplicates kept once)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from bridgeocr.cli import main
from bridgeocr.config import ImageConfig, load_config
from bridgeocr.data.manifest import open_manifest
from bridgeocr.data.preprocess import LineDataset, make_loader, preprocess_image
from bridgeocr.data.sample import LineSample, load_line_image, to_grayscale
from bridgeocr.data.sources import open_source
from bridgeocr.data.tokenizers import CharTokenizer
from bridgeocr.errors import DataError
from conftest import line_image
from conftest import tiny_ocr_model as tiny_model

CFG = ImageConfig(height=16, max_width=64, resize_width=40, width_multiple=8)


def _ink_mask(w=60, h=20):
    """A bool mask of a few strokes (True = ink)."""
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    d.rectangle([5, 4, 9, 15], fill=255)
    d.line([14, 4, 30, 15], fill=255, width=3)
    d.rectangle([36, 8, 52, 11], fill=255)
    return np.asarray(img) > 127


def _grey_line(w=60, h=20):
    """8-bit line: light paper (230), dark ink (20) and a mid grey band (128)."""
    arr = np.full((h, w), 230, np.uint8)
    arr[_ink_mask(w, h)] = 20
    arr[:, -6:-3] = 128
    return arr


def _read(path):
    return preprocess_image(LineSample("x", "ab", image_path=path).load_image(), CFG)


# ---- point 5: images read right -------------------------------------------------------------

def test_16bit_png_reads_like_the_8bit_version(tmp_path):
    arr8 = _grey_line()
    Image.fromarray(arr8).save(tmp_path / "l8.png")
    Image.fromarray(arr8.astype(np.uint16) * 257).save(tmp_path / "l16.png")
    with Image.open(tmp_path / "l16.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    x8, x16 = _read(tmp_path / "l8.png"), _read(tmp_path / "l16.png")
    assert x16.shape == x8.shape
    assert (x16 - x8).abs().max().item() <= 1 / 255 + 1e-6
    assert x16.max().item() > 0.8  # the ink is there (convert("L") clipped it all to white paper)


def test_16bit_ink_in_the_thousands_is_dark_and_small_values_are_8bit(tmp_path):
    mask = _ink_mask()
    arr = np.full(mask.shape, 60000, np.uint16)
    arr[mask] = 2000
    Image.fromarray(arr).save(tmp_path / "a.png")
    gray = np.asarray(load_line_image(tmp_path / "a.png"))
    assert gray[mask].max() <= 8 and gray[~mask].min() >= 232  # 2000/257 ~ 8, 60000/257 ~ 233
    # a 16-bit file whose values all fit 0..255 holds 8-bit values
    small = _grey_line().astype(np.uint16)
    Image.fromarray(small).save(tmp_path / "small.png")
    assert np.array_equal(np.asarray(load_line_image(tmp_path / "small.png")), _grey_line())


def test_32bit_int_and_float_images_scaled_by_range():
    arr8 = _grey_line()
    as_i = Image.fromarray(arr8.astype(np.int32) * 257)  # mode "I", 16-bit values
    assert as_i.mode == "I"
    assert np.abs(np.asarray(to_grayscale(as_i)).astype(int) - arr8).max() <= 1
    as_f = Image.fromarray(arr8.astype(np.float32) / 255.0)  # mode "F", 0..1
    assert as_f.mode == "F"
    assert np.abs(np.asarray(to_grayscale(as_f)).astype(int) - arr8).max() <= 1
    wide = Image.fromarray(arr8.astype(np.int32) * 1_000_000)  # beyond 16 bits: min..max stretched
    out = np.asarray(to_grayscale(wide)).astype(int)
    stretched = (arr8.astype(float) - 20) * 255 / 210
    assert np.abs(out - stretched).max() <= 1


def test_rgba_black_ink_on_transparent_background_is_black_on_white(tmp_path):
    mask = _ink_mask()
    arr = np.zeros(mask.shape + (4,), np.uint8)  # transparent black everywhere ...
    arr[mask, 3] = 255  # ... but the strokes are opaque
    Image.fromarray(arr, "RGBA").save(tmp_path / "rgba.png")
    gray = np.asarray(load_line_image(tmp_path / "rgba.png"))
    assert gray[~mask].min() == 255 and gray[mask].max() == 0
    x = _read(tmp_path / "rgba.png")
    assert x[0, :, -1].max() == 0.0 and x.max() > 0.9  # paper 0, ink 1 after preprocessing


def test_la_with_ink_only_in_alpha(tmp_path):
    mask = _ink_mask()
    for colour in (0, 255):  # black ink, and white ink meant for a dark background
        la = np.zeros(mask.shape + (2,), np.uint8)
        la[..., 0] = colour
        la[mask, 1] = 255
        path = tmp_path / f"la{colour}.png"
        Image.fromarray(la, "LA").save(path)
        gray = np.asarray(load_line_image(path))
        assert gray[~mask].min() == 255 and gray[mask].max() == 0, colour


def test_palette_with_transparent_background(tmp_path):
    mask = _ink_mask()
    p = Image.fromarray(mask.astype(np.uint8), "P")  # index 0 = background, 1 = ink
    p.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)  # both black; index 0 transparent
    p.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P" and "transparency" in im.info
    gray = np.asarray(load_line_image(tmp_path / "p.png"))
    assert gray[~mask].min() == 255 and gray[mask].max() == 0


def test_ordinary_8bit_images_unchanged():
    rgb = Image.fromarray(np.stack([_grey_line(), _grey_line()[::-1], _grey_line()], -1), "RGB")
    for img in (line_image(60, 20), rgb, rgb.convert("RGBA")):  # RGBA fully opaque too
        assert np.array_equal(np.asarray(to_grayscale(img)), np.asarray(img.convert("L")))
        ref = torch.from_numpy(1.0 - np.asarray(img.convert("L").resize((48, 16), Image.Resampling.BILINEAR),
                                                dtype=np.float32) / 255.0).unsqueeze(0)
        assert torch.equal(preprocess_image(img, CFG), ref)


def _warn_dataset(tmp_path):
    files = {"tiny": (1, 1), "narrow": (4, 40), "squeezed": (2000, 10), "fine": (60, 20)}
    src = []
    for name, size in files.items():
        path = tmp_path / f"{name}.png"
        line_image(*size).save(path)
        src.append(LineSample(name, "ab", image_path=path, origin=f"m.tsv:{len(src) + 1}"))
    return src


def test_size_warnings_name_the_file_once(tmp_path, capsys):
    src = _warn_dataset(tmp_path)
    ds = LineDataset(src, CFG, CharTokenizer.build(["ab"]))
    for _epoch in range(3):
        items = [ds[i] for i in range(len(ds))]
    assert all(it is not None for it in items)  # warned about, still read
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("warning: ") for line in err)
    tiny, narrow, squeezed = err
    assert str(tmp_path / "tiny.png") in tiny and "m.tsv:1" in tiny and "degenerate image 1x1" in tiny
    assert str(tmp_path / "narrow.png") in narrow and "narrower than one 8 px encoder patch" in narrow
    assert str(tmp_path / "squeezed.png") in squeezed and "squeezed 50.0x" in squeezed
    assert not any("fine.png" in line for line in err)
    assert ds.warn_messages == err
    ds.widths()  # the headers again: nothing new
    assert capsys.readouterr().err == ""


def test_loader_warns_from_headers_once(tmp_path, capsys):
    src = _warn_dataset(tmp_path)
    loader = make_loader(src, CFG, CharTokenizer.build(["ab"]), batch_size=2, shuffle=True)
    assert len(capsys.readouterr().err.splitlines()) == 3  # at construction, from the headers
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        assert sum(len(b) for b in loader) == 4
    assert capsys.readouterr().err == ""  # not once per epoch
    # a second dataset over the same files in this process: still once per file
    LineDataset(src, CFG, CharTokenizer.build(["ab"])).widths()
    assert capsys.readouterr().err == ""


def test_squeeze_warning_only_beyond_4x(tmp_path, capsys):
    ok, over = tmp_path / "ok.png", tmp_path / "over.png"
    line_image(160, 10).save(ok)  # 256 px at height 16: 4.0x max_width 64, not more
    line_image(161, 10).save(over)
    ds = LineDataset([LineSample("ok", "ab", image_path=ok), LineSample("over", "ab", image_path=over)],
                     CFG, CharTokenizer.build(["ab"]))
    ds.widths()
    err = capsys.readouterr().err
    assert "over.png" in err and "ok.png" not in err


# ---- point 8: paths and duplicates ----------------------------------------------------------

@pytest.fixture
def outside(tmp_path, make_line_png):
    """ds/m.tsv naming ds/a.png, ../x.png, an absolute path elsewhere and a symlinked folder."""
    d = tmp_path / "ds"
    make_line_png(d / "a.png")
    make_line_png(tmp_path / "x.png")
    make_line_png(tmp_path / "elsewhere" / "abs.png")
    make_line_png(tmp_path / "store" / "s.png")
    os.symlink(tmp_path / "store", d / "linked")
    absolute = tmp_path / "elsewhere" / "abs.png"
    (d / "m.tsv").write_text(f"a.png\tinside\n../x.png\tup\n{absolute}\tabsolute\nlinked/s.png\tsymlinked\n"
                             "img/../../x.png\tup again\n")
    rows = [{"image": "a.png", "text": "inside"}, {"image": "../x.png", "text": "up"},
            {"image": str(absolute), "text": "absolute"}]
    (d / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d


def test_outside_paths_refused_with_file_line(outside):
    m = outside / "m.tsv"
    src = open_manifest(m)
    assert [s.text for s in src] == ["inside", "symlinked"]  # the symlinked folder is inside, lexically
    assert len(src.problems) == 3 and src.missing == 0
    for lineno, rel in ((2, "../x.png"), (3, str(outside.parent / "elsewhere" / "abs.png")),
                        (5, "img/../../x.png")):
        assert any(p.startswith(f"{m}:{lineno}: ") and "outside" in p and rel in p for p in src.problems)
    j = open_source(outside / "m.jsonl")
    assert [s.text for s in j] == ["inside"]
    assert [p.split(": ")[0] for p in j.problems] == [f"{outside / 'm.jsonl'}:2", f"{outside / 'm.jsonl'}:3"]
    with pytest.raises(DataError, match="m.tsv:2"):
        open_manifest(m, strict=True)


def test_outside_paths_accepted_when_allowed(outside):
    src = open_source(outside / "m.tsv", allow_outside=True)
    assert [s.text for s in src] == ["inside", "up", "absolute", "symlinked"]
    assert src[1].image_path.is_file() and src[2].image_path == outside.parent / "elsewhere" / "abs.png"
    assert len(src.problems) == 1 and "duplicate of line 2" in src.problems[0]  # img/../../x.png = ../x.png
    assert [s.text for s in open_manifest(outside / "m.jsonl", allow_outside=True)] == ["inside", "up", "absolute"]


def test_config_key_reaches_the_training_reader(outside):
    from bridgeocr.train.run import open_split

    cfg = load_config(None, [f"data.source={outside / 'm.tsv'}"])
    assert cfg.data.allow_outside is False
    assert len(open_split(cfg, None, None)) == 2
    cfg = load_config(None, [f"data.source={outside / 'm.tsv'}", "data.allow_outside=true"])
    assert len(open_split(cfg, None, None)) == 4


def test_duplicate_rows_and_ids_kept_once(tmp_path, make_line_png):
    for name in ("a.png", "b.png", "c.png", "c.jpg"):
        make_line_png(tmp_path / name)
    m = tmp_path / "m.tsv"
    m.write_text("a.png\tone\nsub/../a.png\ttwo\nb.png\tthree\na.png\tfour\n")
    src = open_manifest(m)
    assert [s.text for s in src] == ["one", "three"]
    assert src.problems[0].startswith(f"{m}:2: duplicate of line 1")
    assert src.problems[1].startswith(f"{m}:4: duplicate of line 1")
    assert len(src.problems) == 2
    rows = [{"image": "a.png", "text": "one", "id": "x"}, {"image": "b.png", "text": "two", "id": "x"},
            {"image": "c.png", "text": "three"}, {"image": "c.jpg", "text": "four"},  # derived ids: both "c"
            {"image": "b.png", "text": "five", "id": "y"}]
    j = tmp_path / "m.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    src = open_manifest(j)
    assert [(s.id, s.text) for s in src] == [("x", "one"), ("c", "three"), ("y", "five")]  # b.png: its first row was refused
    assert [p.split(" (")[0] for p in src.problems] == [f"{j}:2: duplicate of line 1", f"{j}:4: duplicate of line 3"]
    with pytest.raises(DataError, match="duplicate of line 1"):
        open_manifest(j, strict=True)


def test_data_check_reports_outside_paths_and_duplicates(outside, make_line_png, capsys):
    m = outside / "m.tsv"
    with m.open("a") as f:
        f.write("a.png\tagain\n")
    Image.new("L", (1, 1), 255).save(outside / "dot.png")
    with m.open("a") as f:
        f.write("dot.png\tdot\n")
    code = main(["data", "check", str(m)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{m}:2: image path '../x.png' leads outside" in out
    assert f"{m}:3: image path" in out and f"{m}:5: image path" in out
    assert f"{m}:6: duplicate of line 1" in out
    assert "dot.png" in out and f"{m}:7): degenerate image 1x1" in out
    assert "5 problem(s)" in out
    code = main(["data", "check", str(m), "--allow-outside"])
    out = capsys.readouterr().out
    assert code == 1 and "leads outside" not in out
    assert f"{m}:5: duplicate of line 2" in out and f"{m}:6: duplicate of line 1" in out
    assert "3 problem(s)" in out
    clean = outside / "clean.tsv"
    clean.write_text("a.png\tinside\n../x.png\tup\n")
    assert main(["data", "check", str(clean)]) == 1
    capsys.readouterr()
    assert main(["data", "check", str(clean), "--allow-outside"]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_evaluate_refuses_outside_rows_unless_allowed(outside, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    tiny_model().save_pretrained(ckpt)
    data = outside / "ev.tsv"
    data.write_text("a.png\tab\n../x.png\tab\na.png\tab\n")
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--split", "all",
                 "--out", str(tmp_path / "ev1")]) == 0
    err = capsys.readouterr().err
    assert "dropped 2 of 3 rows (1 outside the folder, 1 duplicate)" in err and f"{data}:2" in err
    m = json.loads((tmp_path / "ev1" / "metrics.json").read_text())
    assert m["n"] == 1 and m["dropped"] == {"outside the folder": 1, "duplicate": 1}
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--split", "all",
                 "--allow-outside", "--out", str(tmp_path / "ev2")]) == 0
    err = capsys.readouterr().err
    assert "dropped 1 of 3 rows (1 duplicate)" in err and f"{data}:3: duplicate of line 1" in err
    assert json.loads((tmp_path / "ev2" / "metrics.json").read_text())["n"] == 2
