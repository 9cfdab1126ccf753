"""Training the TrOCR-style baseline (models/encdec.py) on equal footing with a run (`train_like`): the same
encoder config and pretrained encoder
(`model.encoder.pretrained`), a GPT-2 decoder of the same n_layer/n_embd/n_head/vocabulary initialised from
`model.decoder.pretrained` (its first n_layer blocks; the cross-attention is new, random), the same
tokenizer, data, image settings, batch size (x accumulate), optimizer steps, AdamW (betas 0.9/0.98) with
the run's warm-up + cosine schedule, learning rates, weight decay and gradient clipping. The parameter groups
map as: encoder -> `lr_encoder`; the new cross-attention (+ `enc_to_dec_proj` when widths differ) ->
`lr_connector` (it is the bridge, like our connector, and `freeze_schedule` entries naming `connector`
apply to it); the rest of the decoder -> `lr_decoder`. Loss: CE on the text only (PAD ignored); KD and
CTC terms of the run are not used (a plain TrOCR has neither).

It trains on the Lightning engine of the other stages (train/engine.py: devices, precision, `--minutes`,
`--resume`, logs). OUT holds the best model by val CER (config.json + model.safetensors, tokenizer.json,
baseline_card.json: what `models/encdec.load_baseline` and `peers.py --trocr` read); beside it `OUT/last/`
(the latest state, a baseline dir too, with `train_state.json`), the resume state `OUT/last.ckpt/`,
`metrics.csv` and `tb/`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import torch
from tqdm.auto import tqdm

from bridgeocr.config import ModelConfig, load_config
from bridgeocr.data.preprocess import make_loader
from bridgeocr.data.tokenizers import load_tokenizer
from bridgeocr.errors import BridgeOCRError, ConfigError, NoUsableDataError
from bridgeocr.eval.evaluate import evaluate_baseline
from bridgeocr.models.decoder import freeze_blocks
from bridgeocr.models.encdec import CARD, CROSS_KEYS, build_baseline
from bridgeocr.models.encoder import load_encoder
from bridgeocr.models.load import resolve_device
from bridgeocr.shipped import resolve_pretrained
from bridgeocr.train.checkpoint import atomic_dir, remove_path, write_json
from bridgeocr.train.engine import (
    Budget,
    Checkpoints,
    build_trainer,
    finish_interrupted,
    fit,
    follow_epoch,
    merge_csv_logs,
    start_run,
    step_seed,
)
from bridgeocr.train.losses import ce_loss
from bridgeocr.train.module import parse_freeze_schedule
from bridgeocr.train.optim import param_groups
from bridgeocr.train.run import open_split, shard
from bridgeocr.train.schedule import lr_factor

__all__ = ["train_like", "read_like", "build_like"]


# ------------------------------------------------------------------------------------------ training


def _group(name: str) -> str:
    if name.startswith("encoder."):
        return "encoder"
    if name.startswith("enc_to_dec_proj.") or any(k in name for k in CROSS_KEYS):
        return "connector"  # new weights: the bridge
    return "decoder"


def _apply_decoder_freeze(model, spec: str) -> None:
    """Our `decoder.freeze` (models/decoder.freeze_blocks) on the GPT-2 side; the new cross-attention, the
    bridge, always trains."""
    gpt2 = model.decoder.transformer
    freeze_blocks(model.decoder, gpt2.h, gpt2.ln_f, spec)
    for name, p in model.decoder.named_parameters():
        if any(k in name for k in CROSS_KEYS):
            p.requires_grad_(True)


def read_like(run_dir) -> tuple:
    """A finished run dir -> (ExperimentConfig, metrics dict, tokenizer)."""

    run_dir = Path(run_dir)
    for f in ("config.yaml", "metrics.json", "tokenizer.json"):
        if not (run_dir / f).is_file():
            raise BridgeOCRError(f"--like {run_dir}: no {f} (a finished `bridgeocr train` run dir is needed)")
    cfg = load_config(run_dir / "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return cfg, metrics, load_tokenizer(run_dir / "tokenizer.json")


def build_like(cfg, tokenizer):
    """The baseline for a run's config, initialised from the run's pretrained parts."""

    mc: ModelConfig = copy.deepcopy(cfg.model)
    height = cfg.data.image.height
    encoder = load_encoder(mc.encoder.pretrained, height)[0] if mc.encoder.pretrained else None
    dec_dir = resolve_pretrained(mc.decoder.pretrained)
    model = build_baseline(mc, tokenizer.vocab_size, height, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                           pad_id=tokenizer.pad_id, encoder=encoder, decoder_dir=dec_dir)
    model.encoder.requires_grad_(not mc.encoder.freeze)
    _apply_decoder_freeze(model, mc.decoder.freeze)
    return model


def train_like(like, out, steps: int | None = None, minutes: float | None = None, device: str | None = None,
               val_every: int | None = None, max_val: int | None = None, progress: bool = True, *,
               resume: bool = False, overwrite: bool = False, devices=None, num_nodes: int | None = None,
               strategy: str | None = None, precision: str | None = None) -> dict:
    """Train the baseline `--like` a finished run; save it to `out`; returns the card (also `out/CARD`; {} on
    the processes of a multi-process run but the first). A run in `out` is continued (`resume`), replaced
    (`overwrite`) or refused. device / devices / num_nodes / strategy / precision: `_hardware`."""
    t_start = time.time()
    cfg, run_metrics, tok = read_like(like)
    oc = cfg.optim
    steps = int(steps or run_metrics.get("step") or oc.max_steps)
    if steps < 1 or oc.accumulate < 1:
        raise ConfigError(f"steps and optim.accumulate: must be >= 1, got {steps} and {oc.accumulate}")
    hardware = _hardware(cfg.train, device, devices, num_nodes, strategy, precision)
    out = Path(out)
    ckpt = start_run(out, resume, overwrite)
    pl.seed_everything(cfg.train.seed, verbose=False)  # the new cross-attention: the same on every start
    train_src = open_split(cfg, cfg.data.train_split, cfg.data.max_train_samples)
    val_limit = max_val if max_val is not None else cfg.data.max_eval_samples
    val_src = open_split(cfg, cfg.data.val_split, val_limit)
    if not train_src:
        raise BridgeOCRError(f"{cfg.data.source}: split {cfg.data.train_split!r} has no lines")
    model = build_like(cfg, tok).train()  # its weights come from last.ckpt when resuming
    budget = Budget(minutes)
    module = _BaselineModule(model, cfg, steps, budget.fraction, lambda rank, world: make_loader(
        shard(train_src, rank, world, even=True), cfg.data.image, tok, batch_size=oc.batch_size, shuffle=True,
        seed=cfg.train.seed, num_workers=cfg.data.num_workers, max_text_tokens=cfg.model.max_text_tokens))
    static = _static_card(cfg, like, tok, run_metrics, model)
    saver = _saver(out, cfg, tok, static, val_src, val_every, steps, budget, progress)
    trainer = build_trainer(out, max_steps=steps, budget=budget, callbacks=[saver], progress=progress,
                            resuming=ckpt is not None, grad_clip=oc.grad_clip, accumulate=oc.accumulate,
                            **hardware)
    if trainer.is_global_zero:
        print(f"baseline like {like}: train {len(train_src)} lines, val {len(val_src)}, vocab "
              f"{tok.vocab_size}, {static['params'] / 1e6:.2f}M params, {steps} steps x batch {oc.batch_size}"
              + (f" x {oc.accumulate}" if oc.accumulate > 1 else "")
              + (f", budget {minutes} min" if minutes else "")
              + f", {trainer.world_size} process(es) on {trainer.strategy.root_device}, {trainer.precision}"
              + (f" (resuming from {ckpt})" if ckpt is not None else ""), flush=True)
    stopped = fit(trainer, module, budget, ckpt, out)
    if stopped == "interrupted":
        tqdm.write(f"interrupted at step {trainer.global_step}: evaluating and saving")
        finish_interrupted(trainer, module, saver)
    if not trainer.is_global_zero:
        return {}
    merge_csv_logs(out)
    card = _card(static, saver.state, module, trainer, budget, target_steps=steps, stopped_by=stopped,
                 minutes=minutes, wall_time_s=round(time.time() - t_start, 1), resumed=ckpt is not None)
    write_json(out / CARD, card)
    if card["val_cer"] is not None:
        print(f"baseline: step {card['steps']} ({stopped}), val CER {card['val_cer']:.4f} WER "
              f"{card['val_wer']:.4f} (best step {card['best_step']}); run: step {card['run']['step']}, "
              f"val CER {card['run']['val_cer']}", flush=True)
    print(f"wrote {out}", flush=True)
    return card


def _hardware(tc, device, devices, num_nodes, strategy, precision) -> dict:
    """build_trainer's hardware options. `device` (auto | cpu | cuda | cuda:N, as models/load.resolve_device
    reads it) picks the accelerator (cuda:N: that GPU; cpu: one process); the rest default to the --like
    run's `train.*` (its precision on a GPU only: mixed precision on the CPU is slower, not "like" it)."""
    accelerator, one = tc.accelerator, None
    if str(device) == "auto":
        accelerator = "auto"
    elif device is not None:
        dev = resolve_device(device)
        accelerator = "gpu" if dev.type == "cuda" else dev.type
        one = [dev.index] if dev.index is not None else 1 if dev.type == "cpu" else None
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return {"accelerator": accelerator, "devices": devices if devices is not None else one or tc.devices,
            "num_nodes": num_nodes or tc.num_nodes, "strategy": strategy or tc.strategy,
            "precision": precision or (tc.precision if on_gpu else "auto")}


class _BaselineModule(pl.LightningModule):
    """CE of the baseline on this process's share of the lines (width-bucketed batches, the place in the
    epoch kept by the resume state, dropout drawn from (seed, rank, step, batch) so a resumed run draws what
    the stopped one would have); the run's AdamW, warm-up + cosine (by steps or the budget's clock) and
    freeze schedule (the other groups' gradients dropped before the step, as train/module.py does)."""

    def __init__(self, model, cfg, steps: int, time_fraction, make_loader):
        super().__init__()
        self.model, self.cfg, self.steps = model, cfg, steps
        self.time_fraction, self.make_loader = time_fraction, make_loader
        self.freeze = parse_freeze_schedule(cfg.optim.freeze_schedule)  # encoder | connector | decoder
        self.loader, self.lines, self.train_seconds, self._t0, self.epoch_lines = None, 0, 0.0, None, None

    def train_dataloader(self):
        self.loader = self.make_loader(self.trainer.global_rank, self.trainer.world_size)
        return follow_epoch(self.loader, self.trainer)  # checkpoints in on_train_batch_end: "processed"

    def on_train_epoch_start(self) -> None:  # not called for an epoch resumed in the middle
        self.loader.batch_sampler.set_epoch(self.current_epoch)
        self.epoch_lines = 0

    def on_train_epoch_end(self) -> None:
        """An epoch without one readable line ends the run (else it would go on forever)."""
        if self.epoch_lines == 0:
            raise NoUsableDataError(str(self.cfg.data.source), "not one of the training lines could be read")

    def on_train_batch_start(self, batch, batch_idx):
        seed = step_seed("torch", self.cfg.train.seed, self.global_rank, self.global_step, batch_idx)
        torch.manual_seed(seed)
        self._t0 = time.perf_counter()

    def training_step(self, batch, batch_idx):
        if batch is None:  # every sample of this batch was bad: a zero loss keeps DDP ranks in step
            return sum(p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad)
        logits = self.model(pixel_values=batch.images, image_mask=batch.image_mask,
                            decoder_input_ids=batch.input_ids[:, :-1],
                            decoder_attention_mask=batch.attention_mask[:, :-1]).logits
        loss = ce_loss(logits, batch.input_ids, batch.attention_mask)
        self.lines += len(batch)
        if self.epoch_lines is not None:  # None: an epoch resumed in the middle, not counted
            self.epoch_lines += len(batch)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=len(batch))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.train_seconds += time.perf_counter() - self._t0

    def on_after_backward(self) -> None:
        trained = next((g for until, g in self.freeze if self.global_step < until), None)
        if trained is None:
            return
        for name, p in self.model.named_parameters():
            if _group(name) not in trained:
                p.grad = None

    def configure_optimizers(self):
        oc, steps, fraction = self.cfg.optim, self.steps, self.time_fraction
        lrs = {"encoder": oc.lr_encoder, "connector": oc.lr_connector, "decoder": oc.lr_decoder}
        groups = param_groups(self.model, lrs, _group, oc.weight_decay)
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-8)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, oc.warmup_steps, steps, time_fraction=fraction()))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["baseline"] = {"lines": self.lines, "train_seconds": self.train_seconds}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("baseline") or {}
        self.lines, self.train_seconds = int(state.get("lines", 0)), float(state.get("train_seconds", 0.0))


def _saver(out: Path, cfg, tok, static: dict, val_src, val_every, steps: int, budget,
           progress: bool) -> Checkpoints:
    """Val CER every `val_every` steps (if set) and at the end, into the history; a new best (at the end: one
    as good too) is written into `out` itself; `out/last/` at each checkpoint (every `val_every`, else every
    max(50, steps / 10) steps: the resume state is written with it)."""

    def evaluate(module, state, final):
        if not val_src or not (final or val_every):
            if final and not val_src:  # nothing to choose by: the final weights
                _save_in_place(out, module.model, tok, static)
            return {}
        step = int(module.global_step)
        r = evaluate_baseline(module.model, val_src, cfg.data.image, tok, batch_size=cfg.optim.batch_size,
                              max_new_tokens=static["max_new_tokens"], progress=progress,
                              desc="val" if final else f"val @{step}")
        history, best = state["history"], state["best"]
        if history and history[-1]["step"] == step:  # evaluated again: a finished run resumed
            history.pop()
        history.append({"step": step, "cer": r["cer"], "wer": r["wer"]})
        better = best is None or r["cer"] < best["cer"]
        if final and best is not None:  # at the end one as good wins too, and any after a NaN
            better = better or r["cer"] <= best["cer"] or math.isnan(best["cer"])
        if better:
            state["best"] = {**history[-1], "n": r["n"]}
            _save_in_place(out, module.model, tok, static)
        if not final:
            tqdm.write(f"step {step}: val CER {r['cer']:.4f}, WER {r['wer']:.4f} ({r['n']} lines)")
        return {"val/cer": r["cer"], "val/wer": r["wer"]}

    def write_last(module, state):
        def write(tmp: Path) -> None:
            _save_model(tmp, module.model, tok, static)
            write_json(tmp / "train_state.json", {"step": int(module.global_step), "best": state["best"],
                                                  "elapsed_s": budget.elapsed(), "history": state["history"]})

        atomic_dir(out / "last", write)

    every = val_every or max(50, steps // 10)
    return Checkpoints(out, every, evaluate, write_last, {"history": [], "best": None})


def _save_model(dest: Path, model, tok, static: dict) -> None:
    """A baseline directory: config.json + model.safetensors (save_pretrained), tokenizer.json, the card."""
    model.save_pretrained(str(dest))
    tok.save(dest / "tokenizer.json")
    write_json(dest / CARD, static)


def _save_in_place(out: Path, model, tok, static: dict) -> None:
    """The model into `out` itself: written to `out/.best` (atomically), then renamed into place file by
    file, so a kill leaves each file whole (and the next save replaces them all)."""
    tmp = atomic_dir(out / ".best", lambda d: _save_model(d, model, tok, static))
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    remove_path(tmp)


def _static_card(cfg, like, tok, run_metrics: dict, model) -> dict:
    """The card's keys that do not change while training (every saved model directory has them)."""
    oc = cfg.optim
    return {
        "kind": "trocr-style VisionEncoderDecoderModel (LineEncoder + GPT2LMHeadModel with cross-attention)",
        "like": str(like), "data": cfg.data.source, "splits": {"train": cfg.data.train_split,
                                                               "val": cfg.data.val_split},
        "batch_size": oc.batch_size, "accumulate": oc.accumulate,
        "params": sum(p.numel() for p in model.parameters()), "image": asdict(cfg.data.image),
        "max_new_tokens": min(cfg.model.max_text_tokens, model.decoder.config.n_positions),
        "init": {"encoder": cfg.model.encoder.pretrained, "decoder": cfg.model.decoder.pretrained},
        "optim": {k: getattr(oc, k) for k in ("lr_encoder", "lr_connector", "lr_decoder", "weight_decay",
                                              "warmup_steps", "grad_clip", "freeze_schedule")},
        "special_ids": {"pad_id": tok.pad_id, "bos_id": tok.bos_id, "eos_id": tok.eos_id},
        "run": {k: run_metrics.get(k) for k in ("name", "step", "wall_time_s", "train_lines_per_s", "val_cer",
                                                 "val_wer", "params", "precision")},
    }


def _card(static: dict, state: dict, module, trainer, budget, **run) -> dict:
    """baseline_card.json: the static keys, what stopped the run, its times and speed, the best val CER."""
    best, world = state["best"], trainer.world_size
    seconds = module.train_seconds
    return {
        **static,
        "steps": int(trainer.global_step), "target_steps": run["target_steps"],
        "stopped_by": run["stopped_by"],
        "epochs": int(trainer.current_epoch), "minutes": run["minutes"], "train_seconds": round(seconds, 1),
        "wall_time_s": run["wall_time_s"], "time_s": round(budget.elapsed(), 1),
        "train_lines_per_s": module.lines * world / seconds if seconds > 0 else None,
        "val_cer": best["cer"] if best else None, "val_wer": best["wer"] if best else None,
        "best_step": best["step"] if best else None, "val_n": best["n"] if best else 0,
        "val_history": state["history"],
        "device": str(trainer.strategy.root_device), "devices": world, "precision": str(trainer.precision),
        "resumed": run["resumed"],
    }
