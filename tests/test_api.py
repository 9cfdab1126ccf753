import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import bridgeocr.api as api
from bridgeocr import BridgeOCR
from bridgeocr.cli import main
from bridgeocr.errors import BridgeOCRError
from conftest import tiny_ocr_model as tiny_model


def line(width=60, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("L", (width, 24), 255)
    d = ImageDraw.Draw(img)
    for x in range(4, width - 8, 9):
        d.rectangle([x, int(rng.integers(3, 8)), x + 5, int(rng.integers(14, 20))], fill=0)
    return img


@pytest.fixture()
def model_dir(tmp_path):
    d = tmp_path / "model"
    tiny_model(ctc=True).save_pretrained(d)
    return d


def test_recognize_pil_paths_arrays_in_order(model_dir, tmp_path):
    ocr = BridgeOCR.from_pretrained(model_dir, device="cpu")
    imgs = [line(40, 0), line(90, 1), line(60, 2)]
    p = tmp_path / "a.png"
    imgs[1].save(p)
    arr_u8 = np.asarray(imgs[2])
    arr_f = arr_u8.astype(np.float32) / 255.0
    out = ocr.recognize([imgs[0], p, arr_u8, arr_f, torch.from_numpy(arr_f)], batch_size=2)
    assert len(out) == 5 and all(isinstance(r, api.Recognition) for r in out)
    assert all(isinstance(r.text, str) and r.confidence <= 0 for r in out)
    singles = [ocr.recognize(im)[0] for im in imgs]
    assert [r.text for r in out[:3]] == [r.text for r in singles]  # batching/sorting keeps input order
    assert out[2].text == out[3].text == out[4].text  # uint8, float and tensor arrays agree
    assert out[1].source == str(p)
    assert 0 < out[0].probability <= 1
    ctc = ocr.recognize(imgs, decoding="ctc")
    assert len(ctc) == 3 and all(isinstance(r.text, str) for r in ctc)


def test_ctc_without_head_is_a_clear_error(tmp_path):
    d = tmp_path / "noctc"
    tiny_model(ctc=False).save_pretrained(d)
    with pytest.raises(BridgeOCRError, match="no CTC head"):
        BridgeOCR.from_pretrained(d, device="cpu").recognize([line()], decoding="ctc")


def test_no_shipped_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "DEFAULT_MODEL_DIR", tmp_path / "missing")
    with pytest.raises(BridgeOCRError, match="no model shipped"):
        BridgeOCR.from_pretrained()
    assert main(["recognize", str(tmp_path)]) in (1, 2)


def test_recognize_cli_formats_folders_globs_and_bad_files(model_dir, tmp_path, capsys):
    folder = tmp_path / "lines"
    folder.mkdir()
    for i, w in enumerate([50, 70, 30]):
        line(w, i).save(folder / f"l{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "zz_broken.png").write_bytes(b"garbage")

    code = main(["recognize", str(folder / "l0.png"), str(folder / "l[12].png"), "--checkpoint", str(model_dir),
                 "--format", "jsonl", "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    recs = [json.loads(x) for x in out.strip().splitlines()]
    assert [r["path"] for r in recs] == [str(folder / f"l{i}.png") for i in range(3)]
    assert all({"text", "confidence"} <= set(r) for r in recs)

    code = main(["recognize", str(folder), "--checkpoint", str(model_dir)])  # text format, sorted folder
    out, err = capsys.readouterr()
    assert code == 1  # the broken file
    assert "error: " in err and "zz_broken.png" in err and "notes.txt" not in err
    rows = out.strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith(f"{folder / 'l0.png'}: ") and rows[0].endswith(")")

    code = main(["recognize", str(folder / "l2.png"), str(tmp_path / "nothere.png"), "--checkpoint",
                 str(model_dir), "--format", "tsv", "--ctc"])
    out, err = capsys.readouterr()
    assert code == 1 and "nothere.png" in err
    rows = out.strip().splitlines()
    assert rows[0] == "path\ttext\tconfidence" and rows[1].startswith(str(folder / "l2.png") + "\t")


def test_model_config_chooses_the_default_decoding(model_dir):
    ocr = BridgeOCR.from_pretrained(model_dir, device="cpu")
    imgs = [line(40, 0), line(90, 1)]
    gpt = [r.text for r in ocr.recognize(imgs, decoding="gpt")]
    ctc = [r.text for r in ocr.recognize(imgs, decoding="ctc")]
    assert [r.text for r in ocr.recognize(imgs)] == gpt  # decoding: gpt is the default
    ocr.model.cfg.decoding = "ctc"
    assert [r.text for r in ocr.recognize(imgs)] == ctc
    assert [r.text for r in ocr.recognize(imgs, decoding="gpt")] == gpt  # an explicit choice wins
