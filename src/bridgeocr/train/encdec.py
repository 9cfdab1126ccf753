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
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bridgeocr.config import ModelConfig, load_config
from bridgeocr.data.preprocess import make_loader
from bridgeocr.data.tokenizers import load_tokenizer
from bridgeocr.errors import BridgeOCRError, ConfigError
from bridgeocr.eval.evaluate import evaluate_baseline
from bridgeocr.models.encdec import CARD, CROSS_KEYS, build_baseline
from bridgeocr.models.encoder import load_encoder
from bridgeocr.models.load import resolve_device
from bridgeocr.shipped import resolve_pretrained
from bridgeocr.train.losses import ce_loss
from bridgeocr.train.module import parse_freeze_schedule
from bridgeocr.train.optim import param_groups
from bridgeocr.train.run import open_split
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
    """Our `decoder.freeze` on the GPT-2 side (cross-attention always trains): none | all | top:N."""
    spec = str(spec or "none")
    if spec == "none":
        return
    n_layer = model.decoder.config.n_layer
    if spec == "all":
        keep = n_layer
    elif spec.startswith("top:"):
        keep = n_layer - int(spec[4:])
    else:
        raise ConfigError(f"model.decoder.freeze: {spec!r} is not one of none | all | top:N")
    for name, p in model.decoder.named_parameters():
        if any(k in name for k in CROSS_KEYS):
            continue
        parts = name.split(".")
        block = int(parts[2]) if len(parts) > 2 and parts[1] == "h" else None
        if block is None:
            frozen = not (name.startswith("transformer.ln_f") and spec != "all")
        else:
            frozen = block < keep
        if frozen:
            p.requires_grad_(False)


def _optimizer(model, oc):
    lrs = {"encoder": oc.lr_encoder, "connector": oc.lr_connector, "decoder": oc.lr_decoder}
    return torch.optim.AdamW(param_groups(model, lrs, _group, oc.weight_decay), betas=(0.9, 0.98), eps=1e-8)


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
               val_every: int | None = None, max_val: int | None = None, progress: bool = True) -> dict:
    """Train the baseline `--like` a finished run; save it to `out`; returns the card (also `out/CARD`)."""
    from tqdm import tqdm

    t_start = time.time()
    cfg, run_metrics, tok = read_like(like)
    oc = cfg.optim
    steps = int(steps or run_metrics.get("step") or oc.max_steps)
    if steps < 1:
        raise ConfigError(f"steps: must be >= 1, got {steps}")
    budget_s = minutes * 60 if minutes else None
    torch.manual_seed(cfg.train.seed)
    dev = resolve_device(device)
    amp = dev.type == "cuda" and torch.cuda.is_bf16_supported() and cfg.train.precision in ("auto", "bf16-mixed")

    train_src = open_split(cfg, cfg.data.train_split, cfg.data.max_train_samples)
    val_src = open_split(cfg, cfg.data.val_split, max_val if max_val is not None else cfg.data.max_eval_samples)
    if not train_src:
        raise BridgeOCRError(f"{cfg.data.source}: split {cfg.data.train_split!r} has no lines")
    model = build_like(cfg, tok).to(dev)
    schedule = parse_freeze_schedule(oc.freeze_schedule)  # same group names: encoder | connector | decoder
    opt = _optimizer(model, oc)
    loader = make_loader(train_src, cfg.data.image, tok, batch_size=oc.batch_size, shuffle=True,
                         seed=cfg.train.seed, num_workers=cfg.data.num_workers,
                         max_text_tokens=cfg.model.max_text_tokens)
    max_new = min(cfg.model.max_text_tokens, model.decoder.config.n_positions)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"baseline like {like}: train {len(train_src)} lines, val {len(val_src)}, vocab {tok.vocab_size}, "
          f"{n_params / 1e6:.2f}M params, {steps} steps x batch {oc.batch_size}"
          + (f" x {oc.accumulate}" if oc.accumulate > 1 else "") + (f", budget {minutes} min" if minutes else "")
          + f", {dev}{' bf16' if amp else ''}", flush=True)

    def val(desc):
        if not val_src:
            return None
        return evaluate_baseline(model, val_src, cfg.data.image, tok, batch_size=oc.batch_size,
                                 max_new_tokens=max_new, progress=progress, desc=desc)

    step, epoch, lines, train_s, stopped_by = 0, 0, 0, 0.0, "steps"
    best, best_state, history = None, None, []
    bar = tqdm(total=steps, desc="baseline", unit="step", disable=not progress)
    model.train()
    while step < steps:
        loader.batch_sampler.set_epoch(epoch)
        micro = 0
        for batch in loader:
            if batch is None:
                continue
            t0 = time.perf_counter()
            batch = batch.to(dev)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                logits = model(pixel_values=batch.images, image_mask=batch.image_mask,
                               decoder_input_ids=batch.input_ids[:, :-1],
                               decoder_attention_mask=batch.attention_mask[:, :-1]).logits
            loss = ce_loss(logits, batch.input_ids, batch.attention_mask)
            (loss / oc.accumulate).backward()
            lines += len(batch)
            micro += 1
            if micro % oc.accumulate == 0:
                f = lr_factor(step, oc.warmup_steps, steps, time_fraction=train_s / budget_s if budget_s else None)
                _optimizer_step(model, opt, oc, next((g for until, g in schedule if step < until), None), f)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{f:.2f}x")
            if dev.type == "cuda":
                torch.cuda.synchronize()
            train_s += time.perf_counter() - t0
            if val_every and micro % oc.accumulate == 0 and step % val_every == 0 and step < steps:
                r = val(f"val @{step}")
                if r is not None:
                    history.append({"step": step, "cer": r["cer"], "wer": r["wer"]})
                    if best is None or r["cer"] < best["cer"]:
                        best, best_state = {**history[-1], "n": r["n"]}, copy.deepcopy(model.state_dict())
                model.train()
            if step >= steps:
                break
            if budget_s and train_s >= budget_s:
                stopped_by = "minutes"
                break
        epoch += 1
        if stopped_by == "minutes":
            break
    bar.close()

    r = val("val")
    if r is not None:
        history.append({"step": step, "cer": r["cer"], "wer": r["wer"]})
        if best is None or r["cer"] <= best["cer"] or math.isnan(best["cer"]):
            best, best_state = {**history[-1], "n": r["n"], "lines_per_s": r["lines_per_s"]}, None
    if best_state is not None:
        model.load_state_dict(best_state)
    run = {"steps": step, "target_steps": steps, "stopped_by": stopped_by, "epochs": epoch, "minutes": minutes,
           "train_seconds": round(train_s, 1), "wall_time_s": round(time.time() - t_start, 1),
           "train_lines_per_s": lines / train_s if train_s > 0 else None, "val_history": history,
           "params": n_params, "max_new_tokens": max_new, "device": str(dev),
           "precision": "bf16-mixed" if amp else "32-true"}
    out = Path(out)
    card = _save_baseline(out, model, tok, cfg, like, run_metrics, best, run)
    if best:
        print(f"baseline: step {step} ({stopped_by}), val CER {best['cer']:.4f} WER {best['wer']:.4f} "
              f"(best step {best['step']}); run: step {card['run']['step']}, val CER {card['run']['val_cer']}",
              flush=True)
    print(f"wrote {out}", flush=True)
    return card


def _optimizer_step(model, opt, oc, trained: set[str] | None, lr_scale: float) -> None:
    """One optimizer step: the freeze schedule's groups only (`trained`, None: all), clipped, at the
    schedule's learning rate."""
    if trained is not None:
        for name, p in model.named_parameters():
            if _group(name) not in trained:
                p.grad = None
    if oc.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], oc.grad_clip)
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * lr_scale
    opt.step()
    opt.zero_grad(set_to_none=True)


def _save_baseline(out: Path, model, tok, cfg, like, run_metrics: dict, best: dict | None, run: dict) -> dict:
    """The model directory (config.json + model.safetensors + tokenizer.json) and its card -> the card."""
    oc = cfg.optim
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save(out / "tokenizer.json")
    card = {
        "kind": "trocr-style VisionEncoderDecoderModel (LineEncoder + GPT2LMHeadModel with cross-attention)",
        "like": str(like), "data": cfg.data.source, "splits": {"train": cfg.data.train_split,
                                                               "val": cfg.data.val_split},
        "steps": run["steps"], "target_steps": run["target_steps"], "stopped_by": run["stopped_by"],
        "epochs": run["epochs"], "batch_size": oc.batch_size, "accumulate": oc.accumulate, "minutes": run["minutes"],
        "train_seconds": run["train_seconds"], "wall_time_s": run["wall_time_s"],
        "train_lines_per_s": run["train_lines_per_s"],
        "val_cer": best["cer"] if best else None, "val_wer": best["wer"] if best else None,
        "best_step": best["step"] if best else None, "val_n": best["n"] if best else 0,
        "val_history": run["val_history"],
        "params": run["params"], "image": asdict(cfg.data.image), "max_new_tokens": run["max_new_tokens"],
        "init": {"encoder": cfg.model.encoder.pretrained, "decoder": cfg.model.decoder.pretrained},
        "optim": {k: getattr(oc, k) for k in ("lr_encoder", "lr_connector", "lr_decoder", "weight_decay",
                                              "warmup_steps", "grad_clip", "freeze_schedule")},
        "device": run["device"], "precision": run["precision"],
        "special_ids": {"pad_id": tok.pad_id, "bos_id": tok.bos_id, "eos_id": tok.eos_id},
        "run": {k: run_metrics.get(k) for k in ("name", "step", "wall_time_s", "train_lines_per_s", "val_cer",
                                                 "val_wer", "params", "precision")},
    }
    (out / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return card
