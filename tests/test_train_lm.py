import csv
import json
import shutil

import pytest
import torch

from bridgeocr.train.checkpoint import atomic_dir, load_optimizer, save_optimizer
from bridgeocr.train.lm import train_lm
from bridgeocr.train.schedule import lr_factor

DOCS = ["the quick brown fox jumps over the lazy dog. " * 8, "hello world, a tiny text corpus here. " * 8]
TINY = dict(n_layer=1, n_embd=32, n_head=2, context=24, batch_size=4, progress=False)


def test_lr_schedule_shape():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100) < lr_factor(20, 10, 100)


def test_atomic_dir_keeps_old_on_failure(tmp_path):
    target = tmp_path / "ck"
    atomic_dir(target, lambda d: (d / "a.txt").write_text("1"))
    assert (target / "a.txt").read_text() == "1"

    def boom(d):
        (d / "a.txt").write_text("2")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        atomic_dir(target, boom)
    assert (target / "a.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp dirs left


def test_optimizer_roundtrip_safetensors(tmp_path):
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW([{"params": [m.weight], "lr": 0.1}, {"params": [m.bias], "lr": 0.2}])
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_optimizer(opt, tmp_path / "opt.safetensors", extra={"step": 1})
    opt2 = torch.optim.AdamW([{"params": [m.weight], "lr": 0.5}, {"params": [m.bias], "lr": 0.5}])
    assert load_optimizer(opt2, tmp_path / "opt.safetensors") == {"step": 1}
    a, b = opt.state_dict(), opt2.state_dict()
    assert [g["lr"] for g in b["param_groups"]] == [0.1, 0.2]
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(torch.as_tensor(a["state"][i][k]), torch.as_tensor(b["state"][i][k]))


def test_train_lm_saves_hf_dir_and_resumes(tmp_path, capsys):
    from transformers import GPT2LMHeadModel

    from bridgeocr.data.tokenizers import load_tokenizer
    from bridgeocr.models.decoder import GPT

    out = tmp_path / "lm"
    card = train_lm(docs=DOCS, val_docs=None, out=out, steps=4, eval_every=2, **TINY)
    assert card["steps"] == 4 and card["val_loss"] > 0 and card["val_ppl"] > 1
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    on_disk = json.loads((out / "lm_card.json").read_text())
    assert on_disk["steps"] == 4 and "val_ppl" in on_disk and "time_s" in on_disk
    tok = load_tokenizer(out)
    assert tok.decode(tok.encode("fox")) == "fox"
    hf = GPT2LMHeadModel.from_pretrained(str(out), local_files_only=True)
    gpt = GPT.from_hf(out)
    ids = torch.tensor([[tok.bos_id, *tok.encode("the lazy")]])
    ours, _ = gpt(ids)
    torch.testing.assert_close(ours, hf(ids).logits, atol=1e-4, rtol=1e-4)
    assert not list((out / "last").glob("*.pt")) and not list((out / "last").glob("*.ckpt"))

    card2 = train_lm(docs=DOCS, val_docs=None, out=out, steps=6, resume=True, **TINY)
    assert "resuming from" in capsys.readouterr().out
    assert card2["steps"] == 6
    assert json.loads((out / "last" / "train_state.json").read_text())["step"] == 6


def test_train_lm_bpe_and_minutes(tmp_path):
    card = train_lm(docs=DOCS * 3, val_docs=["the quick dog says hello world"], out=tmp_path / "bpe",
                    tokenizer_kind="bpe", vocab_size=300, steps=1000, minutes=0.0, **TINY)
    assert card["stopped_by"] == "minutes" and card["steps"] == 0
    assert card["tokenizer"] == "bpe"


def test_lm_cli_on_corpus_files(tmp_path, capsys):
    from bridgeocr.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text(DOCS[0] + "\n<|endoftext|>\n" + DOCS[1])
    out = tmp_path / "lm"
    args = ["lm", "train", "--corpus", str(corpus), "--out", str(out), "--steps", "3", "--n-layer", "1",
            "--n-embd", "32", "--n-head", "2", "--context", "16", "--batch-size", "4"]
    assert main(args) == 0
    assert "perplexity" in capsys.readouterr().out
    card = json.loads((out / "lm_card.json").read_text())
    assert card["steps"] == 3 and str(corpus) in card["data"]
    assert main([a if a != "3" else "4" for a in args] + ["--resume"]) == 0
    assert json.loads((out / "lm_card.json").read_text())["steps"] == 4
    assert main(["lm", "train", "--corpus", str(corpus), "--out", str(out), "--n-embd", "30",
                 "--n-head", "4"]) == 2  # a one-line config error


def test_timed_runs_decay_by_the_clock():
    from bridgeocr.train.schedule import lr_factor

    # far from max_steps, but 90% of the time budget used: the factor follows the clock
    assert lr_factor(150, 100, 100000) > 0.99
    assert lr_factor(150, 100, 100000, time_fraction=0.9) < 0.2
    assert lr_factor(150, 100, 100000, time_fraction=1.5) == lr_factor(100000, 100, 100000)
    assert lr_factor(5, 100, 100000, time_fraction=0.9) == lr_factor(5, 100, 100000)  # warm-up untouched


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_lm_resume_after_a_crash_is_exact(tmp_path, monkeypatch):
    """Killed mid-run (after the step-3 checkpoint), then --resume: the same weights, history and val loss
    as the run that never stopped (each step's batch, dropout and prefix noise come from (seed, step))."""
    from bridgeocr.train import lm

    lines = [f"the quick brown fox {i} jumps over the lazy dog." for i in range(40)]  # prefix reading: lines
    kw = dict(docs=lines, val_docs=None, steps=6, eval_every=3, prefix_read=0.5, **TINY)
    full = train_lm(out=tmp_path / "full", **kw)
    original = lm._LMModule.training_step

    def crash(self, batch, batch_idx):
        if self.global_step == 4:
            raise RuntimeError("killed")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(lm._LMModule, "training_step", crash)
    with pytest.raises(RuntimeError, match="killed"):
        train_lm(out=tmp_path / "cut", **kw)
    monkeypatch.undo()
    assert json.loads((tmp_path / "cut" / "last" / "train_state.json").read_text())["step"] == 3
    assert (tmp_path / "cut" / "last.ckpt" / "state.json").is_file()
    again = train_lm(out=tmp_path / "cut", resume=True, **kw)
    assert again["steps"] == 6 and again["history"] == full["history"]
    assert again["val_loss"] == pytest.approx(full["val_loss"], abs=1e-6)
    a, b = _tensors(tmp_path / "full"), _tensors(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with (tmp_path / "cut" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows if r["train/loss"]] == [str(s) for s in range(6)]  # the replayed ones once
    assert [r["step"] for r in rows if r["val/loss"]] == ["3", "6"]
    assert {"val/ppl", "val/prefix_read_loss"} <= rows[0].keys()


def test_lm_minutes_budget_is_kept_across_a_resume(tmp_path):
    out = tmp_path / "lm"
    card = train_lm(docs=DOCS, val_docs=None, out=out, steps=3, **TINY)
    assert card["precision"] == "32-true" and card["devices"] == 1 and card["stopped_by"] == "steps"
    assert (out / "tb").is_dir() and (out / "metrics.csv").is_file()
    spent = json.loads((out / "last" / "train_state.json").read_text())["elapsed_s"]
    again = train_lm(docs=DOCS, val_docs=None, out=out, steps=50, minutes=spent / 2 / 60, resume=True, **TINY)
    assert again["stopped_by"] == "minutes" and again["steps"] == 3  # the budget was spent by the first run


@pytest.mark.slow
def test_lm_train_ddp_two_cpu_processes(tmp_path):
    import os
    import subprocess
    import sys

    corpus = tmp_path / "c.txt"
    corpus.write_text(DOCS[0] + "\n<|endoftext|>\n" + DOCS[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bridgeocr.cli", "lm", "train", "--corpus", str(corpus), "--out", "lm",
         "--steps", "4", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "16",
         "--batch-size", "4", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("perplexity") == 1  # rank 0 evaluates and writes
    card = json.loads((tmp_path / "lm" / "lm_card.json").read_text())
    assert card["devices"] == 2 and card["steps"] == 4 and card["val_ppl"] > 1
    assert (tmp_path / "lm" / "last.ckpt" / "tensors.safetensors").is_file()


def test_an_older_resume_state_is_refused_with_a_way_on(tmp_path):
    """A directory from the hand-written loop (last/ with optimizer.safetensors, no last.ckpt/): --resume
    says how to go on from its weights instead of failing later or starting over in place."""
    from safetensors.torch import save_file

    from bridgeocr.errors import BridgeOCRError

    out = tmp_path / "old"
    train_lm(docs=DOCS, val_docs=None, out=out, steps=1, **TINY)
    save_file({"0.exp_avg": torch.zeros(2)}, str(out / "last" / "optimizer.safetensors"))
    for name in ("last.ckpt", "last.ckpt.prev"):
        shutil.rmtree(out / name, ignore_errors=True)
    with pytest.raises(BridgeOCRError, match="older bridgeocr.*--init"):
        train_lm(docs=DOCS, val_docs=None, out=out, steps=2, resume=True, **TINY)
    card = train_lm(docs=DOCS, val_docs=None, out=tmp_path / "new", init=out / "last", steps=1, **TINY)
    assert card["init"] == str(out / "last")
