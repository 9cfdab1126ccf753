"""Issue 16, points 3-4: checkpoints survive a kill and a full disk; a run killed mid-epoch and resumed ends
with the uninterrupted run's weights (sampler place, RNG, optimiser, schedule), its metrics.csv without
replayed rows."""

from __future__ import annotations

import csv
import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bridgeocr.cli import main
from bridgeocr.train.resume import SafeCheckpointIO
from conftest import CLI_ENTRY, make_box_dataset, run_killed

YAML = """
data:
  source: {src}
  image: {{height: 16, width_policy: pad, max_width: 256, width_multiple: 4}}
model:
  encoder: {{dim: 32, depth: 1, heads: 2, patch_height: 16, patch_width: 4, conv_stem: false, max_width: 512,
             dropout: 0.1}}
  connector: {{kind: linear}}
  decoder: {{n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64, dropout: 0.1}}
  max_text_tokens: 20
loss: {{input_dropout: 0.2}}
optim: {{batch_size: 4, max_steps: 10, warmup_steps: 2}}
train: {{name: a, out_dir: {out}, accelerator: cpu, log_every_steps: 1, val_every_steps: 4}}
"""

# `bridgeocr train` is killed once the optimiser has made kill_at steps (checkpoints every 4 steps; 24 training
# lines in batches of 4 are 6 batches an epoch).


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tmp dir, config, the uninterrupted run's dir)."""
    tmp = tmp_path_factory.mktemp("resume")
    src = make_box_dataset(tmp / "data", n=48)
    cfg = tmp / "cfg.yaml"
    cfg.write_text(YAML.format(src=src, out=tmp / "runs"))
    assert main(["train", "--config", str(cfg), "train.name=straight"]) == 0
    return tmp, cfg, tmp / "runs" / "straight"


def _killed_run(tmp: Path, cfg: Path, name: str, kill_at: int) -> Path:
    run_killed("bridgeocr.train.module:OCRLightningModule", kill_at,
               ["train", "--config", str(cfg), f"train.name={name}"], cwd=tmp)
    return tmp / "runs" / name


def _weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / which / "model.safetensors"))


def _ckpt_step(path: Path) -> int:
    return int(SafeCheckpointIO().load_checkpoint(path)["global_step"])


@pytest.mark.parametrize("kill_at, checkpoint", [(6, 4), (9, 8)], ids=["mid-epoch-0", "mid-epoch-1"])
def test_killed_mid_epoch_resumes_to_the_uninterrupted_weights(setup, capsys, kill_at, checkpoint):
    """Step 4 is batch 4 of epoch 0, step 8 batch 2 of epoch 1: a resumed epoch after the first keeps its own
    order (Lightning does not call on_train_epoch_start for it; the loader's state sets the epoch)."""
    tmp, cfg, straight = setup
    name = f"killed{kill_at}"
    run = _killed_run(tmp, cfg, name, kill_at=kill_at)
    assert _ckpt_step(run / "last.ckpt") == checkpoint  # the kill came after this checkpoint, mid-epoch
    assert not (run / "metrics.json").exists()
    assert main(["train", "--config", str(cfg), f"train.name={name}", "--resume"]) == 0
    a, b = _weights(straight), _weights(run)
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed weights differ from the uninterrupted run's by {worst}"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    seen = [(r["step"], frozenset(k for k, v in r.items() if v)) for r in rows]
    assert len(seen) == len(set(seen)), "metrics.csv holds replayed rows"
    straight_rows = list(csv.DictReader((straight / "metrics.csv").open()))
    assert sorted(r["step"] for r in rows) == sorted(r["step"] for r in straight_rows)


def test_a_damaged_checkpoint_falls_back_to_the_one_before(setup, capsys):
    tmp, cfg, _ = setup
    run = _killed_run(tmp, cfg, "damaged", kill_at=9)  # checkpoints at steps 4 and 8
    assert _ckpt_step(run / "last.ckpt") == 8 and _ckpt_step(run / "last.ckpt.prev") == 4
    blob = run / "last.ckpt" / "tensors.safetensors"
    blob.write_bytes(blob.read_bytes()[:100])  # truncated, as a kill on a copying filesystem left it
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "train.name=damaged", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming from the checkpoint before it" in out and "last.ckpt.prev" in out
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_both_checkpoints_damaged_is_one_line(setup, capsys):
    tmp, cfg, _ = setup
    run = _killed_run(tmp, cfg, "both", kill_at=9)
    for d in ("last.ckpt", "last.ckpt.prev"):
        (run / d / "state.json").write_text("{not json")
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "train.name=both", "--resume"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "last.ckpt" in err[0] and "last.ckpt.prev" in err[0]


def test_a_kill_while_writing_leaves_the_previous_checkpoint(setup):
    """SIGKILL in the middle of writing the step-8 checkpoint: last.ckpt is still step 4's; the resumed run
    removes the killed writer's temporary directory."""
    tmp, cfg, straight = setup
    writer_killer = """
from bridgeocr.train import resume
real = resume.save_file
def save_file(tensors, path):
    if module_step[0] >= 8:
        open(path, "wb").write(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    real(tensors, path)
resume.save_file = save_file
module_step = [0]
orig_end = cls.on_train_batch_end
def track(self, *a):
    module_step[0] = self.global_step
    orig_end(self, *a)
cls.on_train_batch_end = track
"""
    # the step kill (after step 1000) never comes: the writer's kill at step 8 does
    run_killed("bridgeocr.train.module:OCRLightningModule", 1000,
               ["train", "--config", str(cfg), "train.name=midwrite"], cwd=tmp, entry=writer_killer + CLI_ENTRY)
    run = tmp / "runs" / "midwrite"
    assert _ckpt_step(run / "last.ckpt") == 4
    assert [p for p in run.iterdir() if p.name.startswith(".last.ckpt.tmp-")]  # the killed writer's
    assert main(["train", "--config", str(cfg), "train.name=midwrite", "--resume"]) == 0
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    a, b = _weights(straight), _weights(run)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_a_full_disk_ends_the_run_with_one_line_and_keeps_what_was_written(setup, monkeypatch, capsys):
    tmp, cfg, _ = setup
    from bridgeocr.train import resume

    real, calls = resume.save_file, []

    def full_after_one(tensors, path):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(tensors, path)

    monkeypatch.setattr(resume, "save_file", full_after_one)
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "train.name=full"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "no space left" in err[0]
    run = tmp / "runs" / "full"
    assert _ckpt_step(run / "last.ckpt") == 4  # the checkpoint written before the disk filled
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_a_really_full_filesystem(setup, tmp_path, monkeypatch, capsys):
    """The same on a size-limited tmpfs filled to the brim (needs root and mount; skipped elsewhere). The
    start-up free-space check is lowered so that the disk fills during the run, not before it."""
    tmp, cfg, _ = setup
    mnt = tmp_path / "small"
    mnt.mkdir()
    monkeypatch.setattr("bridgeocr.train.run.TRAIN_NEED", 1)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root and mount permission)")
    try:
        filler = mnt / "filler"
        with filler.open("wb") as f:  # the start-up check passes, the run's first checkpoints do not fit
            free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
            f.write(b"\0" * max(0, free - 150_000))
        capsys.readouterr()
        code = main(["train", "--config", str(cfg), f"train.out_dir={mnt}", "train.name=tmpfs"])
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(err) == 1, err
        assert "space" in err[0] and str(mnt) in err[0]
        leftovers = [p for p in (mnt / "tmpfs").rglob("*") if p.name.startswith(".")] if (mnt / "tmpfs").exists() \
            else []
        assert not leftovers
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
