"""The Lightning plumbing of `lm train`, `encoder train` and the TrOCR-style baseline (train/encdec.py).

`build_trainer` makes the `pl.Trainer`: devices / nodes / strategy / precision, CSV (`OUT/csv/partN`, one
part per start or resume, merged into `OUT/metrics.csv`) and TensorBoard (`OUT/tb`) logs, the progress bar,
the resume state as safetensors + JSON (`OUT/last.ckpt/`, train/resume.py `SafeCheckpointIO`) and the
`--minutes` budget (`Budget`: training time, kept across resumes). `Checkpoints` evaluates every N steps
and at the end, writes the command's own model directory (`OUT/last/`) and then `last.ckpt`. `fit` runs
the trainer and says what stopped it; Ctrl-C ends a run like a budget does.
"""

from __future__ import annotations

import csv
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from bridgeocr.errors import BridgeOCRError
from bridgeocr.preflight import TRAIN_NEED, ensure_writable
from bridgeocr.train.checkpoint import disk_full, guard_run_dir
from bridgeocr.train.resume import SafeCheckpointIO, resume_point

__all__ = ["CKPT", "Budget", "Checkpoints", "build_trainer", "fit", "finish_interrupted", "precision_for",
           "resume_checkpoint", "start_run", "step_seed", "parse_devices", "progress_bar", "csv_part",
           "merge_csv_logs", "follow_epoch"]

CKPT = "last.ckpt"  # the trainer's resume state in the output directory


def precision_for(value: str | None, accelerator: str = "auto") -> str:
    """`auto`: bf16-mixed on a GPU that has it, else 16-mixed on a GPU, 32-true on the CPU."""
    p = str(value or "auto")
    if p != "auto":
        return p
    gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if gpu and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed" if gpu else "32-true"


def resume_checkpoint(out: Path, resume: bool) -> Path | None:
    """The resume state a `--resume` continues from (last.ckpt, else the one kept before it), or None."""
    return resume_point(Path(out) / CKPT) if resume else None


def start_run(out: Path, resume: bool, overwrite: bool) -> Path | None:
    """The resume state to continue from (None: a new run), once a run in `out` is known not to be replaced
    by accident (checkpoint.guard_run_dir) and `out` to be writable."""
    out = Path(out)
    ckpt = resume_checkpoint(out, resume)
    if resume and ckpt is None and not overwrite and (out / "last" / "optimizer.safetensors").is_file():
        raise BridgeOCRError(f"{out}: its resume state is an older bridgeocr's (last/ without {CKPT}/); start a "
                             f"new run from its weights instead: --init {out / 'last'} and another --out")
    guard_run_dir(out, ckpt is not None, overwrite, resume_asked=resume)
    ensure_writable(out, TRAIN_NEED)
    if resume and ckpt is None:
        print(f"--resume: nothing to resume in {out / CKPT}; starting fresh", flush=True)
    return ckpt


def step_seed(*parts) -> int:
    """A 63-bit seed from (seed, rank, step, ...) alone: what a step draws does not depend on the steps
    before it, so a resumed run draws exactly what the stopped one would have."""
    return random.Random("/".join(map(str, parts))).getrandbits(63)


def csv_part(out: Path, resuming: bool) -> int:
    """The CSV log part of this start: 0 for a new run, one more than the last for a resumed one."""
    if not resuming:
        return 0
    return 1 + max([int(p.name[4:]) for p in (out / "csv").glob("part*") if p.name[4:].isdigit()], default=-1)


def follow_epoch(loader, trainer: pl.Trainer, counter: str = "processed"):
    """`loader` (a data/preprocess.ResumableLoader) told its place in the epoch by the trainer's batch count,
    so a checkpoint records where the epoch was left. `counter`: "processed" when checkpoints are written in
    `on_train_batch_end` (the batch is done by then), "completed" when after it (`bridgeocr train`, at
    validation)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    loader.progress = lambda: getattr(progress.current, counter)
    return loader


class Budget(pl.Callback):
    """`--minutes`: stop once the training time (kept in the resume state) reaches the budget; checked
    before the first step and after each optimizer step (with gradient accumulation not in the middle of
    one), rank 0 deciding for all. `stopped_by`: minutes | interrupted. `fraction()`: the share of the
    budget used at the last check, rank 0's on every process (a schedule that follows the clock)."""

    def __init__(self, minutes: float | None):
        self.budget_s = None if minutes is None else float(minutes) * 60
        self.before, self.t0, self.stopped_by = 0.0, None, None
        self.checked_s, self.step_seen = 0.0, None

    def elapsed(self) -> float:
        return self.before + (time.time() - self.t0 if self.t0 is not None else 0.0)

    def fraction(self) -> float | None:
        return None if self.budget_s is None else (self.checked_s or self.before) / self.budget_s

    def state_dict(self) -> dict:
        return {"elapsed_s": self.elapsed()}

    def load_state_dict(self, state: dict) -> None:
        self.before = float(state.get("elapsed_s", 0.0))

    def on_train_start(self, trainer, module) -> None:
        self.t0 = time.time()
        self.step_seen = trainer.global_step
        self._check(trainer)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step_seen:  # else a batch accumulated gradients only
            self.step_seen = trainer.global_step
            self._check(trainer)

    def on_exception(self, trainer, module, exception) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.stopped_by = "interrupted"

    def _check(self, trainer) -> None:
        if self.budget_s is None:
            return
        self.checked_s = float(trainer.strategy.broadcast(self.elapsed()))
        if self.checked_s >= self.budget_s:
            trainer.should_stop = True
            self.stopped_by = "minutes"


class Checkpoints(pl.Callback):
    """Every `every` optimizer steps before the last, and at the end: `evaluate(module, state, final)` on
    rank 0 (it may record into `state`, which the resume state keeps; the scalars it returns go to the CSV
    and TensorBoard logs), `write_last(module, state)` on rank 0 (the command's model directory), then
    `last.ckpt` (every rank takes part) and the merged CSV log."""

    def __init__(self, out: Path, every: int, evaluate: Callable, write_last: Callable, state: dict):
        self.out, self.every = Path(out), max(1, int(every))
        self.evaluate, self.write_last, self.state = evaluate, write_last, state
        self.saved_step, self.step_seen = None, None

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state.update(state)

    def on_train_start(self, trainer, module) -> None:
        self.step_seen = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.step_seen:  # gradient accumulation: this batch made no optimizer step
            return
        self.step_seen = step
        if step % self.every == 0 and step < trainer.max_steps:
            self.save(trainer, module, final=False)

    def on_train_end(self, trainer, module) -> None:
        self.save(trainer, module, final=True)

    def save(self, trainer, module, final: bool, checkpoint: bool = True) -> None:
        if trainer.is_global_zero:
            metrics = self.evaluate(module, self.state, final)
            for logger in trainer.loggers if metrics else []:
                logger.log_metrics(metrics, step=trainer.global_step)
            self.write_last(module, self.state)
        if checkpoint and self.saved_step != trainer.global_step:
            trainer.save_checkpoint(self.out / CKPT, weights_only=False)  # the full state (and no log line)
            self.saved_step = trainer.global_step
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.save()
            merge_csv_logs(self.out)


def build_trainer(out: Path, *, max_steps: int, budget: Budget, callbacks: list, devices=None,
                  num_nodes: int | None = None, strategy: str | None = None, precision: str | None = None,
                  accelerator: str | None = None, progress: bool = True, resuming: bool = False,
                  grad_clip: float = 1.0, accumulate: int = 1) -> pl.Trainer:
    """The trainer for a run in `out` (module docstring); `accumulate`: batches per optimizer step."""
    out = Path(out)
    accelerator = accelerator or "auto"
    loggers = [CSVLogger(save_dir=str(out), name="csv", version=f"part{csv_part(out, resuming)}"),
               TensorBoardLogger(save_dir=str(out), name="tb", version="", default_hp_metric=False)]
    trainer = pl.Trainer(
        accelerator=accelerator, devices=parse_devices(devices) if devices is not None else 1,
        num_nodes=num_nodes or 1, strategy=strategy or "auto", precision=precision_for(precision, accelerator),
        max_steps=max_steps, max_epochs=-1, gradient_clip_val=grad_clip or None,
        accumulate_grad_batches=max(1, int(accumulate)), logger=loggers,
        callbacks=[budget, *callbacks, *([progress_bar()] if progress else [])],
        plugins=[SafeCheckpointIO()], enable_checkpointing=False, enable_progress_bar=progress,
        use_distributed_sampler=False, log_every_n_steps=max(1, min(50, max_steps // 200)),
        num_sanity_val_steps=0, limit_val_batches=0, enable_model_summary=False, deterministic=False)
    return trainer


def fit(trainer: pl.Trainer, module, budget: Budget, ckpt: Path | None, out: Path, **loaders) -> str:
    """`trainer.fit` (from `ckpt` when resuming); returns what stopped it: steps | minutes | interrupted.
    A full disk is one line (the checkpoints written before are intact)."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, ckpt_path=str(ckpt) if ckpt else None, **loaders)
    except SystemExit:  # Lightning's answer to Ctrl-C: the caller finishes the run instead
        if budget.stopped_by != "interrupted":
            raise
    except Exception as exc:
        if disk_full(exc):
            raise BridgeOCRError(f"{out}: no space left on the device; the checkpoints written before are "
                                 "intact: free space, then --resume") from None
        raise
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl-C once it has caught one
    if budget.stopped_by == "interrupted":
        return "interrupted"
    return "steps" if trainer.global_step >= trainer.max_steps else (budget.stopped_by or "steps")


def finish_interrupted(trainer: pl.Trainer, module, saver: Checkpoints) -> None:
    """After Ctrl-C (the trainer torn down, the module on the CPU): the final evaluation and `last/` as at
    the end of a run, and `last.ckpt` where one process trained."""
    module.to(trainer.strategy.root_device)
    saver.save(trainer, module, final=True, checkpoint=False)
    if trainer.world_size == 1:
        try:
            trainer.save_checkpoint(saver.out / CKPT, weights_only=False)
        except Exception as exc:  # the state written at the last evaluation is still there
            print(f"could not write {saver.out / CKPT} after the interruption: {exc}", flush=True)


def parse_devices(value):
    """`--devices` / `train.devices` as Lightning takes them: 2, [0, 1], "auto", -1; None stays None."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    if text.startswith("[") or "," in text:
        return [int(x) for x in text.strip("[]").split(",") if x.strip()]
    return text  # auto / -1


def merge_csv_logs(run_dir: Path) -> Path | None:
    """csv/part*/metrics.csv (one part per start or resume) -> run_dir/metrics.csv."""
    parts = sorted((run_dir / "csv").glob("part*/metrics.csv"),
                   key=lambda p: int(p.parent.name[4:]) if p.parent.name[4:].isdigit() else 0)
    if not parts:
        return None
    rows, keys = [], []
    for p in parts:
        with p.open(newline="") as f:
            r = csv.DictReader(f)
            for k in r.fieldnames or []:
                if k not in keys:
                    keys.append(k)
            rows = _without_replayed(rows, list(r))
    keys = ["step"] + sorted(k for k in keys if k != "step") if "step" in keys else sorted(keys)
    out = run_dir / "metrics.csv"
    tmp = run_dir / ".metrics.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out)
    return out


def _without_replayed(rows: list[dict], part: list[dict]) -> list[dict]:
    """Rows so far + a resumed part: the steps the part logged again after its checkpoint (a kill after
    step s resumes from the checkpoint before it) are kept once, as the resumed part logged them."""
    def step(row):
        try:
            return int(float(row.get("step") or -1))
        except ValueError:
            return -1

    def signature(row):
        return step(row), frozenset(k for k, v in row.items() if v not in (None, ""))

    if not part or not rows:
        return rows + part
    first = min(step(r) for r in part)
    again = {signature(r) for r in part if step(r) == first}
    kept = [r for r in rows if step(r) < first or (step(r) == first and signature(r) not in again)]
    return kept + part


def progress_bar():
    """Lightning's tqdm bar without its logger version number."""
    class Bar(TQDMProgressBar):
        """tqdm bar without Lightning's logger version number."""

        def get_metrics(self, trainer, pl_module):
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            return metrics

    return Bar(refresh_rate=1)
