import json

import pytest
from PIL import Image, ImageDraw

from bridgeocr.cli import main
from bridgeocr.errors import BridgeOCRError
from bridgeocr.eval.evaluate import evaluate_model, load_checkpoint, read_predictions, write_predictions
from conftest import tiny_ocr_model as tiny_model


def make_lines(root, n=6):
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows, texts = [], ["ab", "cd ab", "abc", "d", "ba dc", "cab"]
    for i in range(n):
        img = Image.new("L", (10 + 9 * len(texts[i]), 20), 255)
        ImageDraw.Draw(img).rectangle([3, 4, 6 + 8 * len(texts[i]), 15], fill=0)
        img.save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png\t{texts[i]}")
    (root / "img" / "broken.png").write_bytes(b"\x89PNG broken")
    rows.append("img/broken.png\tab")
    (root / "lines.tsv").write_text("\n".join(rows) + "\n")
    return root / "lines.tsv"


@pytest.fixture()
def ckpt(tmp_path):
    model = tiny_model()
    d = tmp_path / "ckpt"
    model.save_pretrained(d)
    image = {"height": 16, "width_policy": "pad", "max_width": 128, "resize_width": 64, "width_multiple": 4}
    (d / "training.json").write_text(json.dumps({"epoch": 7, "step": 99, "image": image}))
    return d


def test_load_checkpoint_reads_image_settings_and_epoch(ckpt, tmp_path):
    model, image_cfg, meta = load_checkpoint(ckpt, device="cpu")
    assert image_cfg.height == 16 and image_cfg.width_multiple == 4 and image_cfg.max_width == 128
    assert meta["epoch"] == 7 and not model.training
    (ckpt / "training.json").unlink()
    _, image_cfg, meta = load_checkpoint(ckpt, device="cpu")
    assert image_cfg.height == 16 and meta == {}  # from the model's own image height
    with pytest.raises(BridgeOCRError):
        load_checkpoint(tmp_path / "nope")


def test_evaluate_model_skips_bad_lines_and_counts(ckpt, tmp_path):
    from bridgeocr.data.sources import open_source

    src = open_source(make_lines(tmp_path))
    model, image_cfg, _ = load_checkpoint(ckpt, device="cpu")
    res = evaluate_model(model, src, image_cfg, beam=1, batch_size=4, progress=False)
    assert res["n"] == 6 and res["skipped"] == 1 and "broken.png" in res["skip_messages"][0]
    assert 0 <= res["wer"] and res["cer"] >= 0 and res["lines_per_s"] > 0
    assert sorted(res["ids"]) == sorted(s.id for s in src if "broken" not in str(s.image_path))
    path = write_predictions(tmp_path / "p.tsv", res)
    rows = [r.split("\t") for r in path.read_text().splitlines()[1:]]
    assert [float(r[3]) for r in rows] == sorted((float(r[3]) for r in rows), reverse=True)
    beam = evaluate_model(model, src, image_cfg, beam=2, batch_size=3, progress=False)
    assert beam["n"] == 6


def test_evaluate_cli_prints_seed_lines_with_checkpoint_epoch(ckpt, tmp_path, capsys):
    data = make_lines(tmp_path)
    out = tmp_path / "ev"
    code = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--split", "all",
                 "--batch-size", "2", "--max-samples", "4", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "[all] CER at epoch 7: " in text and "[all] WER at epoch 7: " in text  # labelled with what it read
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 4 and m["epoch"] == 7 and "all_cer" in m and m["split"] == "all"
    assert (out / "predictions.tsv").read_text().startswith("id\treference\thypothesis\tcer")


def test_evaluate_by_group_scores_each_group(ckpt, tmp_path, capsys):
    make_lines(tmp_path)
    (tmp_path / "img" / "broken.png").unlink()
    rows = [f"img/{i}.png\t{t}" for i, t in enumerate(["ab", "cd ab", "abc", "d", "ba dc", "cab"])]
    (tmp_path / "manifest.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "split.tsv").write_text("".join(f"img/{i}.png\ttest\t{'font A' if i < 4 else 'font B'}\n"
                                        for i in range(6)))
    out = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path / "manifest.tsv"),
                 "--by-group", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "by group (2 groups)" in text and "font A" in text and "font B" in text
    m = json.loads((out / "metrics.json").read_text())
    assert {g["group"]: g["lines"] for g in m["groups"]} == {"font A": 4, "font B": 2}
    preds = {r["id"]: r for r in read_predictions(out / "predictions.tsv")}
    a = [preds[f"img/{i}"] for i in range(4)]  # the group's CER is its lines' edits over its characters
    edits = sum(r["cer"] * len(r["reference"]) for r in a)
    assert m["groups"][[g["group"] for g in m["groups"]].index("font A")]["cer"] == pytest.approx(
        edits / sum(len(r["reference"]) for r in a))
    table = (out / "groups.tsv").read_text().splitlines()
    assert table[0] == "group\tlines\tchars\tcer\twer" and len(table) == 3
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path / "manifest.tsv"),
                 "--out", str(tmp_path / "ev2")]) == 0
    assert "groups" not in json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert not (tmp_path / "ev2" / "groups.tsv").exists()


def test_evaluate_cli_bad_checkpoint_is_a_one_line_error(tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(tmp_path), "--data", str(tmp_path / "x.tsv")])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_evaluate_with_the_ctc_head(tmp_path, capsys):
    d = tmp_path / "ctc_model"
    tiny_model(ctc=True).save_pretrained(d)
    data = make_lines(tmp_path)
    assert main(["evaluate", "--checkpoint", str(d), "--data", str(data), "--split", "all", "--ctc",
                 "--out", str(tmp_path / "ev")]) == 0
    assert "CTC head" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["decoding"] == "CTC head"
    assert main(["evaluate", "--checkpoint", str(ckpt_without_head(tmp_path)), "--data", str(data),
                 "--split", "all", "--ctc"]) == 2
    assert "no CTC head" in capsys.readouterr().err


def test_evaluate_joint_decoding_is_recorded(tmp_path, capsys):
    d = tmp_path / "ctc_model"
    tiny_model(ctc=True).save_pretrained(d)
    data = make_lines(tmp_path)
    assert main(["evaluate", "--checkpoint", str(d), "--data", str(data), "--split", "all", "--joint",
                 "--beam", "2", "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["decoding"] == "joint CTC/GPT, beam 2, CTC weight 0.5, draft first"
    assert metrics["n"] > 0
    assert main(["evaluate", "--checkpoint", str(d), "--data", str(data), "--split", "all", "--full-search",
                 "--beam", "2", "--out", str(tmp_path / "full")]) == 0
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert full["decoding"] == "joint CTC/GPT, beam 2, CTC weight 0.5" and full["n"] == metrics["n"]
    assert metrics["reading"] == {"width_scale": 1.0, "widen_crowded": 0.65}  # the model's default
    assert main(["evaluate", "--checkpoint", str(d), "--data", str(data), "--split", "all", "--joint",
                 "--beam", "2", "--widen", "0", "--out", str(tmp_path / "ev0")]) == 0
    once = json.loads((tmp_path / "ev0" / "metrics.json").read_text())
    assert once["reading"]["widen_crowded"] == 0.0 and once["n"] == metrics["n"]
    with pytest.raises(SystemExit) as bad:  # argparse's one-line usage error
        main(["evaluate", "--checkpoint", str(d), "--data", str(data), "--widen", "-1"])
    assert bad.value.code == 2 and "--widen: must be >= 0" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(ckpt_without_head(tmp_path)), "--data", str(data),
                 "--split", "all", "--joint"]) == 2
    assert "CTC head" in capsys.readouterr().err


def ckpt_without_head(tmp_path):
    d = tmp_path / "plain"
    tiny_model(ctc=False).save_pretrained(d)
    return d
