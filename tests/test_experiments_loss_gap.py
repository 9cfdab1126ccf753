"""loss gap: reference = the LM's own loss (checked against HF GPT-2), token weighting, KL, output."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from bridgeocr.config import DecoderConfig, ImageConfig
from bridgeocr.data.sample import LineSample
from bridgeocr.data.tokenizers import CharTokenizer
from bridgeocr.experiments import loss_gap as lg
from bridgeocr.models.decoder import GPT
from bridgeocr.train.losses import kd_loss

TEXTS = ["ab", "hello world", "a much longer line of text, here.", "mid line"]
IMG = ImageConfig(height=16, max_width=96, resize_width=24, width_multiple=4)


def _image(text: str) -> Image.Image:
    img = Image.new("L", (8 * len(text) + 6, 20), 255)
    ImageDraw.Draw(img).text((2, 4), text, fill=0)
    return img


def _source():
    return [LineSample(f"s{i}", t, image=_image(t), origin=f"mem:{i}") for i, t in enumerate(TEXTS)]


class FakeOCR(nn.Module):
    """The OCRModel surface loss_gap uses: tokenizer, cfg.max_text_tokens, decoder (GPT), forward(batch)."""

    def __init__(self, tok, blind: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.tokenizer = tok
        self.cfg = SimpleNamespace(max_text_tokens=160)
        self.decoder = GPT(DecoderConfig(n_layer=2, n_embd=32, n_head=2, n_positions=128), tok.vocab_size)
        self.proj = nn.Linear(IMG.height, 32)
        self.blind = blind

    def forward(self, batch):
        if self.blind:  # the image path ignores the image: must equal the reference exactly
            logits, _ = self.decoder(batch.input_ids, batch.attention_mask)
            return SimpleNamespace(logits=logits, visual_mask=None)
        prefix = self.proj(batch.images[:, 0].transpose(1, 2))  # one token per column
        logits, _ = self.decoder(batch.input_ids, batch.attention_mask, prefix=prefix,
                                 prefix_mask=batch.image_mask)
        return SimpleNamespace(logits=logits, visual_mask=batch.image_mask)


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer.build(TEXTS)


def test_reference_is_the_lms_own_loss_token_weighted(tok, tmp_path):
    from transformers import GPT2LMHeadModel

    model = FakeOCR(tok)
    res = lg.compute_loss_gaps(model, _source(), IMG, batch_size=3, progress=False)
    assert res["total_samples"] == len(TEXTS) and res["skipped"] == 0

    # independently: the decoder saved as a HF GPT-2, each line's own mean loss (HF shifts labels)
    model.decoder.save_hf(tmp_path / "hf")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    losses, counts = [], []
    for text in TEXTS:
        ids = torch.tensor([[tok.bos_id, *tok.encode(text), tok.eos_id]])
        with torch.no_grad():
            losses.append(float(hf(input_ids=ids, labels=ids).loss))
        counts.append(ids.shape[1] - 1)
    weighted = sum(x * n for x, n in zip(losses, counts)) / sum(counts)
    assert res["reference"] == pytest.approx(weighted, abs=1e-5)
    assert res["tokens"] == sum(counts)
    # token weighting differs from a mean of line means (lengths 3..34 tokens)
    assert abs(weighted - sum(losses) / len(losses)) > 1e-3
    by_id = {s["id"]: s for s in res["samples"]}
    for i, (x, n) in enumerate(zip(losses, counts)):
        assert by_id[f"s{i}"]["n_tokens"] == n
        assert by_id[f"s{i}"]["reference"] == pytest.approx(x, abs=1e-5)

    # gaps are the differences; the image paths differ from the text path; KL >= 0
    g = res["gaps"]
    assert g["connector_minus_reference"] == pytest.approx(res["connector"] - res["reference"])
    assert g["downsampled_minus_reference"] == pytest.approx(res["downsampled"] - res["reference"])
    assert g["connector_minus_downsampled"] == pytest.approx(res["connector"] - res["downsampled"])
    assert res["connector"] != pytest.approx(res["reference"]) and res["kl"] > 0
    # visual tokens: pad keeps the aspect (wider lines, more columns), resize gives resize_width each
    assert res["visual_tokens"]["resize"] == pytest.approx(IMG.resize_width)
    assert res["visual_tokens"]["pad"] != pytest.approx(IMG.resize_width)
    # batch size does not change the result (masking and weighting are exact)
    res1 = lg.compute_loss_gaps(model, _source(), IMG, batch_size=1, progress=False)
    for k in ("reference", "connector", "downsampled", "kl"):
        assert res1[k] == pytest.approx(res[k], abs=1e-5)


def test_kl_is_kd_loss_and_zero_for_a_blind_image_path(tok):
    blind = FakeOCR(tok, blind=True)
    res = lg.compute_loss_gaps(blind, _source(), IMG, batch_size=2, progress=False)
    assert res["connector"] == pytest.approx(res["reference"], abs=1e-6)
    assert res["kl"] == pytest.approx(0.0, abs=1e-6)

    model = FakeOCR(tok)
    one = _source()[2:3]
    res = lg.compute_loss_gaps(model, one, IMG, batch_size=1, progress=False)
    ids = torch.tensor([[tok.bos_id, *tok.encode(TEXTS[2]), tok.eos_id]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    from bridgeocr.data.preprocess import Collator, preprocess_image

    batch = Collator.for_tokenizer(tok, IMG.width_multiple)(
        [{"image": preprocess_image(one[0].load_image(), IMG, "pad"), "ids": ids[0, 1:-1].tolist(),
          "text": TEXTS[2], "id": "s2"}])
    with torch.no_grad():
        con = model(batch).logits
        ref, _ = model.decoder(ids, mask)
    tmask = torch.zeros_like(mask)
    tmask[:, :-1] = True
    assert res["kl"] == pytest.approx(float(kd_loss(con, ref, tmask, tau=1.0)), abs=1e-5)


def test_bad_lines_are_skipped_and_counted(tok, tmp_path):
    src = _source() + [LineSample("gone", "ab", image_path=tmp_path / "missing.png", origin="x.tsv:9"),
                       LineSample("empty", "  ", image=_image("x"), origin="x.tsv:10")]
    res = lg.compute_loss_gaps(FakeOCR(tok), src, IMG, batch_size=4, max_samples=None, progress=False)
    assert res["total_samples"] == len(TEXTS) and res["skipped"] == 2
    assert any("x.tsv:9" in m for m in res["skip_messages"])
    res = lg.compute_loss_gaps(FakeOCR(tok), src, IMG, batch_size=4, max_samples=2, progress=False)
    assert res["total_samples"] == 2


def test_seed_layout_and_files(tok, tmp_path):
    res = lg.compute_loss_gaps(FakeOCR(tok), _source(), IMG, batch_size=4, progress=False)
    text = lg.format_loss_gaps(res)
    lines = text.splitlines()
    assert lines[0] == f"Total samples: {len(TEXTS)}"
    assert lines[1].startswith("◆ Reference Loss (GT Text → Text): ")
    assert lines[2].startswith("◆ Connector Loss (Image → Text, padding): ")
    assert lines[3].startswith("◆ Downsampled Loss (Image → Text, resized): ")
    assert lines[4].startswith("◆ KL(Q || P) (reference → connector): ")
    assert lines[5] == "✗ Gaps:"
    assert lines[6] == f"  Connector - Reference: {res['gaps']['connector_minus_reference']:.4f}"
    assert lines[1].endswith(f"{res['reference']:.4f}") and len(lines) == 9
    fake = {**res, "total_samples": 2915, "reference": 5.7355, "connector": 6.9723, "downsampled": 8.3487,
            "gaps": {"connector_minus_reference": 1.2368, "downsampled_minus_reference": 2.6132,
                     "connector_minus_downsampled": -1.3764}}
    seed = lg.format_loss_gaps(fake)
    assert "◆ Connector Loss (Image → Text, padding): 6.9723\n" in seed
    assert "  Downsampled - Reference: 2.6132\n" in seed

    jpath, cpath = lg.write_loss_gaps(res, tmp_path / "out", {"split": "val"})
    data = json.loads(jpath.read_text())
    assert data["split"] == "val" and "samples" not in data and data["total_samples"] == len(TEXTS)
    with cpath.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "n_tokens", "reference", "connector", "downsampled", "kl"]
    n = sum(int(r["n_tokens"]) for r in rows)
    assert sum(float(r["connector"]) * int(r["n_tokens"]) for r in rows) / n == pytest.approx(
        res["connector"], abs=1e-5)


def test_cli_on_a_saved_ocr_model_writes_into_the_run_dir(tok, tmp_path, capsys):
    from bridgeocr.cli import main
    from bridgeocr.config import ConnectorConfig, EncoderConfig, ModelConfig
    from bridgeocr.models.ocr import OCRModel

    torch.manual_seed(0)
    cfg = ModelConfig(encoder=EncoderConfig(dim=32, depth=1, heads=2, patch_width=8),
                      connector=ConnectorConfig(kind="linear_gelu_ln"),
                      decoder=DecoderConfig(n_layer=2, n_embd=32, n_head=2, n_positions=160))
    run = tmp_path / "run"
    OCRModel(cfg, tok.vocab_size, 32, tok).save_pretrained(run / "best")
    (run / "config.yaml").write_text("train:\n  name: run\n")
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i, t in enumerate(TEXTS):
        _image(t).save(data / f"{i}.png")
        rows.append(f"{i}.png\t{t}")
    (data / "m.tsv").write_text("\n".join(rows) + "\n")
    assert main(["loss-gap", "--checkpoint", str(run), "--data", str(data / "m.tsv"), "--split", "test"]) == 2
    assert "no split file" in capsys.readouterr().err  # one-line error, no traceback
    code = main(["loss-gap", "--checkpoint", str(run), "--data", str(data / "m.tsv"), "--split", "all",
                 "--batch-size", "3"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"Total samples: {len(TEXTS)}" in out.out and "✗ Gaps:" in out.out
    assert "◆ Reference Loss (GT Text as prefix → Text): " in out.out  # default: both readings
    data_json = json.loads((run / "loss_gap.json").read_text())
    assert data_json["checkpoint"].endswith("best") and data_json["total_samples"] == len(TEXTS)
    assert data_json["readings"] == ["lm", "prefix"] and "reference_prefix" in data_json
    assert "connector_minus_reference_prefix" in data_json["gaps"] and "kl_prefix" in data_json
    assert (run / "loss_gap_samples.csv").is_file()
    # and compare picks it up
    (run / "metrics.json").write_text(json.dumps({"test_cer": 0.5}))
    from bridgeocr.experiments.compare import load_run

    row = load_run(run)
    assert row["reference_loss"] == pytest.approx(data_json["reference"])

    prefix_out = tmp_path / "prefix_out"
    assert main(["loss-gap", "--checkpoint", str(run), "--data", str(data / "m.tsv"), "--split", "all",
                 "--reference", "prefix", "--out", str(prefix_out)]) == 0
    only = json.loads((prefix_out / "loss_gap.json").read_text())
    assert only["readings"] == ["prefix"] and "reference" not in only
    assert only["reference_prefix"] == pytest.approx(data_json["reference_prefix"], abs=1e-5)
    assert only["gaps"]["connector_minus_reference_prefix"] == pytest.approx(
        data_json["gaps"]["connector_minus_reference_prefix"], abs=1e-5)


# ------------------------------------------------------------------- the prefix reading of the reference


def _prefix_line_loss(model, tok, text: str, attach_layer: int = 0) -> float:
    """Independently, one unpadded line: its text embeddings as the prefix, then BOS text EOS."""
    ids = torch.tensor([[tok.bos_id, *tok.encode(text), tok.eos_id]])
    prefix = model.decoder.wte(ids[:, 1:-1])
    with torch.no_grad():
        logits, _ = model.decoder(ids, prefix=prefix, attach_layer=attach_layer)
    return float(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]))


def test_prefix_reference_is_the_decoder_reading_the_text_as_its_prefix(tok):
    model = FakeOCR(tok)
    model.cfg.attach_layer = 1
    lm_only = lg.compute_loss_gaps(model, _source(), IMG, batch_size=3, progress=False)
    res = lg.compute_loss_gaps(model, _source(), IMG, batch_size=3, progress=False, reference="both")
    assert lm_only["readings"] == ["lm"] and res["readings"] == ["lm", "prefix"]
    assert "reference_prefix" not in lm_only and "kl_prefix" not in lm_only
    for k in ("reference", "connector", "downsampled", "kl"):  # the lm numbers do not move
        assert res[k] == pytest.approx(lm_only[k], abs=1e-6)
    by_id = {s["id"]: s for s in res["samples"]}
    per_line = [_prefix_line_loss(model, tok, t, attach_layer=1) for t in TEXTS]
    for i, x in enumerate(per_line):
        assert by_id[f"s{i}"]["reference_prefix"] == pytest.approx(x, abs=1e-5)
    assert _prefix_line_loss(model, tok, TEXTS[1], attach_layer=0) != pytest.approx(per_line[1], abs=1e-4)
    counts = [len(t) + 1 for t in TEXTS]
    assert res["reference_prefix"] == pytest.approx(
        sum(x * n for x, n in zip(per_line, counts)) / sum(counts), abs=1e-5)
    assert res["reference_prefix"] != pytest.approx(res["reference"], abs=1e-4)
    assert res["kl_prefix"] > 0 and res["kl_prefix"] != pytest.approx(res["kl"], rel=1e-2)
    g = res["gaps"]
    assert g["connector_minus_reference"] == pytest.approx(res["connector"] - res["reference"])
    assert g["connector_minus_reference_prefix"] == pytest.approx(res["connector"] - res["reference_prefix"])
    assert g["downsampled_minus_reference_prefix"] == pytest.approx(res["downsampled"] - res["reference_prefix"])
    # the prefix reading alone: the same numbers, no lm keys
    only = lg.compute_loss_gaps(model, _source(), IMG, batch_size=1, progress=False, reference="prefix")
    assert only["readings"] == ["prefix"] and "reference" not in only and "kl" not in only
    assert only["reference_prefix"] == pytest.approx(res["reference_prefix"], abs=1e-5)
    assert only["kl_prefix"] == pytest.approx(res["kl_prefix"], abs=1e-5)
    assert set(only["gaps"]) == {"connector_minus_reference_prefix", "downsampled_minus_reference_prefix",
                                 "connector_minus_downsampled"}
    with pytest.raises(lg.BridgeOCRError, match="reference"):
        lg.compute_loss_gaps(model, _source(), IMG, progress=False, reference="image")


def test_both_readings_in_the_table_and_files(tok, tmp_path):
    res = lg.compute_loss_gaps(FakeOCR(tok), _source(), IMG, batch_size=4, progress=False, reference="both")
    lines = lg.format_loss_gaps(res).splitlines()
    assert lines[1].startswith("◆ Reference Loss (GT Text → Text): ")
    assert lines[2] == f"◆ Reference Loss (GT Text as prefix → Text): {res['reference_prefix']:.4f}"
    assert lines[3].startswith("◆ Connector Loss (Image → Text, padding): ")
    assert lines[5].startswith("◆ KL(Q || P) (reference → connector): ")
    assert lines[6] == f"◆ KL(Q || P) (prefix reference → connector): {res['kl_prefix']:.4f}"
    assert lines[7] == "✗ Gaps:"
    gp = res["gaps"]["connector_minus_reference_prefix"]
    assert f"  Connector - Reference (prefix): {gp:.4f}" in lines and len(lines) == 13
    assert lines[-1].startswith("  Connector - Downsampled: ")
    only = lg.compute_loss_gaps(FakeOCR(tok), _source(), IMG, batch_size=4, progress=False, reference="prefix")
    text = lg.format_loss_gaps(only)
    assert "(GT Text → Text)" not in text and "Connector - Reference (prefix)" in text

    jpath, cpath = lg.write_loss_gaps(res, tmp_path / "both")
    data = json.loads(jpath.read_text())
    assert data["readings"] == ["lm", "prefix"]
    assert {"reference", "kl", "reference_prefix", "kl_prefix"} <= set(data)
    with cpath.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "n_tokens", "reference", "connector", "downsampled", "kl",
                             "reference_prefix", "kl_prefix"]
    n = sum(int(r["n_tokens"]) for r in rows)
    assert sum(float(r["reference_prefix"]) * int(r["n_tokens"]) for r in rows) / n == pytest.approx(
        res["reference_prefix"], abs=1e-5)
    _, cpath = lg.write_loss_gaps(only, tmp_path / "prefix")
    with cpath.open() as fh:
        assert next(csv.reader(fh)) == ["id", "n_tokens", "connector", "downsampled", "reference_prefix",
                                        "kl_prefix"]


def test_cli_parses_reference():
    from bridgeocr.cli import build_parser

    base = ["loss-gap", "--checkpoint", "c", "--data", "d"]
    assert build_parser().parse_args(base).reference == "both"
    args = build_parser().parse_args(base + ["--reference", "prefix"])
    assert args.reference == "prefix" and "reference" in args.keys
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--reference", "image"])
