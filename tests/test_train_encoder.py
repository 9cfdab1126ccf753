"""Encoder CTC pretraining: trains, reports val CER, saves a loadable dir, resumes where it stopped."""

import json

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
    assert main(args) == 0
    card = json.loads((out / "encoder_card.json").read_text())
    assert card["stopped_by"] == "interrupted" and 0 < card["steps"] < 50
    assert (out / "last" / "train_state.json").is_file()
