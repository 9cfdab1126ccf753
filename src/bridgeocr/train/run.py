"""`bridgeocr train`: one experiment config -> a finished run directory.

OUT/NAME/ holds `config.yaml`, `tokenizer.json`, `best/` (by val CER) and `last/` (OCRModel dirs:
safetensors + JSON, written atomically), `last.ckpt/` (the trainer's resume state, safetensors + JSON, with
the one before it in `last.ckpt.prev/`; train/resume.py),
`metrics.csv` (all CSV log parts merged), `tb/`, `predictions_{val,test}.tsv` and `metrics.json`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from bridgeocr.config import ExperimentConfig, load_config, save_config
from bridgeocr.data.features import make_feature_loader
from bridgeocr.data.preprocess import make_loader
from bridgeocr.data.sources import drop_reasons, format_drops, open_source
from bridgeocr.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from bridgeocr.errors import BridgeOCRError, ConfigError
from bridgeocr.eval.evaluate import evaluate_model, print_worst, summary, write_predictions
from bridgeocr.eval.metrics import print_seed_metrics
from bridgeocr.models.decoder import GPT
from bridgeocr.models.encoder import adopt_encoder_image, load_encoder
from bridgeocr.models.load import TRAINING_META, load_checkpoint
from bridgeocr.models.ocr import OCRModel
from bridgeocr.preflight import TRAIN_NEED, ensure_writable
from bridgeocr.shipped import resolve_pretrained
from bridgeocr.train.checkpoint import atomic_dir, disk_full, guard_run_dir, read_json, write_json
from bridgeocr.train.connector_init import INITS, fit_projector_to_ctc
from bridgeocr.train.engine import (
    csv_part,
    follow_epoch,
    merge_csv_logs,
    parse_devices,
    precision_for,
    progress_bar,
)
from bridgeocr.train.features import encoder_fingerprint, fill_store, open_store, store_root
from bridgeocr.train.module import OCRLightningModule, param_group_name, parse_freeze_schedule
from bridgeocr.train.resume import SafeCheckpointIO, resume_point
from bridgeocr.train.teacher import KDTeacher, kd_teacher_spec

__all__ = ["train", "train_cli", "build_tokenizer", "build_model", "load_teacher", "shard"]


# ------------------------------------------------------------------------------------------ pieces


def _resolve(path):
    return resolve_pretrained(path)


def build_tokenizer(cfg: ExperimentConfig, train_texts: list[str]):
    """tokenizer.path, else the pretrained decoder's tokenizer, else built from the training texts."""

    if cfg.tokenizer.path:
        return load_tokenizer(_resolve(cfg.tokenizer.path))
    dec = _resolve(cfg.model.decoder.pretrained)
    if dec is not None:
        dec = Path(dec)
        if (dec / "tokenizer.json").is_file() or (dec / "vocab.json").is_file():
            return load_tokenizer(dec)
        raise ConfigError(f"model.decoder.pretrained: {dec} has no tokenizer; set tokenizer.path")
    if cfg.tokenizer.kind == "char":
        return CharTokenizer.build(train_texts)
    if cfg.tokenizer.kind == "bpe":
        return BPETokenizer.train(train_texts, vocab_size=2000)
    raise ConfigError(f"tokenizer.kind: expected char or bpe, got {cfg.tokenizer.kind!r}")


def build_model(cfg: ExperimentConfig, tokenizer):
    """OCRModel for the config (it loads pretrained parts and applies encoder/decoder freezing)."""

    return OCRModel(cfg.model, tokenizer.vocab_size, image_height=cfg.data.image.height, tokenizer=tokenizer)


def load_teacher(cfg: ExperimentConfig, tokenizer):
    """The frozen KD teacher (`train.teacher.KDTeacher`: an LM and its reading, `loss.kd_teacher`), its LM
    `loss.kd_teacher_dir`, else the decoder's pretrained dir; None if KD is off."""
    if cfg.loss.kd_alpha <= 0:
        return None

    lc = cfg.loss
    reading, path = kd_teacher_spec(lc.kd_teacher, lc.kd_teacher_dir, cfg.model.decoder.pretrained)
    if path is None:
        raise ConfigError("loss.kd_alpha > 0 needs a teacher LM: set loss.kd_teacher_dir (or a directory as "
                          "loss.kd_teacher) or model.decoder.pretrained")
    lm = GPT.from_hf(path)
    if lm.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"loss.kd_teacher: {path} has vocabulary {lm.vocab_size} < the tokenizer's "
                          f"{tokenizer.vocab_size} (teacher and OCR model must share the tokenizer)")
    teacher = KDTeacher(lm, reading, special_ids=(tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id),
                        attach_layer=cfg.model.attach_layer, memo_mb=lc.kd_memo_mb)
    return teacher.eval().requires_grad_(False)


def shard(samples: list, rank: int, world: int, even: bool) -> list:
    """Every `world`-th line from `rank` (DDP). `even` (training): the same number of lines on every rank
    (a remainder < world is dropped), so every rank runs the same number of batches."""
    if world <= 1:
        return list(samples)
    if even:
        samples = samples[: len(samples) // world * world]
    part = list(samples[rank::world])
    if not part:
        raise BridgeOCRError(f"{len(samples)} line(s) cannot be shared among {world} processes")
    return part


def _make_loader(source, cfg: ExperimentConfig, tokenizer, shuffle: bool, rank: int, world: int,
                 batch_size: int | None = None, store=None) -> DataLoader:
    """Width-bucketed loader over this rank's share of the lines (of cached encoder tokens with `store`)."""

    if store is not None:
        return make_feature_loader(shard(source, rank, world, even=shuffle), store, cfg.data.image, tokenizer,
                                   batch_size=batch_size or cfg.optim.batch_size, shuffle=shuffle,
                                   seed=cfg.train.seed, max_text_tokens=cfg.model.max_text_tokens)
    return make_loader(shard(source, rank, world, even=shuffle), cfg.data.image, tokenizer,
                       batch_size=batch_size or cfg.optim.batch_size, shuffle=shuffle, seed=cfg.train.seed,
                       num_workers=cfg.data.num_workers, max_text_tokens=cfg.model.max_text_tokens)


def open_split(cfg: ExperimentConfig, split: str, limit: int | None):
    d = cfg.data
    src = open_source(d.source, split, split_file=d.split_file, iam_split_dir=d.iam_split_dir,
                      drop_err=d.drop_err, allow_outside=d.allow_outside, split_by=d.split_by)
    problems = getattr(src, "problems", [])
    if problems:  # each row left out, by reason, as `evaluate` reports them
        dropped = drop_reasons(problems)
        print(f"{getattr(src, 'name', d.source)} [{split}]: dropped {sum(dropped.values())} rows "
              f"({format_drops(dropped)}), e.g. {problems[0]}", flush=True)
    samples = list(src)
    if limit is not None:
        samples = samples[: max(0, int(limit))]
    return samples


# ------------------------------------------------------------------------------------ checkpoints


def _model_params(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    groups = {}

    for name, p in model.named_parameters():
        g = param_group_name(name)
        groups[g] = groups.get(g, 0) + p.numel()
    return {"total": total, **groups}


def save_model_dir(model, final: Path, meta: dict) -> None:
    """OCRModel.save_pretrained + training.json, atomically (write a temp dir, then rename)."""
    was_training = model.training

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, image=meta.get("image"))  # how it reads, in its own config.json
        write_json(tmp / TRAINING_META, meta)

    atomic_dir(final, write)
    model.train(was_training)


def _make_callback(run_dir: Path, cfg: ExperimentConfig):

    class RunCheckpoints(pl.Callback):
        """best/ on a new best val CER (rank 0), last/ + last.ckpt after each validation and at the end."""

        def __init__(self):
            self.best_cer = math.inf
            self.best_epoch = None
            self.ckpt_step = None

        def state_dict(self):
            return {"best_cer": self.best_cer, "best_epoch": self.best_epoch}

        def load_state_dict(self, state):
            self.best_cer = float(state.get("best_cer", math.inf))
            self.best_epoch = state.get("best_epoch")

        def meta(self, trainer, module, epoch=None, **extra) -> dict:
            if epoch is None:
                epoch = module.last_train_epoch if module.last_train_epoch is not None else trainer.current_epoch
            return {"epoch": int(epoch), "step": int(trainer.global_step),
                    "run": cfg.train.name, "image": asdict(cfg.data.image), **extra}

        def on_val_result(self, trainer, module, result, epoch, step):
            c = result["cer"]
            if not math.isnan(c) and c < self.best_cer:
                self.best_cer, self.best_epoch = c, epoch
                save_model_dir(module.model, run_dir / "best",
                               self.meta(trainer, module, epoch, val_cer=c, val_wer=result["wer"]))
                write_predictions(run_dir / "predictions_val.tsv", result)

        def _save_last(self, trainer, module):
            if trainer.is_global_zero:
                save_model_dir(module.model, run_dir / "last", self.meta(trainer, module))
            if self.ckpt_step != trainer.global_step:  # not twice for one step: keeps the epoch count
                trainer.save_checkpoint(run_dir / "last.ckpt")
                self.ckpt_step = trainer.global_step
            if trainer.is_global_zero:
                merge_csv_logs(run_dir)

        def on_fit_start(self, trainer, module):
            module.on_val_result = lambda r, e, s: self.on_val_result(trainer, module, r, e, s)
            if module.teacher is not None:
                module.teacher.to(module.device)

        def on_validation_end(self, trainer, module):
            if trainer.sanity_checking or trainer.state.fn != "fit":
                return
            self._save_last(trainer, module)

        def on_train_end(self, trainer, module):
            if self.ckpt_step == trainer.global_step:
                return  # saved by the validation at this very step (same decision on every rank)
            self._save_last(trainer, module)

    return RunCheckpoints()


class _DataModule:
    """Builds the loaders lazily, once the trainer knows its rank and world size."""

    def __init__(self, cfg, tokenizer, train_src, val_src, store=None):

        outer = self

        class DM(pl.LightningDataModule):
            def train_dataloader(self):
                outer.train_loader = _make_loader(train_src, cfg, tokenizer, True, self.trainer.global_rank,
                                                  self.trainer.world_size, store=store)
                return follow_epoch(outer.train_loader, self.trainer, "completed")  # checkpoints at validation

            def val_dataloader(self):
                outer.val_loader = _make_loader(val_src, cfg, tokenizer, False, self.trainer.global_rank,
                                                self.trainer.world_size, store=store)
                return outer.val_loader

        self.dm = DM()
        self.store = store
        self.train_loader = None
        self.val_loader = None


def _feature_store(cfg: ExperimentConfig, encoder, splits: dict[str, list], world: int):
    """The run's cached encoder tokens, filled for these splits; None when the encoder trains, the cache is
    off, or several processes train (each would fill the same store)."""

    root = store_root(cfg)
    if root is None:
        return None
    if world > 1:
        print("data.feature_cache: not used with several processes (fill it first with "
              "`bridgeocr data cache-features`, then train with one process, or set data.feature_cache=off)",
              flush=True)
        return None
    gpu = torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda")
    device = torch.device("cuda" if gpu else "cpu")
    encoder.to(device)
    store = open_store(encoder, cfg.data.image, root)
    try:
        for split, samples in splits.items():
            fill_store(encoder, store, samples, cfg.data.image, batch_size=cfg.optim.batch_size,
                       desc=f"encoder features [{split}]", device=device)
    finally:
        encoder.to("cpu")
    print(f"frozen encoder: its tokens for {len(store)} lines are cached in {store.dir}", flush=True)
    return store


# ------------------------------------------------------------------------------------------- train


def train(cfg: ExperimentConfig, resume: bool = False, devices=None, num_nodes=None,
          overwrite: bool = False) -> dict:
    """Train, validate (printing the seed's lines), test the best checkpoint; returns metrics.json's dict
    (on global rank 0; other ranks return {}). A directory holding a run is continued (`resume`), replaced
    (`overwrite`) or refused."""

    t_start = time.time()
    adopt_encoder_image(cfg)
    _check_optim(cfg)
    run_dir = Path(cfg.train.out_dir) / cfg.train.name
    ckpt, resuming = _prepare_run_dir(run_dir, resume, overwrite)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    train_src, val_src = _open_train_val(cfg)
    if resuming and (run_dir / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    else:
        tokenizer = build_tokenizer(cfg, [s.text for s in train_src])
    model = build_model(cfg, tokenizer)
    module = OCRLightningModule(model, cfg, tokenizer, teacher=load_teacher(cfg, tokenizer),
                                total_steps=cfg.optim.max_steps)
    callback = _make_callback(run_dir, cfg)
    loggers, tb, hparams = _loggers(cfg, run_dir, resuming)
    trainer = _trainer(cfg, devices, num_nodes, loggers, callback)
    store = _feature_store(cfg, model.encoder, {"train": train_src, "val": val_src}, trainer.world_size)
    data = _DataModule(cfg, tokenizer, train_src, val_src, store)
    if not resuming:
        _init_connector(cfg, model, tokenizer, train_src, store)
    if trainer.is_global_zero:
        _write_run_files(cfg, run_dir, tokenizer, resuming)
        print(f"train: {len(train_src)} lines, val: {len(val_src)} lines, vocab {tokenizer.vocab_size}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params -> {run_dir}"
              + (f" (resuming from {ckpt})" if resuming else ""), flush=True)
    _fit(trainer, module, data, ckpt if resuming else None, run_dir)
    if module.last_val_step != trainer.global_step or not (run_dir / "best").is_dir():
        module.on_val_result = lambda r, e, s: callback.on_val_result(trainer, module, r, e, s)
        trainer.validate(module, datamodule=data.dm, verbose=False)
        if trainer.is_global_zero:
            merge_csv_logs(run_dir)
    stopped_by = "max_steps" if trainer.global_step >= cfg.optim.max_steps else (
        "max_minutes" if cfg.optim.max_minutes else "max_epochs")
    if not trainer.is_global_zero:
        return {}
    metrics = _finish(cfg, run_dir, module, data, trainer, tokenizer, t_start, stopped_by)
    final = {f"hp/{k}": float(metrics[k]) for k in ("val_cer", "test_cer") if metrics.get(k) is not None}
    tb.log_hyperparams(hparams, final or None)  # TensorBoard's HPARAMS tab: this run's config and results
    tb.finalize("success")
    return metrics


def _check_optim(cfg: ExperimentConfig) -> None:
    """What only training reads, checked before any work."""

    oc = cfg.optim
    if oc.max_steps < 1:
        raise ConfigError(f"optim.max_steps: must be >= 1, got {oc.max_steps}")
    if oc.accumulate < 1:
        raise ConfigError(f"optim.accumulate: must be >= 1, got {oc.accumulate}")
    parse_freeze_schedule(oc.freeze_schedule)  # fail early on a bad schedule


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> tuple[Path, bool]:
    """-> (the resume state to continue from, whether this run resumes); refuses to overwrite a run and fails
    now on an unwritable or full disk, not after training."""
    ckpt = resume_point(run_dir / "last.ckpt") or run_dir / "last.ckpt"
    resuming = bool(resume) and ckpt.exists()
    if resume and not resuming:
        print(f"--resume: no {ckpt}; starting a new run", flush=True)
    guard_run_dir(run_dir, resuming, overwrite, resume_asked=bool(resume))
    ensure_writable(run_dir, TRAIN_NEED)
    return ckpt, resuming


def _open_train_val(cfg: ExperimentConfig) -> tuple:
    train_src = open_split(cfg, cfg.data.train_split, cfg.data.max_train_samples)
    val_src = open_split(cfg, cfg.data.val_split, cfg.data.max_val_samples or cfg.data.max_eval_samples)
    for split, src in ((cfg.data.train_split, train_src), (cfg.data.val_split, val_src)):
        if not src:
            raise BridgeOCRError(f"{cfg.data.source}: split {split!r} has no lines")
    return train_src, val_src


def _loggers(cfg: ExperimentConfig, run_dir: Path, resuming: bool):
    """-> ([CSV logger (one part per start or resume), TensorBoard logger], the TB logger, the config as TB
    hparams (logged now, and with the final metrics at the end))."""

    part = csv_part(run_dir, resuming)
    tb = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False)

    def scalars(d: dict, prefix: str = ""):  # the config as a flat dict of its scalar values
        for k, v in d.items():
            if isinstance(v, dict):
                yield from scalars(v, f"{prefix}{k}.")
            elif isinstance(v, (bool, int, float, str)):
                yield f"{prefix}{k}", v

    hparams = dict(scalars(asdict(cfg)))
    tb.log_hyperparams(hparams)  # tb/hparams.yaml
    return [CSVLogger(save_dir=str(run_dir), name="csv", version=f"part{part}"), tb], tb, hparams


def _trainer(cfg: ExperimentConfig, devices, num_nodes, loggers, callback):
    oc, tc = cfg.optim, cfg.train
    val_kwargs = {}
    if tc.val_every_steps:
        val_kwargs = {"val_check_interval": int(tc.val_every_steps) * oc.accumulate,
                      "check_val_every_n_epoch": None}
    return pl.Trainer(
        accelerator=tc.accelerator, devices=parse_devices(devices if devices is not None else tc.devices),
        num_nodes=num_nodes or tc.num_nodes, strategy=tc.strategy, precision=precision_for(tc.precision, tc.accelerator),
        max_steps=oc.max_steps, max_epochs=oc.max_epochs,
        max_time={"minutes": oc.max_minutes} if oc.max_minutes else None,
        gradient_clip_val=oc.grad_clip or None, accumulate_grad_batches=oc.accumulate,
        logger=loggers, callbacks=[callback, progress_bar()], plugins=[SafeCheckpointIO()],
        enable_checkpointing=False, use_distributed_sampler=False,
        log_every_n_steps=max(1, tc.log_every_steps), num_sanity_val_steps=0, deterministic=False,
        enable_model_summary=False, **val_kwargs)


def _write_run_files(cfg: ExperimentConfig, run_dir: Path, tokenizer, resuming: bool) -> None:
    """config.yaml (saying so when a resumed run's config differs) and tokenizer.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if resuming and (run_dir / "config.yaml").is_file():
        old = (run_dir / "config.yaml").read_text()
        save_config(cfg, run_dir / ".config.new.yaml")
        if (run_dir / ".config.new.yaml").read_text() != old:
            print(f"note: the config differs from {run_dir / 'config.yaml'} (overwritten)", flush=True)
        (run_dir / ".config.new.yaml").unlink()
    save_config(cfg, run_dir / "config.yaml")
    tokenizer.save(run_dir / "tokenizer.json")


def _fit(trainer, module, data, ckpt: Path | None, run_dir: Path) -> None:
    try:
        trainer.fit(module, datamodule=data.dm, ckpt_path=str(ckpt) if ckpt is not None else None)
    except Exception as exc:  # a full disk mid-run: one line; every checkpoint written before it is intact
        if disk_full(exc):
            where = getattr(exc, "filename", None) or "a log"
            raise BridgeOCRError(f"{run_dir}: no space left on the device ({where}); the checkpoints written "
                                 "before are intact: free space, then --resume") from None
        raise


def _finish(cfg, run_dir: Path, module, data, trainer, tokenizer, t_start, stopped_by) -> dict:
    """Test the best checkpoint, write metrics.json and the merged CSV log -> the metrics."""
    skipped = _report_skipped(data)
    best_dir = run_dir / "best" if (run_dir / "best").is_dir() else run_dir / "last"
    best, _, meta = load_checkpoint(best_dir, device=module.device if module.device.type != "meta" else None)
    best_epoch = int(meta.get("epoch", 0) or 0)
    test = _test(cfg, run_dir, best, data, best_epoch)
    if test is not None:
        skipped["test"] = test["skipped"]
    metrics = _metrics(cfg, module, trainer, tokenizer, meta, test, skipped, t_start, stopped_by)
    write_json(run_dir / "metrics.json", metrics)
    merge_csv_logs(run_dir)
    print(f"run finished ({stopped_by}, step {trainer.global_step}); wrote {run_dir / 'metrics.json'}",
          flush=True)
    return metrics


def _report_skipped(data) -> dict:
    """Bad train / val samples, counted and named once."""
    skipped = {}
    for split, loader in (("train", data.train_loader), ("val", data.val_loader)):
        dataset = getattr(loader, "dataset", None)
        skipped[split] = getattr(dataset, "skipped", 0)
        msgs = getattr(dataset, "skip_messages", [])
        if skipped[split]:
            print(f"skipped {skipped[split]} bad {split} sample(s), e.g. {msgs[0] if msgs else '?'}", flush=True)
    return skipped


def _test(cfg, run_dir: Path, best, data, best_epoch: int) -> dict | None:
    """The best checkpoint on the test split (its cached encoder features when they match, and when it
    reads each line once: a model that widens crowded lines reads their pixels) -> evaluate's result,
    written as predictions_test.tsv; None for an empty split."""
    test_src = open_split(cfg, cfg.data.test_split, cfg.data.max_eval_samples)
    if not test_src:
        print(f"{cfg.data.source}: split {cfg.data.test_split!r} is empty; no test metrics", flush=True)
        return None
    cached = data.store is not None and not best.widens and _same_encoder(best, data.store, cfg)
    store = data.store if cached else None
    if store is not None:
        fill_store(best.encoder, store, test_src, cfg.data.image, batch_size=cfg.optim.batch_size,
                   desc="encoder features [test]")
    test = evaluate_model(best, test_src, cfg.data.image, beam=cfg.train.eval_beam, decoding=None,
                          batch_size=cfg.optim.batch_size, desc="decode test", features=store)
    print_seed_metrics("test", best_epoch, test["cer"], test["wer"])
    write_predictions(run_dir / "predictions_test.tsv", test)
    print_worst(test, 5, label="test: ")
    return test


def _metrics(cfg, module, trainer, tokenizer, meta: dict, test, skipped: dict, t_start, stopped_by) -> dict:
    """metrics.json: the best checkpoint's val and test numbers, the run's speed, size and settings."""
    best_epoch = int(meta.get("epoch", 0) or 0)
    val_best = {"cer": meta.get("val_cer"), "wer": meta.get("val_wer")}
    train_lines_per_s = (module.train_lines * trainer.world_size / module.train_seconds
                         if module.train_seconds > 0 else None)
    return {
        "name": cfg.train.name,
        "val_cer": val_best["cer"], "val_wer": val_best["wer"],
        "test_cer": test["cer"] if test else None, "test_wer": test["wer"] if test else None,
        "val": {**val_best, "epoch": best_epoch, "n": module.val_history[-1]["n"] if module.val_history else None},
        "test": summary(test) if test else None,
        "best_epoch": best_epoch, "best_step": meta.get("step"),
        "epoch": int(trainer.current_epoch), "step": int(trainer.global_step), "stopped_by": stopped_by,
        "val_history": module.val_history,
        "params": _model_params(module.model)["total"], "params_by_group": _model_params(module.model),
        "train_lines_per_s": train_lines_per_s,
        "decode_lines_per_s": test["lines_per_s"] if test else None,
        "visual_tokens": module.visual_tokens_sum / module.visual_tokens_n if module.visual_tokens_n else None,
        "skipped": skipped,
        "unk_count": getattr(tokenizer, "unk_count", None),
        "wall_time_s": round(time.time() - t_start, 1),
        "devices": trainer.world_size, "precision": str(trainer.precision),
        "connector": cfg.model.connector.kind, "attach_layer": cfg.model.attach_layer,
        "width_policy": cfg.data.image.width_policy,
        "config": {"data": cfg.data.source, "connector": asdict(cfg.model.connector),
                   "encoder": {k: getattr(cfg.model.encoder, k) for k in ("dim", "depth", "patch_width",
                                                                           "pretrained")},
                   "decoder": {k: getattr(cfg.model.decoder, k) for k in ("n_layer", "n_embd", "pretrained")},
                   "loss": asdict(cfg.loss), "max_steps": cfg.optim.max_steps,
                   "batch_size": cfg.optim.batch_size, "tokenizer": cfg.tokenizer.kind},
    }


def _init_connector(cfg: ExperimentConfig, model, tokenizer, train_src, store) -> None:
    """`model.connector.init=ctc`: fit the connector to the prefix the GPT reads (train/connector_init.py)."""

    init = cfg.model.connector.init
    if init not in INITS:
        raise ConfigError(f"model.connector.init: expected one of {', '.join(INITS)}, got {init!r}")
    if init == "random":
        return
    head = model.ctc_head
    if head is None and cfg.model.encoder.pretrained:
        head = load_encoder(cfg.model.encoder.pretrained, cfg.data.image.height)[1]
    if head is None or head.vocab_size > model.decoder.vocab_size:
        raise ConfigError("model.connector.init=ctc needs an encoder with a CTC head over the tokenizer")
    loader = _make_loader(train_src, cfg, tokenizer, True, 0, 1, store=store)
    fit = fit_projector_to_ctc(model, head, loader)
    print(f"connector fitted to the CTC prefix on {fit['tokens']} encoder tokens (R^2 {fit['r2']:.3f})", flush=True)


def _same_encoder(model, store, cfg: ExperimentConfig) -> bool:
    """Whether the store holds this model's encoder tokens (a resumed run may have swapped the encoder)."""

    return encoder_fingerprint(model.encoder, cfg.data.image) == store.fingerprint


def train_cli(config, overrides, resume, devices, num_nodes, overwrite=False) -> int:
    cfg = load_config(config, overrides)
    train(cfg, resume=bool(resume), devices=devices, num_nodes=num_nodes, overwrite=bool(overwrite))
    return 0


def read_metrics(run_dir) -> dict:
    return read_json(Path(run_dir) / "metrics.json")
