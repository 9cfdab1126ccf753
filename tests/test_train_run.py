"""End to end: `bridgeocr train` on a tiny manifest dataset, --resume, evaluate and recognize its checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridgeocr.cli import main
from conftest import BOX_WORDS as WORDS
from conftest import TINY_YAML, make_box_dataset


def make_dataset(root: Path, n: int = 16, bad: int = 1, seed: int = 0) -> Path:
    return make_box_dataset(root, n=n, bad=bad, seed=seed)




def write_config(tmp: Path, **extra) -> Path:
    src = make_dataset(tmp / "data")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(TINY_YAML.format(src=src, out=tmp / "runs"))
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = write_config(tmp)
    return tmp, cfg


def _run(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_train_writes_run_dir_then_resume_evaluate_recognize(trained, capsys):
    tmp, cfg = trained
    run = tmp / "runs" / "tiny"
    code, out, err = _run(capsys, ["train", "--config", str(cfg), "optim.max_steps=3"])
    assert code == 0, err
    assert "[val] CER at epoch 0: " in out and "[val] WER at epoch 0: " in out
    assert "[test] CER at epoch 0: " in out and "[test] WER at epoch 0: " in out
    assert "skipped 1 bad train sample" in out
    for name in ("best", "last"):
        assert (run / name / "config.json").is_file() and (run / name / "model.safetensors").is_file()
        assert (run / name / "tokenizer.json").is_file() and (run / name / "training.json").is_file()
    for name in ("config.yaml", "metrics.json", "metrics.csv", "predictions_val.tsv", "predictions_test.tsv"):
        assert (run / name).is_file(), name
    # the resume state: safetensors + JSON, no pickle anywhere in the run
    assert (run / "last.ckpt" / "tensors.safetensors").is_file() and (run / "last.ckpt" / "state.json").is_file()
    assert not [p for p in run.rglob("*") if p.suffix in (".pt", ".pth", ".pkl") or p.name == "last.ckpt"
                and p.is_file()]
    assert (run / "tb").is_dir() and any((run / "tb").rglob("events.out.tfevents*"))
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    m = json.loads((run / "metrics.json").read_text())
    assert m["step"] == 3 and m["skipped"]["train"] == 1
    for key in ("val_cer", "val_wer", "test_cer", "test_wer", "params", "train_lines_per_s",
                "decode_lines_per_s", "visual_tokens"):
        assert m[key] is not None, key
    lines = (run / "predictions_test.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:4] == ["id", "reference", "hypothesis", "cer"]
    cers = [float(x.split("\t")[3]) for x in lines[1:]]
    assert cers == sorted(cers, reverse=True) and len(cers) == 4
    assert "train/loss" in (run / "metrics.csv").read_text().splitlines()[0]

    # --resume continues from step 3 (not a restart)
    code, out, err = _run(capsys, ["train", "--config", str(cfg), "optim.max_steps=5", "--resume"])
    assert code == 0, err
    assert "resuming from" in out
    m2 = json.loads((run / "metrics.json").read_text())
    assert m2["step"] == 5
    assert [h["step"] for h in m2["val_history"]] == [3, 5]
    assert "[val] CER at epoch 1: " in out
    steps = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert max(steps) >= 4 and 0 in steps  # the log of the first part is kept

    # evaluate the best checkpoint
    code, out, err = _run(capsys, ["evaluate", "--checkpoint", str(run / "best"), "--data",
                                   str(tmp / "data" / "manifest.tsv"), "--split", "val", "--out",
                                   str(tmp / "eval")])
    assert code == 0, err
    assert "[val] CER at epoch " in out and "[val] WER at epoch " in out
    ev = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert ev["n"] == 4 and ev["val_cer"] == pytest.approx(ev["cer"])
    assert (tmp / "eval" / "predictions.tsv").is_file()

    # recognize: a folder, a glob and an unreadable file (reported, exit 1, the rest transcribed)
    imgs = tmp / "data" / "img"
    code, out, err = _run(capsys, ["recognize", str(imgs / "000.png"), str(imgs / "bad0.png"),
                                   str(imgs / "00[1-2].png"), "--checkpoint", str(run / "best"),
                                   "--format", "tsv"])
    assert code == 1
    assert "error: " in err and "bad0.png" in err
    rows = out.strip().splitlines()
    assert rows[0] == "path\ttext\tconfidence" and len(rows) == 4


def test_max_minutes_stops_cleanly_with_checkpoints(tmp_path, capsys):
    cfg = write_config(tmp_path)
    code, out, err = _run(capsys, ["train", "--config", str(cfg), "optim.max_steps=1000",
                                   "optim.max_minutes=0.0001", "train.name=timed"])
    assert code == 0, err
    run = tmp_path / "runs" / "timed"
    m = json.loads((run / "metrics.json").read_text())
    assert m["step"] < 1000 and m["stopped_by"] == "max_minutes"
    assert (run / "best").is_dir() and (run / "last").is_dir()
    assert "[val] CER at epoch" in out and "[test] CER at epoch" in out


def test_kd_ctc_and_freeze_schedule_with_pretrained_lm(tmp_path, capsys):
    import torch

    from bridgeocr.config import load_config
    from bridgeocr.models.decoder import GPT
    from bridgeocr.models.ocr import OCRModel
    from bridgeocr.train.lm import train_lm
    from bridgeocr.train.run import train

    lm = tmp_path / "lm"
    train_lm(docs=[" ".join(WORDS) * 20], val_docs=None, out=lm, n_layer=1, n_embd=32, n_head=2, context=16,
             steps=2, batch_size=4, progress=False)
    cfg_path = write_config(tmp_path)
    cfg = load_config(cfg_path, [f"model.decoder.pretrained={lm}", "loss.kd_alpha=0.5", "loss.kd_tau=2.0",
                                 "model.ctc_head=true", "loss.ctc_weight=0.3", "optim.max_steps=2",
                                 "train.name=kd", "optim.freeze_schedule=[{until_step: 5, train: [connector]}]"])
    metrics = train(cfg)
    assert metrics["test_cer"] is not None
    run = tmp_path / "runs" / "kd"
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "train/kd" in header and "train/ctc" in header
    # the decoder was frozen by the schedule: still the pretrained LM's weights
    last = OCRModel.from_pretrained(run / "last").decoder.state_dict()
    ref = GPT.from_hf(lm).state_dict()
    assert all(torch.equal(last[k], ref[k]) for k in ref)
    assert json.loads((run / "best" / "tokenizer.json").read_text()) == json.loads((lm / "tokenizer.json").read_text())


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    cfg = write_config(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bridgeocr.cli", "train", "--config", str(cfg), "optim.max_steps=2",
         "train.strategy=ddp", "train.name=ddp", "--devices", "2"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 8 good train lines / 2 ranks / batch 4: one step per epoch; each epoch's line printed by rank 0 only
    assert proc.stdout.count("[val] CER at epoch 0:") == 1 and proc.stdout.count("[test] CER at epoch") == 1
    m = json.loads((tmp_path / "runs" / "ddp" / "metrics.json").read_text())
    assert m["devices"] == 2 and m["step"] == 2
    assert m["val"]["n"] == 4  # gathered from both ranks
