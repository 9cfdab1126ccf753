"""Encoder CTC pretraining: trains, reports val CER, saves a loadable dir, resumes where it stopped."""

import json
import signal

import pytest
import torch

from bridgeocr.cli import main
from bridgeocr.models.encoder import load_encoder


def _tiny_manifest(root, make_line_png, n=12):
    words = ["ab", "ba", "abba", "baab", "aab", "bba"]
    rows, split = [], []
    for i in range(n):
        text = words[i % len(words)]
        rel = f"img/{i}.png"
        make_line_png(root / rel, width=16 + 8 * len(text), height=16, text=text)
        rows.append(f"{rel}\t{text}")
        split.append(f"{rel}\t{'val' if i % 4 == 0 else 'train'}\tg{i}")
    (root / "manifest.tsv").write_text("\n".join(rows) + "\n")
    (root / "split.tsv").write_text("\n".join(split) + "\n")
    return root


def test_encoder_train_saves_and_resumes(tmp_path, make_line_png, capsys):
    data = _tiny_manifest(tmp_path / "data", make_line_png)
    out = tmp_path / "enc"
    args = ["encoder", "train", "--data", str(data), "--out", str(out), "--batch-size", "4", "--lr", "3e-3",
            "data.image.height=16", "model.encoder.patch_height=16", "model.encoder.patch_width=4",
            "model.encoder.dim=32", "model.encoder.depth=1", "model.encoder.heads=2"]
    torch.manual_seed(0)
    assert main(args + ["--steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "val CER" in printed
    card = json.loads((out / "encoder_card.json").read_text())
    assert card["steps"] == 3 and 0.0 <= card["val_cer_ctc_greedy"] <= 1.5
    encoder, head = load_encoder(out, 16)
    assert head is not None and head.vocab_size == card["vocab_size"]
    tokens, mask = encoder(torch.rand(2, 1, 16, 40), torch.ones(2, 40, dtype=torch.bool))
    assert tokens.shape == (2, 10, 32) and mask.all()

    assert main(args + ["--steps", "5", "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    card = json.loads((out / "encoder_card.json").read_text())
    assert card["steps"] == 5 and card["lines_seen_this_run"] == 2 * 4  # only the 2 missing steps ran


def test_ctrl_c_ends_encoder_training_with_a_card(tmp_path, make_line_png, monkeypatch):
    """A KeyboardInterrupt mid-run is a clean stop: evaluation, last/ and the card are still written."""
    from bridgeocr.data.preprocess import LineDataset

    data = _tiny_manifest(tmp_path / "data", make_line_png)
    out = tmp_path / "enc"
    calls = {"n": 0}
    original = LineDataset.__getitem__

    def flaky(self, idx):
        calls["n"] += 1
        if self.augment is None and calls["n"] == 12 and self.source and len(self.source) == 9:  # train split
            raise KeyboardInterrupt
        return original(self, idx)

    monkeypatch.setattr(LineDataset, "__getitem__", flaky)
    args = ["encoder", "train", "--data", str(data), "--out", str(out), "--batch-size", "4", "--steps", "50",
            "data.image.height=16", "model.encoder.patch_height=16", "model.encoder.patch_width=4",
            "model.encoder.dim=32", "model.encoder.depth=1", "model.encoder.heads=2"]
    before = signal.getsignal(signal.SIGINT)
    assert main(args) == 0
    card = json.loads((out / "encoder_card.json").read_text())
    assert card["stopped_by"] == "interrupted" and 0 < card["steps"] < 50
    assert (out / "last" / "train_state.json").is_file()
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C works as before afterwards
    monkeypatch.undo()
    assert main([a if a != "50" else str(card["steps"] + 1) for a in args] + ["--resume"]) == 0
    again = json.loads((out / "encoder_card.json").read_text())  # resumed where the interruption left it
    assert again["steps"] == card["steps"] + 1 and again["lines_seen_this_run"] == 4


TINY_ENC = ["data.image.height=16", "model.encoder.patch_height=16", "model.encoder.patch_width=4",
            "model.encoder.dim=32", "model.encoder.depth=1", "model.encoder.heads=2"]


def test_encoder_resume_after_a_crash_is_exact(tmp_path, make_line_png, monkeypatch):
    """Killed mid-epoch after the step-3 checkpoint, then --resume: the same weights and history as the run
    that never stopped (the loader goes on with the batch after the last one trained)."""
    from safetensors.torch import load_file

    from bridgeocr.config import load_config
    from bridgeocr.train import encoder_pretrain
    from bridgeocr.train.encoder_pretrain import train_encoder

    data = _tiny_manifest(tmp_path / "data", make_line_png)

    def run(out, resume=False):
        return train_encoder(load_config(None, TINY_ENC), [str(data)], None, tmp_path / out, steps=6,
                             minutes=None, batch_size=4, lr=3e-3, seed=0, resume=resume, eval_every=3,
                             progress=False)

    full = run("full")
    original = encoder_pretrain._CTCModule.training_step

    def crash(self, batch, batch_idx):
        if self.global_step == 4:
            raise RuntimeError("killed")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(encoder_pretrain._CTCModule, "training_step", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run("cut")
    monkeypatch.undo()
    assert json.loads((tmp_path / "cut" / "last" / "train_state.json").read_text())["step"] == 3
    again = run("cut", resume=True)
    assert again["steps"] == 6 and again["lines_seen_this_run"] == 3 * 4
    assert [h["val_cer"] for h in again["history"]] == [h["val_cer"] for h in full["history"]]
    a, b = (load_file(str(tmp_path / d / "last" / "model.safetensors")) for d in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full["precision"] == "32-true" and (tmp_path / "full" / "tb").is_dir()
    assert (tmp_path / "cut" / "metrics.csv").read_text().startswith("step")


@pytest.mark.slow
def test_encoder_train_ddp_two_cpu_processes(tmp_path, make_line_png):
    import os
    import subprocess
    import sys

    data = _tiny_manifest(tmp_path / "data", make_line_png)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bridgeocr.cli", "encoder", "train", "--data", str(data), "--out", "enc",
         "--batch-size", "2", "--steps", "3", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu",
         *TINY_ENC], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("best val CER") == 1  # rank 0 evaluates and writes
    card = json.loads((tmp_path / "enc" / "encoder_card.json").read_text())
    assert card["devices"] == 2 and card["steps"] == 3
    assert card["lines_seen_this_run"] == 3 * 2 * 2  # 3 steps of batch 2 on each of 2 processes
    encoder, head = load_encoder(tmp_path / "enc", 16)
    assert head.vocab_size == card["vocab_size"]
