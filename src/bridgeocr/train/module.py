"""LightningModule for OCR training: CE (+ KD from a frozen LM reading the text, train/teacher.py) (+ CTC),
greedy val decoding.

Parameter groups (each with its own learning rate): `encoder` (+ the CTC head), `connector` (everything
that is neither encoder nor decoder), `decoder`. `optim.freeze_schedule` entries
`{until_step: N, train: [connector]}` (or `freeze: [...]`) keep the other groups still before step N:
their gradients are dropped before the optimizer step (so no momentum, no weight decay), which also
works under DDP (requires_grad is never toggled after wrapping).
"""

from __future__ import annotations

import random
import time
from dataclasses import replace

import lightning.pytorch as pl
import torch
from tqdm.auto import tqdm

from bridgeocr.config import ExperimentConfig
from bridgeocr.errors import ConfigError, NoUsableDataError
from bridgeocr.eval.metrics import cer as corpus_cer
from bridgeocr.eval.metrics import format_seed_metrics, line_cers
from bridgeocr.eval.metrics import wer as corpus_wer
from bridgeocr.train.losses import ce_loss, combine, ctc_loss, ctc_targets, kd_loss, target_mask
from bridgeocr.train.optim import param_groups
from bridgeocr.train.schedule import lr_factor
from bridgeocr.train.teacher import teacher_logits

__all__ = ["OCRLightningModule", "GROUPS", "param_group_name", "parse_freeze_schedule"]

GROUPS = ("encoder", "connector", "decoder")


def param_group_name(name: str) -> str:
    """Top-level parameter name -> optimizer group."""
    top = name.split(".", 1)[0]
    if top in ("encoder", "ctc_head", "ctc") or top.startswith("ctc"):
        return "encoder"
    if top == "decoder":
        return "decoder"
    return "connector"


def parse_freeze_schedule(schedule) -> list[tuple[int, set[str]]]:
    """[{until_step: N, train: [groups]} | {until_step: N, freeze: [groups]}] -> [(N, trained groups)]."""
    out = []
    for i, entry in enumerate(schedule or []):
        if not isinstance(entry, dict) or "until_step" not in entry:
            raise ConfigError(f"optim.freeze_schedule[{i}]: expected {{until_step: N, train: [groups]}}")
        if "train" in entry:
            names = entry["train"]
            names = [names] if isinstance(names, str) else list(names)
            trained = set(names)
        elif "freeze" in entry:
            names = entry["freeze"]
            names = [names] if isinstance(names, str) else list(names)
            trained = set(GROUPS) - set(names)
        else:
            raise ConfigError(f"optim.freeze_schedule[{i}]: needs `train: [...]` or `freeze: [...]`")
        bad = set(names) - set(GROUPS)
        if bad:
            raise ConfigError(f"optim.freeze_schedule[{i}]: unknown group(s) {sorted(bad)}; "
                              f"groups are {', '.join(GROUPS)}")
        out.append((int(entry["until_step"]), trained))
    return sorted(out, key=lambda e: e[0])


def _gather_objects(obj):
    """all_gather_object when distributed, else [obj]."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


class OCRLightningModule(pl.LightningModule):
    """Wraps an OCRModel; `on_val_result(result, epoch, step)` (a callable) receives gathered val results
    on global rank 0 (the runner saves `best/` there)."""

    def __init__(self, model, cfg: ExperimentConfig, tokenizer, teacher=None, total_steps: int | None = None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.tokenizer = tokenizer
        # the frozen KD teacher is not a submodule: not in the optimizer, not in DDP, not in checkpoints
        object.__setattr__(self, "_teacher", teacher)
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.total_steps = total_steps or cfg.optim.max_steps
        self.freeze_schedule = parse_freeze_schedule(cfg.optim.freeze_schedule)
        self._val: list = []
        self.val_history: list[dict] = []
        self.last_val_step = -1
        self.on_val_result = None
        self.train_lines = 0
        self.train_seconds = 0.0
        self._t_batch = None
        self.visual_tokens_sum = 0.0
        self.visual_tokens_n = 0
        self.last_train_epoch = None
        self._epoch_lines: int | None = None  # readable lines this epoch; None: not counted (resumed mid-epoch)
        self._pending_rng = None  # a resumed run's RNG state, set at its first batch

    # ------------------------------------------------------------------------------------ helpers

    @property
    def teacher(self):
        return self._teacher

    def trained_groups(self, step: int) -> set[str]:
        for until, groups in self.freeze_schedule:
            if step < until:
                return groups
        return set(GROUPS)

    def _corrupt_inputs(self, batch):
        """Text-token dropout: some input tokens (never BOS, never a target) become UNK, so the decoder
        cannot lean on the language prior alone and must read the image (`loss.input_dropout`)."""
        p = self.cfg.loss.input_dropout
        if p <= 0 or not self.training:
            return batch
        ids = batch.input_ids
        drop = (torch.rand(ids.shape, device=ids.device) < p) & batch.attention_mask.bool()
        drop[:, 0] = False
        unk = getattr(self.tokenizer, "unk_id", self.tokenizer.pad_id)
        return replace(batch, input_ids=torch.where(drop, torch.full_like(ids, unk), ids))

    def _loss(self, batch):
        out = self.model(self._corrupt_inputs(batch))  # targets below stay the true tokens
        logits = out.logits
        ce = ce_loss(logits, batch.input_ids, batch.attention_mask)
        parts = {"ce": ce.detach()}
        kd = None
        lc = self.cfg.loss
        if lc.kd_alpha > 0 and self.teacher is not None and self.global_step >= lc.kd_start_step:
            with torch.no_grad():
                t_logits = teacher_logits(self.teacher, batch.input_ids, batch.attention_mask)
            kd = kd_loss(logits, t_logits, target_mask(batch.attention_mask), lc.kd_tau)
            parts["kd"] = kd.detach()
        loss = combine(ce, kd, lc.kd_alpha, lc.kd_form)
        ctc_logits = getattr(out, "ctc_logits", None)
        if lc.ctc_weight > 0 and ctc_logits is not None:
            tok = self.tokenizer
            targets, lengths = ctc_targets(batch.input_ids, batch.attention_mask,
                                           drop_ids=[tok.pad_id, tok.bos_id, tok.eos_id])
            frame_mask = out.ctc_mask
            ctc = ctc_loss(ctc_logits, frame_mask, targets, lengths, blank=0)
            parts["ctc"] = ctc.detach()
            loss = loss + lc.ctc_weight * ctc
        vm = getattr(out, "visual_mask", None)
        if vm is not None:
            self.visual_tokens_sum += float(vm.sum())
            self.visual_tokens_n += int(vm.shape[0])
        return loss, parts

    # ----------------------------------------------------------------------------------- training

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        bs = getattr(loader, "batch_sampler", None)
        if bs is not None and hasattr(bs, "set_epoch"):
            bs.set_epoch(self.current_epoch)
        self._epoch_lines = 0

    def on_train_epoch_end(self) -> None:
        """An epoch without one readable line (all images unreadable: e.g. Git LFS pointers) ends the run:
        1,000 empty epochs and a NaN CER are no result."""
        if self._epoch_lines == 0:
            dataset = getattr(self.trainer.train_dataloader, "dataset", None)
            msgs = getattr(dataset, "skip_messages", [])
            raise NoUsableDataError(str(self.cfg.data.source), f"not one of the {len(dataset or [])} training "
                                    f"lines could be read" + (f", e.g. {msgs[0]}" if msgs else ""))

    def on_train_batch_start(self, batch, batch_idx):
        rng, self._pending_rng = self._pending_rng, None
        if rng is not None:  # resumed: the dropout masks go on exactly as in the run that was stopped
            _set_rng_state(rng)
        self._t_batch = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.last_train_epoch = int(self.current_epoch)
        if self._t_batch is not None:
            self.train_seconds += time.perf_counter() - self._t_batch
            self._t_batch = None

    def training_step(self, batch, batch_idx):
        if batch is None:  # every sample of this batch was bad: a zero loss keeps DDP ranks in step
            return sum(p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad)
        loss, parts = self._loss(batch)
        self.train_lines += len(batch)
        self._epoch_lines = (self._epoch_lines or 0) + len(batch)
        bs = len(batch)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs, on_step=True, on_epoch=False)
        for k, v in parts.items():
            self.log(f"train/{k}", v, batch_size=bs, on_step=True, on_epoch=False)
        return loss

    def on_after_backward(self) -> None:
        if not self.freeze_schedule:
            return
        trained = self.trained_groups(self.global_step)
        if trained == set(GROUPS):
            return
        for name, p in self.model.named_parameters():
            if param_group_name(name) not in trained:
                p.grad = None

    def configure_optimizers(self):
        oc = self.cfg.optim
        lrs = {"encoder": oc.lr_encoder, "connector": oc.lr_connector, "decoder": oc.lr_decoder}
        groups = param_groups(self.model, {g: lrs[g] for g in GROUPS}, param_group_name, oc.weight_decay)
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-8)
        warmup, total = oc.warmup_steps, self.total_steps
        budget_s = oc.max_minutes * 60 if oc.max_minutes else None

        def factor(step: int) -> float:  # a timed run decays by its clock too (training time, kept on resume)
            return lr_factor(step, warmup, total, time_fraction=self.train_seconds / budget_s if budget_s else None)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --------------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch, batch_idx):
        if batch is None:
            return None
        loss = ce_loss(self.model(batch).logits, batch.input_ids, batch.attention_mask)
        self.log("val/loss", loss, batch_size=len(batch), on_step=False, on_epoch=True, sync_dist=True)
        hyps = self.model.generate(batch.images, batch.image_mask, beam=self.cfg.train.eval_beam or 1)
        for i, ref, h in zip(batch.ids, batch.texts, hyps):
            self._val.append((i, ref, h.text, float(h.confidence)))
        return None

    def on_validation_epoch_end(self) -> None:
        rows = [r for part in _gather_objects(self._val) for r in part]
        self._val = []
        if self.trainer.sanity_checking:
            return
        refs = [r[1] for r in rows]
        hyps = [r[2] for r in rows]
        if not rows:  # never a CER of 0 or NaN from nothing
            dataset = getattr(self.trainer.val_dataloaders, "dataset", None)
            msgs = getattr(dataset, "skip_messages", [])
            raise NoUsableDataError(str(self.cfg.data.source), f"split {self.cfg.data.val_split!r}: not one of "
                                    f"its lines could be read" + (f", e.g. {msgs[0]}" if msgs else ""))
        c, w = corpus_cer(refs, hyps), corpus_wer(refs, hyps)
        self.log("val/cer", c, rank_zero_only=True, sync_dist=False)
        self.log("val/wer", w, rank_zero_only=True, sync_dist=False)
        self.last_val_step = int(self.global_step)
        epoch = self.val_epoch()
        rec = {"epoch": epoch, "step": int(self.global_step), "cer": c, "wer": w,
               "n": len(rows)}
        self.val_history.append(rec)
        if self.trainer.is_global_zero:

            for line in format_seed_metrics("val", epoch, c, w).splitlines():
                tqdm.write(line)  # above the progress bars, on a line of its own
            if self.on_val_result is not None:
                result = {"ids": [r[0] for r in rows], "refs": refs, "hyps": hyps,
                          "confidences": [r[3] for r in rows], "line_cer": line_cers(refs, hyps),
                          "cer": c, "wer": w, "n": len(rows)}
                self.on_val_result(result, epoch, int(self.global_step))

    def val_epoch(self) -> int:
        """The epoch a validation belongs to: the current one during fit; after fit stopped mid-epoch
        (max_steps / max_minutes) Lightning has already advanced the counter, so the last trained one."""
        if self.trainer.state.fn == "fit" or self.last_train_epoch is None:
            if self.trainer.state.fn != "fit":
                return max(0, int(self.current_epoch) - 1)
            return int(self.current_epoch)
        return self.last_train_epoch

    # ----------------------------------------------------------------------------- state on resume

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["bridgeocr"] = {"val_history": self.val_history, "train_lines": self.train_lines,
                                   "train_seconds": self.train_seconds, "rng": _rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("bridgeocr") or {}
        self.val_history = list(state.get("val_history", []))
        self.train_lines = int(state.get("train_lines", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self._pending_rng = state.get("rng")  # set at the first batch: loading data draws from it before


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.to(torch.uint8).cpu() for t in state["cuda"]])
