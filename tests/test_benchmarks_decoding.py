"""benchmarks/decoding.py: every decoding of a model in one table, set specs, the goals read off the rows
(a tiny model on box lines; no peer is run here)."""

from __future__ import annotations

import argparse

import pytest

from conftest import load_script, make_box_dataset, tiny_ocr_model


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/decoding.py", "decoding_bench")


def test_set_specs(bench):
    assert bench.parse_set("long=runs/data/ehri_lines@test:50") == ("long", "runs/data/ehri_lines", "test", 50)
    assert bench.parse_set("p=data/m.tsv") == ("p", "data/m.tsv", None, 0)
    assert bench.parse_set("w=C:/data@val") == ("w", "C:/data", "val", 0)  # a colon that is no length
    with pytest.raises(SystemExit):
        bench.parse_set("no-name")


def test_every_decoding_in_one_table_and_the_goals(bench, tmp_path):
    from bridgeocr.config import ImageConfig

    make_box_dataset(tmp_path, n=12, splits=("test",))
    model = tiny_ocr_model(ctc=True).eval()
    model.cfg.decoding = "joint"  # as the shipped model reads
    image_cfg = ImageConfig(height=16, width_multiple=4)
    args = argparse.Namespace(max_samples=0, batch_sizes=[1, 4], repeats=2, pre_beam=3, joint_beams=[2],
                              joint_weights=None, no_peers=True, peer_python=None, rows=None)
    result = bench.run_set("box", str(tmp_path / "manifest.tsv"), "test", 0, args, model, image_cfg, tmp_path)
    systems = {r["system"] for r in result["rows"]}
    assert {"bridgeocr CTC head", "bridgeocr GPT greedy", "bridgeocr fast (joint beam 1, draft and check)",
            "bridgeocr joint beam 4, draft first, pre-beam 3", "bridgeocr joint beam 4, full search (--full-search)",
            "bridgeocr joint beam 2, CTC weight 0.5"} <= systems
    assert [s for s in systems if s.endswith("(default)")] == ["bridgeocr joint beam 4, draft first (default)"]
    assert all(r["lines"] == 12 and len(r["lines_per_s"]) == 2 for r in result["rows"])
    assert result["lengths"] and result["lengths"][0]["lines"] >= 8  # the default decoding, by line length
    assert "| bridgeocr CTC head | 4 |" in bench.table(result)
    assert bench.goals(result, 4) == ["box: no Tesseract row, goals not checked"]
    tess = {"system": "tesseract", "batch": 1, "lines": 12, "cer": 0.1, "wer": 0.2, "lines_per_s": [1e9],
            "decoding": "tesseract"}
    result["rows"].append(tess)
    checked = bench.goals(result, 4)
    assert any("full search (--full-search): 0.00x Tesseract's lines/s, CER +0.0% vs the full joint search" in line
               for line in checked)  # the full search is the reference CER
    assert checked and all(line.endswith(("missed (goal >= 1.0x, <= +2 %)", "missed (goal >= 3x)"))
                           for line in checked)  # nothing reads at a billion lines/s


def test_rows_picks_our_rows_by_name(bench, tmp_path):
    """--rows: only the named rows, and the timings by line length (of the default row) only with it."""
    from bridgeocr.config import ImageConfig

    make_box_dataset(tmp_path, n=12, splits=("test",))
    model = tiny_ocr_model(ctc=True).eval()
    model.cfg.decoding = "joint"
    args = argparse.Namespace(max_samples=0, batch_sizes=[4], repeats=1, pre_beam=3, joint_beams=None,
                              joint_weights=None, no_peers=True, peer_python=None, rows=["joint", "ctc"])
    result = bench.run_set("box", str(tmp_path / "manifest.tsv"), "test", 0, args, model,
                           ImageConfig(height=16, width_multiple=4), tmp_path)
    assert [r["system"] for r in result["rows"]] == ["bridgeocr joint beam 4, draft first (default)",
                                                     "bridgeocr CTC head"]
    assert result["lengths"]
    args.rows = ["ctc"]
    alone = bench.run_set("box", str(tmp_path / "manifest.tsv"), "test", 0, args, model,
                          ImageConfig(height=16, width_multiple=4), tmp_path)
    assert [r["system"] for r in alone["rows"]] == ["bridgeocr CTC head"] and alone["lengths"] == []
    assert bench.row_key("joint", 16, None) == "prebeam" and bench.row_key("ctc", None, 0.0) == "ctc-once"
    assert {bench.row_key(how, pb, widen) for _, how, _, pb, _, widen in bench.decodings(model, 3)} <= set(bench.ROW_KEYS)
    tess = {"system": "tesseract", "batch": 1, "lines": 12, "cer": 0.1, "wer": 0.2, "lines_per_s": [1e-9],
            "decoding": "tesseract"}
    result["rows"].append(tess)  # no full-search row to compare the CER with: the speed alone is judged
    assert bench.goals(result, 4)[0].endswith("speed met, CER not checked (no full-search row)")
