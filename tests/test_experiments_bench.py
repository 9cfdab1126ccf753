"""The connector benchmark on a tiny model: every row has the documented keys and sensible numbers."""

import json

import pytest
import torch

from bridgeocr.experiments.bench import (
    BASELINE,
    CONNECTOR_SPECS,
    ROW_KEYS,
    BenchSettings,
    evaluate_targets,
    run_benchmark,
    to_markdown,
)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops on a busy machine: threads only add waiting
    yield
    torch.set_num_threads(n)


def test_tiny_benchmark_rows(one_thread, tmp_path):
    settings = BenchSettings(sizes=["default"], widths=[64], warmup=0, repeats=1, isolate=False, tiny=True,
                             train_batch=2, decode_batch=2, text_len=6, new_tokens=3)
    result = run_benchmark(settings, progress=False)
    rows = result["rows"]
    assert [r["connector"] for r in rows] == list(CONNECTOR_SPECS) + [BASELINE]
    for r in rows:
        assert set(r) == set(ROW_KEYS)
        for key in ("params", "visual_tokens", "train_step_s", "decode_e2e_s", "lines_per_s", "decode_dec_s",
                    "dec_lines_per_s"):
            assert r[key] > 0, (r["connector"], key)
        assert r["peak_train_mb"] >= 0 and r["peak_decode_mb"] >= 0
    by = {r["connector"]: r for r in rows}
    n = 64 // 16  # tiny encoder: patch width 16
    assert by["linear"]["visual_tokens"] == n and by[BASELINE]["visual_tokens"] == n
    assert by["pool4+linear_ln"]["visual_tokens"] == by["concat4+linear_ln"]["visual_tokens"] == 1
    assert by["qformer"]["visual_tokens"] == 4  # tiny num_queries
    assert by[BASELINE]["connector_params"] == 0 and by["qformer"]["connector_params"] > 0
    json.dumps(result)  # JSON-able
    md = to_markdown(result)
    assert "| default | qformer | 64 |" in md and "n/a" in md  # targets need seed size at 1024 px


def test_targets_ratio_and_status():
    base = {"size": "seed", "width": 1024}
    rows = [dict(base, connector="linear_gelu_ln", decode_dec_s=6.0, train_step_s=4.0, decode_e2e_s=7.0),
            dict(base, connector="qformer", decode_dec_s=1.5, train_step_s=3.0, decode_e2e_s=2.0),
            dict(base, connector=BASELINE, decode_dec_s=1.0, train_step_s=1.0, decode_e2e_s=3.0)]
    got = {t["target"]: t for t in evaluate_targets(rows)}
    dec = next(t for name, t in got.items() if name.startswith("qformer: decoder-side"))
    assert dec["ratio"] == 4.0 and dec["status"] == "PASS"
    train = next(t for name, t in got.items() if name.startswith("qformer: training"))
    assert train["ratio"] == pytest.approx(1.33) and train["status"] == "MISS"
    e2e = next(t for name, t in got.items() if "encoder-decoder" in name)
    assert e2e["ratio"] == 1.5 and e2e["status"] == "PASS"
    assert any(t["status"] == "n/a" for t in got.values())  # pool / concat rows absent
