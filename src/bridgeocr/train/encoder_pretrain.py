"""`bridgeocr encoder train`: pretrain the line encoder with a CTC head so it reads before it meets a GPT.

A decoder trained from scratch learns the language prior long before it reads the image; a CTC-trained
encoder starts reading within minutes. The saved directory (encoder + CTC head, safetensors + JSON) is
what `model.encoder.pretrained=DIR` loads; the CTC head's vocabulary is the tokenizer's (blank = PAD = 0),
so keep the tokenizer of the GPT it will be joined to (`tokenizer.path=...`).
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from tqdm.auto import tqdm

from bridgeocr.config import ExperimentConfig, load_config
from bridgeocr.data.augment import Augmenter
from bridgeocr.data.preprocess import make_loader
from bridgeocr.data.sources import open_source
from bridgeocr.data.tokenizers import load_tokenizer
from bridgeocr.errors import BridgeOCRError
from bridgeocr.eval.metrics import cer, wer
from bridgeocr.models.ctc import CTCHead, ctc_read
from bridgeocr.models.encoder import (
    adopt_encoder_image,
    build_encoder,
    is_encoder_dir,
    load_encoder,
    save_encoder,
)
from bridgeocr.models.ppocr import import_ppocr
from bridgeocr.shipped import resolve_pretrained
from bridgeocr.train.checkpoint import atomic_dir, write_json
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
from bridgeocr.train.losses import ctc_loss, ctc_targets, kd_loss
from bridgeocr.train.optim import param_groups
from bridgeocr.train.run import build_tokenizer, shard
from bridgeocr.train.schedule import lr_factor

__all__ = ["train_encoder", "train_encoder_cli", "import_ppocr_cli", "ctc_evaluate"]


@torch.no_grad()
def ctc_evaluate(encoder, head, loader, tokenizer, device, max_batches: int | None = None) -> dict:
    """CER / WER of CTC greedy decoding, plus lines/s."""

    encoder.eval()
    head.eval()
    refs, hyps = [], []
    t0 = time.time()
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        if batch is None:
            continue
        batch = batch.to(device)
        for hyp, ref in zip(ctc_read(encoder, head, batch.images, batch.image_mask, tokenizer), batch.texts):
            hyps.append(hyp.text)
            refs.append(ref)
    seconds = time.time() - t0
    encoder.train()
    head.train()
    if not refs:
        return {"cer": float("nan"), "wer": float("nan"), "lines": 0}
    return {"cer": cer(refs, hyps), "wer": wer(refs, hyps), "lines": len(refs),
            "lines_per_s": len(refs) / max(seconds, 1e-9), "examples": list(zip(refs[:3], hyps[:3]))}


def train_encoder(cfg: ExperimentConfig, data: list[str], val_data: str | None, out: str | Path, steps: int,
                  minutes: float | None, batch_size: int, lr: float, seed: int, resume: bool,
                  eval_every: int | None = None, eval_batches: int = 20, command: str = "",
                  progress: bool = True, init: str | None = None, augment: str = "none",
                  overwrite: bool = False, devices=None, num_nodes: int | None = None, strategy: str | None = None,
                  precision: str | None = None, accelerator: str | None = None, teacher: str | None = None,
                  distill_weight: float = 1.0) -> dict:
    """Train encoder + CTC head on the train split of each source; keep the best by val CER in `out`.

    `init`: an encoder directory to start from (its CTC head too when the vocabulary matches, its tokenizer
    unless `tokenizer.path` is set), or `ppocr` (PP-OCR's recogniser from the rapidocr wheel, its CTC head
    mapped onto the tokenizer, default the shipped GPT's). An encoder that brings image settings (PP-OCR:
    height 48) sets `data.image` to them. `augment`: none | print | handwriting (data/augment.py).
    devices / num_nodes / strategy / precision / accelerator: the Lightning trainer's (train/engine.py),
    default the config's `train.*`; with several processes each trains on its share of the lines and
    rank 0 evaluates. `teacher`: an encoder directory (with its CTC head, reading the same height and
    vocabulary) whose frame posteriors the trained one also learns, `distill_weight` x KL(teacher || student)
    per frame beside the CTC loss (`_teacher`). Returns the card ({} on the other processes)."""

    out = Path(out)
    ckpt = start_run(out, resume, overwrite)
    pl.seed_everything(seed, verbose=False)
    train, val = _sources(cfg, data, val_data)
    tokenizer = _tokenizer(cfg, init, train)
    encoder, head = _networks(cfg, tokenizer, init, out / "last" if ckpt is not None else None)
    frozen = _teacher(teacher, cfg.data.image.height, head) if teacher else None
    if ckpt is not None:
        print(f"resuming from {ckpt}", flush=True)
    augmenter = None if augment in (None, "none") else Augmenter(augment, seed)
    module = _CTCModule(encoder, head, tokenizer, lr, steps, seed, frozen, distill_weight,
                        lambda rank, world: make_loader(
                            shard(train, rank, world, even=True), cfg.data.image, tokenizer, batch_size,
                            shuffle=True, seed=seed, max_text_tokens=cfg.model.max_text_tokens, drop_last=True,
                            augment=augmenter))
    val_loader = make_loader(val, cfg.data.image, tokenizer, batch_size, shuffle=False)
    budget = Budget(minutes)
    saver = _saver(out, tokenizer, val_loader, eval_batches, eval_every or max(100, steps // 10), seed, budget)
    tc = cfg.train
    trainer = build_trainer(out, max_steps=steps, budget=budget, callbacks=[saver],
                            devices=devices if devices is not None else tc.devices,
                            num_nodes=num_nodes or tc.num_nodes, strategy=strategy or tc.strategy,
                            precision=precision or tc.precision, accelerator=accelerator or tc.accelerator,
                            progress=progress, resuming=ckpt is not None)
    if trainer.is_global_zero:
        print(f"encoder: {len(train):,} train / {len(val):,} val lines, vocab {tokenizer.vocab_size}, "
              f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M params, {trainer.world_size} "
              f"process(es) on {trainer.strategy.root_device}", flush=True)
    stopped = fit(trainer, module, budget, ckpt, out)
    if stopped == "interrupted":
        tqdm.write(f"interrupted at step {trainer.global_step}: evaluating and saving")
        finish_interrupted(trainer, module, saver)
    if not trainer.is_global_zero:
        return {}
    merge_csv_logs(out)
    device = trainer.strategy.root_device
    full = ctc_evaluate(*load_encoder(out, cfg.data.image.height), val_loader, tokenizer, device) \
        if (out / "model.safetensors").is_file() else saver.state["final"]
    card = _card(cfg, module, trainer, budget, full, saver.state, command=command, data=data, val_data=val_data,
                 train=train, val=val, init=init, augment=augment, stopped_by=stopped, batch_size=batch_size,
                 lr=lr, seed=seed, teacher=teacher, distill_weight=distill_weight if teacher else None)
    write_json(out / "encoder_card.json", card)
    print(f"encoder: step {card['steps']}, best val CER {full['cer']:.4f} WER {full['wer']:.4f} on "
          f"{full['lines']} lines, {budget.elapsed() / 60:.1f} min (stopped by {stopped}); saved {out}", flush=True)
    return card


def _sources(cfg: ExperimentConfig, data: list[str], val_data: str | None) -> tuple[list, object]:
    """The train splits of all sources as one sequence of samples, and the val split of `val_data`."""

    opts = {"split_file": cfg.data.split_file, "iam_split_dir": cfg.data.iam_split_dir, "drop_err": cfg.data.drop_err,
            "allow_outside": cfg.data.allow_outside, "split_by": cfg.data.split_by}
    train: list = []
    for spec in data:
        train.extend(open_source(spec, cfg.data.train_split, **opts))
    if not train:
        raise BridgeOCRError(f"encoder train: no training lines in {', '.join(data)}")
    return train, open_source(val_data or data[0], cfg.data.val_split, **opts)


def _tokenizer(cfg: ExperimentConfig, init: str | None, train: list):
    """The OCR trainer's tokenizer choice (so the CTC head fits), `--init`'s when it brings one; the config
    is set to the encoder `--init` names and to the image settings it brings."""

    init_dir = None if init in (None, "ppocr") else resolve_pretrained(init)
    if init_dir is not None and not is_encoder_dir(init_dir):
        raise BridgeOCRError(f"--init {init}: not a bridgeocr encoder directory")
    if not cfg.tokenizer.path and init_dir is not None and (init_dir / "tokenizer.json").is_file():
        cfg.tokenizer.path = str(init_dir / "tokenizer.json")  # the init head's vocabulary
    elif not cfg.tokenizer.path and init == "ppocr" and not cfg.model.decoder.pretrained:
        cfg.tokenizer.path = "shipped:gpt_lm"  # so the encoder joins the shipped GPT
    tokenizer = build_tokenizer(cfg, [s.text for s in train])
    if init == "ppocr":
        cfg.model.encoder.kind = "ppocr"
    elif init_dir is not None:
        cfg.model.encoder.pretrained = str(init_dir)
    adopt_encoder_image(cfg)
    return tokenizer


def _networks(cfg: ExperimentConfig, tokenizer, init: str | None, last: Path | None):
    """(encoder, CTC head): the run's own when resuming (`last`; the weights then come from last.ckpt),
    PP-OCR's, a pretrained encoder's (its head if the vocabulary matches), or new."""

    height = cfg.data.image.height
    if last is not None:
        return load_encoder(last, height)
    head = None
    if cfg.model.encoder.kind == "ppocr" and not cfg.model.encoder.pretrained:
        encoder, head, info = import_ppocr(cfg.model.encoder.onnx, tokenizer, cfg.model.encoder)
        print(f"PP-OCR encoder from {info['onnx']}: CTC head {info['kept']} characters kept, "
              f"{len(info['new'])} new", flush=True)
    elif cfg.model.encoder.pretrained:
        encoder, head = load_encoder(cfg.model.encoder.pretrained, height)
    else:
        encoder = build_encoder(cfg.model.encoder, height)
    if head is not None and init:
        cfg.model.ctc_upsample = head.upsample  # an --init head keeps its frames per token
    if head is None or head.vocab_size != tokenizer.vocab_size or head.upsample != cfg.model.ctc_upsample:
        head = CTCHead(encoder.d_out, tokenizer.vocab_size, cfg.model.ctc_upsample)
    return encoder, head


def _teacher(path: str, height: int, head: CTCHead) -> tuple:
    """The frozen (encoder, CTC head) whose frame posteriors a student learns: it must read `height` px lines
    and emit the same frames over the same vocabulary (e.g. the encoder a restructured one came from:
    models/ppocr.halve_columns_at keeps the tokens). Why distil: a student re-learning from its teacher's
    posteriors gets a target on every frame, not only the text's few labels, and keeps what the teacher
    read beyond the training lines."""
    encoder, t_head = load_encoder(resolve_pretrained(path))
    if t_head is None:
        raise BridgeOCRError(f"--teacher {path}: has no CTC head to learn from")
    if encoder.image_height != height:
        raise BridgeOCRError(f"--teacher {path}: reads {encoder.image_height} px lines, the student {height}")
    if (t_head.vocab_size, t_head.upsample) != (head.vocab_size, head.upsample):
        raise BridgeOCRError(f"--teacher {path}: its CTC head emits {t_head.upsample} frame(s) per token over "
                             f"{t_head.vocab_size} symbols, the student's {head.upsample} over {head.vocab_size}")
    for module in (encoder, t_head):
        module.eval().requires_grad_(False)
    return encoder, t_head


class _CTCModule(pl.LightningModule):
    """CTC loss of encoder + head on this process's share of the lines (width-bucketed batches, the place
    in the epoch kept by the resume state), plus the KL to a frozen teacher's frame posteriors when there is
    one; AdamW, warm-up then cosine decay per step."""

    def __init__(self, encoder, head, tokenizer, lr: float, steps: int, seed: int, teacher, distill_weight: float,
                 make_loader):
        super().__init__()
        self.encoder, self.head, self.lr, self.steps, self.make_loader = encoder, head, lr, steps, make_loader
        self.seed, self.distill_weight = seed, distill_weight
        self.teacher = [teacher] if teacher else []  # a list: not a submodule, so never saved nor optimised
        self.drop = [tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id]
        self.loader, self.lines, self.skipped_before = None, 0, 0

    def train_dataloader(self):
        self.loader = self.make_loader(self.trainer.global_rank, self.trainer.world_size)
        return follow_epoch(self.loader, self.trainer)  # checkpoints in on_train_batch_end: "processed"

    def on_train_epoch_start(self) -> None:
        self.loader.batch_sampler.set_epoch(self.current_epoch)
        self.loader.dataset.epoch = self.current_epoch  # part of the augmentation's key

    def on_train_batch_start(self, batch, batch_idx):  # dropout: from (seed, rank, step), exact on resume
        torch.manual_seed(step_seed("torch", self.seed, self.global_rank, self.global_step))

    def training_step(self, batch, batch_idx):
        if batch is None:  # every sample of this batch was bad: a zero loss keeps DDP ranks in step
            return sum(p.sum() * 0.0 for p in self.parameters())
        targets, lengths = ctc_targets(batch.input_ids, batch.attention_mask, self.drop)
        tokens, mask = self.encoder(batch.images, batch.image_mask)
        logits, frames = self.head(tokens), self.head.frame_mask(mask)
        loss = ctc_loss(logits, frames, targets, lengths)
        if self.teacher:
            t_encoder, t_head = (m.to(self.device) for m in self.teacher[0])
            with torch.no_grad():
                t_logits = t_head(t_encoder(batch.images, batch.image_mask)[0])
            kd = kd_loss(logits, t_logits, frames)
            self.log("train/kd", kd.detach(), on_step=True, on_epoch=False, batch_size=len(batch))
            loss = loss + self.distill_weight * kd
        self.lines += len(batch)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        dataset = self.loader.dataset
        if dataset.skipped > self.skipped_before:
            tqdm.write(f"skipped {dataset.skipped - self.skipped_before} bad sample(s): {dataset.skip_messages[-1]}")
            self.skipped_before = dataset.skipped

    def configure_optimizers(self):
        groups = param_groups(self, {"encoder": self.lr}, weight_decay=0.01, decay_vectors=True)
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.98))
        warmup, steps = min(300, max(1, self.steps // 10)), self.steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _saver(out: Path, tokenizer, val_loader, eval_batches: int, every: int, seed: int, budget) -> Checkpoints:
    """Val CER every `every` steps and at the end (into the history); a new best is saved in `out`
    itself, the latest in `out/last` (an encoder directory too, with `train_state.json`)."""

    def evaluate(module, state, final):
        result = ctc_evaluate(module.encoder, module.head, val_loader, tokenizer, module.device, eval_batches)
        state["history"].append({"step": int(module.global_step), "val_cer": result["cer"],
                                 "val_wer": result["wer"], "elapsed_s": round(budget.elapsed(), 1)})
        tqdm.write(f"step {module.global_step}: val CER {result['cer']:.4f}, WER {result['wer']:.4f} "
                   f"({result['lines']} lines) e.g. {result.get('examples', [])[:1]}")
        if result["cer"] < state["best_cer"]:
            state["best_cer"] = result["cer"]
            out.mkdir(parents=True, exist_ok=True)
            save_encoder(out, module.encoder, module.head)
            tokenizer.save(out / "tokenizer.json")
        if final:
            state["final"] = {k: v for k, v in result.items() if k != "examples"}
        return {"val/cer": result["cer"], "val/wer": result["wer"]}

    def write_last(module, state):
        def write(tmp: Path) -> None:
            save_encoder(tmp, module.encoder, module.head)
            tokenizer.save(tmp / "tokenizer.json")
            write_json(tmp / "train_state.json", {"step": int(module.global_step), "elapsed_s": budget.elapsed(),
                                                  "best_cer": state["best_cer"], "history": state["history"],
                                                  "seed": seed})

        atomic_dir(out / "last", write)

    return Checkpoints(out, every, evaluate, write_last, {"history": [], "best_cer": math.inf, "final": None})


def _card(cfg, module, trainer, budget, full: dict, state: dict, *, data, val_data, train, val, **run) -> dict:
    """encoder_card.json: the command, data, sizes, what stopped the run and the best encoder's numbers."""
    params = sum(p.numel() for p in module.parameters())
    return {
        "command": run.pop("command"), "data": list(map(str, data)), "val_data": str(val_data or data[0]),
        "train_lines": len(train), "val_lines": len(val), "vocab_size": module.head.vocab_size,
        "encoder": {k: getattr(cfg.model.encoder, k) for k in ("dim", "depth", "heads", "patch_width",
                                                                "patch_height", "conv_stem", "pos_embedding")},
        "image": {"height": cfg.data.image.height, "max_width": cfg.data.image.max_width},
        "init": run.pop("init"), "augment": run.pop("augment"), "encoder_kind": cfg.model.encoder.kind,
        "params": params, "steps": int(trainer.global_step), **run, "time_s": round(budget.elapsed(), 1),
        "device": str(trainer.strategy.root_device), "devices": trainer.world_size,
        "precision": str(trainer.precision), "threads": torch.get_num_threads(),
        "lines_seen_this_run": module.lines * trainer.world_size,
        "val_cer_ctc_greedy": full["cer"], "val_wer_ctc_greedy": full["wer"], "val_lines_evaluated": full["lines"],
        "history": state["history"],
        "skipped_samples": module.loader.dataset.skipped if module.loader is not None else 0,
    }


def train_encoder_cli(data, val_data, out, config, overrides, steps, minutes, batch_size, lr, seed, resume,
                      init=None, augment="none", overwrite=False, devices=None, num_nodes=None, strategy=None,
                      precision=None, accelerator=None, teacher=None, distill_weight=1.0) -> int:
    cfg = load_config(config, overrides)
    train_encoder(cfg, data, val_data, out, steps, minutes, batch_size, lr, seed, resume,
                  command="bridgeocr " + shlex.join(sys.argv[1:]), init=init, augment=augment,
                  overwrite=bool(overwrite), devices=devices, num_nodes=num_nodes, strategy=strategy,
                  precision=precision, accelerator=accelerator, teacher=teacher, distill_weight=distill_weight)
    return 0


def import_ppocr_cli(onnx, tokenizer, out) -> int:
    """`bridgeocr encoder import`: an encoder directory (encoder + mapped CTC head + tokenizer + card) that
    reads at once (`recognize --checkpoint OUT --ctc`) and that `encoder train --init OUT` fine-tunes."""
    tok = load_tokenizer(resolve_pretrained(tokenizer))
    encoder, head, info = import_ppocr(onnx, tok)
    out = Path(out)
    save_encoder(out, encoder, head)
    tok.save(out / "tokenizer.json")
    card = {"made_by": "bridgeocr encoder import", "source": encoder.source, "tokenizer": str(tokenizer),
            "params": sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in head.parameters()),
            "image": encoder.image, **{k: v for k, v in info.items() if k != "new"},
            "characters_new": "".join(info["new"])}
    (out / "encoder_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False))
    print(f"wrote {out}: PP-OCR encoder ({card['params'] / 1e6:.2f}M params, {info['dim']}-d tokens, height "
          f"{encoder.image_height}), CTC head over {tok.vocab_size} tokens: {info['kept']} from PP-OCR, "
          f"{len(info['new'])} new", flush=True)
    return 0
