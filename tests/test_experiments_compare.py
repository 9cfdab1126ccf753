"""compare: table from finished run dirs (tolerant reader), Pareto front, plots, clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bridgeocr.errors import BridgeOCRError
from bridgeocr.experiments import compare as cmp


def make_run(root: Path, name: str, metrics: dict, connector="linear_gelu_ln", reduce_k=1, alpha=0.0,
             tau=1.0, gap: dict | None = None, curves: bool = True) -> Path:
    d = root / name
    d.mkdir(parents=True)
    reduce = "pool" if reduce_k > 1 else "null"
    (d / "config.yaml").write_text(
        f"model:\n  connector:\n    kind: {connector}\n    reduce: {reduce}\n    reduce_k: {reduce_k}\n"
        f"  attach_layer: 0\ndata:\n  image:\n    width_policy: pad\n"
        f"loss:\n  kd_alpha: {alpha}\n  kd_tau: {tau}\ntrain:\n  name: {name}\n")
    (d / "metrics.json").write_text(json.dumps(metrics))
    if gap is not None:
        (d / "loss_gap.json").write_text(json.dumps(gap))
    if curves:
        (d / "metrics.csv").write_text(
            "epoch,step,train/loss,val/cer\n0,0,3.0,\n0,10,2.0,\n0,10,,0.5\n0,20,1.5,\n0,20,,0.3\n")
    return d


GAP = {"total_samples": 3, "reference": 5.7355, "connector": 6.9723, "downsampled": 8.3487, "kl": 0.9,
       "gaps": {"connector_minus_reference": 1.2368, "downsampled_minus_reference": 2.6132,
                "connector_minus_downsampled": -1.3764}}


def test_table_plots_and_tolerant_keys(tmp_path):
    a = make_run(tmp_path, "lin", {"val_cer": 0.0333, "val_wer": 0.1194, "test_cer": 0.0468, "test_wer": 0.1596,
                                   "params": 2_345_678, "visual_tokens": 96.0, "train_lines_per_s": 40.5,
                                   "decode_lines_per_s": 12.0}, gap=GAP)
    # nested / slash spellings, KD on, reduce
    b = make_run(tmp_path, "qf", {"val/cer": 0.0326, "test": {"cer": 0.0451, "wer": 0.1532},
                                  "decode_lines_per_s": 30.0}, connector="linear_ln", reduce_k=4,
                 alpha=0.3, tau=2.0)
    c = make_run(tmp_path, "slowbad", {"test_cer": 0.2, "decode_lines_per_s": 5.0}, curves=False)
    out = tmp_path / "cmp"
    assert cmp.compare_cli([str(a), str(b), str(c)], str(out)) == 0
    md = (out / "compare.md").read_text()
    lines = md.splitlines()
    assert len(lines) == 2 + 3
    row_a = lines[2]
    assert "| lin | linear_gelu_ln |" in row_a and "2.35M" in row_a and "0.0468" in row_a
    assert "1.2368" in row_a and "2.6132" in row_a and "off" in row_a
    row_b = lines[3]
    assert "linear_ln +pool4" in row_b and "0.3/2" in row_b and "0.0451" in row_b and "0.1532" in row_b
    assert cmp.DASH in row_b  # no params, no loss gap
    with (out / "compare.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[1]["test_cer"] == "0.0451" and rows[1]["params"] == ""
    for png in ("frontier.png", "curves.png", "loss_gaps.png"):
        assert (out / png).stat().st_size > 1000


def test_curves_from_lightning_csv(tmp_path):
    d = make_run(tmp_path, "r", {"test_cer": 0.1})
    curves = cmp.read_curves(d / "metrics.csv")
    assert curves["train_loss"] == [(0.0, 3.0), (10.0, 2.0), (20.0, 1.5)]
    assert curves["val_cer"] == [(10.0, 0.5), (20.0, 0.3)]
    assert cmp.read_curves(tmp_path / "missing.csv") == {"train_loss": [], "val_cer": []}


def test_pareto_front():
    # (lines/s, CER): c is dominated by b (faster and better); a is the slow accurate end
    pts = [(10.0, 0.03), (30.0, 0.05), (20.0, 0.06), (50.0, 0.2), (50.0, 0.3)]
    assert cmp.pareto_front(pts) == [0, 1, 3]


def test_not_a_run_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BridgeOCRError, match="not a run directory"):
        cmp.compare_cli([str(tmp_path / "empty")], str(tmp_path / "o"))
    with pytest.raises(BridgeOCRError, match="no such run directory"):
        cmp.compare_cli([str(tmp_path / "nope")], None)
    from bridgeocr.cli import main

    assert main(["compare", str(tmp_path / "empty")]) == 2


def test_a_sweep_folder_expands_to_its_runs_and_default_out(tmp_path, capsys):
    make_run(tmp_path / "sw", "a", {"test_cer": 0.1}, curves=False)
    make_run(tmp_path / "sw", "b", {"test_cer": 0.2}, curves=False)
    assert cmp.compare_cli([str(tmp_path / "sw")], None) == 0
    assert (tmp_path / "sw" / "compare" / "compare.md").is_file()
    assert "| a |" in capsys.readouterr().out
