"""The demo end to end at toy size: data, three seed settings, loss gaps, report; a rerun resumes."""

import json

from bridgeocr.experiments.demo import DEFAULT_SETTINGS, SEED_SETTINGS, run_demo
from bridgeocr.train.lm import train_lm

TINY = ["model.encoder.dim=32", "model.encoder.depth=1", "model.encoder.heads=2", "optim.batch_size=8",
        "train.val_every_steps=4", "model.max_text_tokens=40", "model.connector.num_queries=8",
        "model.connector.layers=1", "model.decoder.n_layer=1",
        "optim.max_steps=8"]  # a step budget under the time shares: the same runs on a slow or busy machine


def test_demo_end_to_end_and_resume(tmp_path, capsys):
    lm_dir = tmp_path / "lm"
    train_lm(docs=["the cat sat on the mat. " * 20, "a dog ran in the fog. " * 20], val_docs=None, out=lm_dir,
             n_layer=1, n_embd=32, n_head=2, context=32, steps=3, batch_size=4, progress=False)
    out = tmp_path / "demo"
    results = run_demo(minutes=0.6, out=out, n=48, encoder=None, lm=str(lm_dir), extra_overrides=TINY)
    assert set(results) == set(DEFAULT_SETTINGS) and set(SEED_SETTINGS) <= set(results)
    printed = capsys.readouterr().out
    assert "[test] CER at epoch" in printed and "◆ Reference Loss (GT Text → Text)" in printed
    report = (out / "report.md").read_text()
    for name in DEFAULT_SETTINGS:
        assert f"### {name}" in report
        assert (out / "runs" / name / "best" / "model.safetensors").is_file()
        assert (out / "runs" / name / "loss_gap.json").is_file()
    assert "[val] CER at epoch" in report and "Best setting" in report
    assert "test CER by font" in report and "| font | lines | CER | share of the errors |" in report
    assert (out / "compare" / "compare.md").is_file()
    metrics = json.loads((out / "runs" / "qformer_kd" / "metrics.json").read_text())
    assert metrics["config"]["loss"]["kd_alpha"] == 0.1 and metrics["config"]["loss"]["kd_teacher"] == "prefix"
    assert metrics["test"]["decoding"] == "GPT, beam 1"  # the seed's settings read with the GPT alone
    bridge = json.loads((out / "runs" / "ctc_collapse" / "metrics.json").read_text())
    assert bridge["test"]["decoding"].startswith("joint CTC/GPT, beam 4")
    assert "| test decoding |" in (out / "compare" / "compare.md").read_text()

    again = run_demo(minutes=0.6, out=out, n=48, encoder=None, lm=str(lm_dir), extra_overrides=TINY)
    assert "already finished" in capsys.readouterr().out
    assert {k: v["test_cer"] for k, v in again.items()} == {k: v["test_cer"] for k, v in results.items()}


def test_ctc_reference_reads_the_test_lines_with_the_encoder_alone(tmp_path):
    from bridgeocr.config import EncoderConfig
    from bridgeocr.data.tokenizers import CharTokenizer
    from bridgeocr.experiments.demo import DemoPlan, ctc_reference
    from bridgeocr.models.ctc import CTCHead
    from bridgeocr.models.encoder import LineEncoder, save_encoder
    from conftest import make_box_dataset

    data = make_box_dataset(tmp_path / "data", n=8).parent
    tok = CharTokenizer.build(["abcd "])
    encoder = LineEncoder(EncoderConfig(dim=32, depth=1, heads=2), image_height=32)
    save_encoder(tmp_path / "enc", encoder, CTCHead(32, tok.vocab_size))
    tok.save(tmp_path / "enc" / "tokenizer.json")
    plan = DemoPlan(out=tmp_path, minutes=1, n=8, corpus=None, encoder=str(tmp_path / "enc"))
    result = ctc_reference(plan, data)
    assert result["lines"] == 2 and result["cer"] >= 0  # the 2 test lines of 8 (every 4th)
    assert "encoder alone" in plan.log[-1]


def test_hardest_fonts_gives_each_fonts_cer_and_share_of_the_errors(tmp_path, make_line_png):
    from bridgeocr.experiments.demo import hardest_fonts

    data = tmp_path / "data"
    rows, split = [], []
    for i, (font, ref) in enumerate([("A", "abcd"), ("A", "abcd"), ("B", "xy"), ("C", "pq")]):
        make_line_png(data / "images" / "test" / f"{i}.png")
        rows.append(f"images/test/{i}.png\t{ref}")
        split.append(f"images/test/{i}.png\ttest\t{font}")
    (data / "manifest.tsv").write_text("\n".join(rows) + "\n")
    (data / "split.tsv").write_text("\n".join(split) + "\n")
    pred = tmp_path / "predictions_test.tsv"
    pred.write_text("id\treference\thypothesis\tcer\tconfidence\n"  # A: 1 edit in 8 chars, B: 2 in 2, C: 0
                    "images/test/0\tabcd\tabcd\t0\t0\nimages/test/1\tabcd\tabce\t0.25\t0\n"
                    "images/test/2\txy\t\t1\t0\nimages/test/3\tpq\tpq\t0\t0\n")
    lines = hardest_fonts(pred, data, k=2)
    assert lines[2] == "| B | 1 | 1.0000 | 67% |" and lines[3] == "| A | 2 | 0.1250 | 33% |"
    assert lines[4] == "| the other 1 fonts | 1 | 0.0000 | 0% |"
    assert hardest_fonts(tmp_path / "none.tsv", data) == []


def test_unknown_setting_is_a_clear_error(tmp_path):
    import pytest

    from bridgeocr.errors import BridgeOCRError

    with pytest.raises(BridgeOCRError, match="unknown nope"):
        run_demo(minutes=1, out=tmp_path, settings=["qformer", "nope"])


def test_joint_settings_set_their_test_decoding_time_aside(tmp_path):
    from bridgeocr.experiments.demo import JOINT_DECODE_LINES_PER_S, decode_minutes

    (tmp_path / "settings.json").write_text(json.dumps({"counts": {"train": 3200, "val": 400, "test": 400}}))
    assert decode_minutes("linear_gelu_ln", tmp_path) == 0.0
    assert decode_minutes("ctc_collapse", tmp_path) == 400 / JOINT_DECODE_LINES_PER_S / 60
