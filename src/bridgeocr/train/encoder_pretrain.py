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

import torch
from tqdm.auto import tqdm

from bridgeocr.config import ExperimentConfig, load_config
from bridgeocr.data.augment import Augmenter
from bridgeocr.data.tokenizers import load_tokenizer
from bridgeocr.errors import BridgeOCRError
from bridgeocr.models.encoder import build_encoder, is_encoder_dir, load_encoder, save_encoder
from bridgeocr.models.ppocr import import_ppocr
from bridgeocr.preflight import TRAIN_NEED, ensure_writable
from bridgeocr.shipped import resolve_pretrained
from bridgeocr.train.checkpoint import (
    atomic_dir,
    guard_run_dir,
    load_optimizer,
    read_json,
    save_optimizer,
    write_json,
)
from bridgeocr.train.losses import ctc_loss, ctc_targets
from bridgeocr.train.schedule import lr_factor

__all__ = ["train_encoder", "train_encoder_cli", "import_ppocr_cli", "ctc_evaluate"]


@torch.no_grad()
def ctc_evaluate(encoder, head, loader, tokenizer, device, max_batches: int | None = None) -> dict:
    """CER / WER of CTC greedy decoding, plus lines/s."""
    from bridgeocr.eval.metrics import cer, wer
    from bridgeocr.models.ctc import ctc_read

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
                  overwrite: bool = False) -> dict:
    """Train encoder + CTC head on the train split of each source; keep the best by val CER in `out`.

    `init`: an encoder directory to start from (its CTC head too when the vocabulary matches, its tokenizer
    unless `tokenizer.path` is set), or `ppocr` (PP-OCR's recogniser from the rapidocr wheel, its CTC head
    mapped onto the tokenizer, default the shipped GPT's). An encoder that brings image settings (PP-OCR:
    height 48) sets `data.image` to them. `augment`: none | print | handwriting (data/augment.py)."""
    from bridgeocr.data.preprocess import make_loader
    from bridgeocr.data.sources import open_source
    from bridgeocr.models.ctc import CTCHead
    from bridgeocr.train.run import adopt_encoder_image, build_tokenizer

    out = Path(out)
    guard_run_dir(out, resume and (out / "last" / "train_state.json").is_file(), overwrite, resume_asked=resume)
    ensure_writable(out, TRAIN_NEED)
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    opts = {"split_file": cfg.data.split_file, "iam_split_dir": cfg.data.iam_split_dir, "drop_err": cfg.data.drop_err,
            "allow_outside": cfg.data.allow_outside, "split_by": cfg.data.split_by}
    train: list = []  # the train splits of all sources, as one sequence of samples
    for spec in data:
        train.extend(open_source(spec, cfg.data.train_split, **opts))
    if not train:
        raise BridgeOCRError(f"encoder train: no training lines in {', '.join(data)}")
    val = open_source(val_data or data[0], cfg.data.val_split, **opts)
    init_dir = None if init in (None, "ppocr") else resolve_pretrained(init)
    if init_dir is not None and not is_encoder_dir(init_dir):
        raise BridgeOCRError(f"--init {init}: not a bridgeocr encoder directory")
    if not cfg.tokenizer.path and init_dir is not None and (init_dir / "tokenizer.json").is_file():
        cfg.tokenizer.path = str(init_dir / "tokenizer.json")  # the init head's vocabulary
    elif not cfg.tokenizer.path and init == "ppocr" and not cfg.model.decoder.pretrained:
        cfg.tokenizer.path = "shipped:gpt_lm"  # so the encoder joins the shipped GPT
    tokenizer = build_tokenizer(cfg, [s.text for s in train])  # the OCR trainer's choice, so the CTC head fits
    if init == "ppocr":
        cfg.model.encoder.kind = "ppocr"
    elif init_dir is not None:
        cfg.model.encoder.pretrained = str(init_dir)
    adopt_encoder_image(cfg)
    image_cfg = cfg.data.image

    last = out / "last"
    state = read_json(last / "train_state.json") if resume and (last / "train_state.json").is_file() else None
    if state is not None:
        encoder, head = load_encoder(last, image_cfg.height)
        print(f"resuming from {last} at step {state['step']}", flush=True)
    else:
        if resume:
            print(f"--resume: nothing to resume in {last}; starting fresh", flush=True)
        head = None
        if cfg.model.encoder.kind == "ppocr" and not cfg.model.encoder.pretrained:
            encoder, head, info = import_ppocr(cfg.model.encoder.onnx, tokenizer, cfg.model.encoder)
            print(f"PP-OCR encoder from {info['onnx']}: CTC head {info['kept']} characters kept, "
                  f"{len(info['new'])} new", flush=True)
        elif cfg.model.encoder.pretrained:  # continue a pretrained encoder (its head if the vocab matches)
            encoder, head = load_encoder(cfg.model.encoder.pretrained, image_cfg.height)
        else:
            encoder = build_encoder(cfg.model.encoder, image_cfg.height)
        if head is not None and init:
            cfg.model.ctc_upsample = head.upsample  # an --init head keeps its frames per token
        if head is None or head.vocab_size != tokenizer.vocab_size or head.upsample != cfg.model.ctc_upsample:
            head = CTCHead(encoder.d_out, tokenizer.vocab_size, cfg.model.ctc_upsample)
    encoder.to(device).train()
    head.to(device).train()
    params = list(encoder.parameters()) + list(head.parameters())
    n_params = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    step, elapsed_before, best_cer, history = 0, 0.0, math.inf, []
    if state is not None:
        load_optimizer(optimizer, last / "optimizer.safetensors")
        step, elapsed_before = int(state["step"]), float(state["elapsed_s"])
        best_cer, history = float(state.get("best_cer", math.inf)), list(state.get("history", []))

    augmenter = None if augment in (None, "none") else Augmenter(augment, seed)
    train_loader = make_loader(train, image_cfg, tokenizer, batch_size, shuffle=True, seed=seed + step,
                               max_text_tokens=cfg.model.max_text_tokens, drop_last=True, augment=augmenter)
    val_loader = make_loader(val, image_cfg, tokenizer, batch_size, shuffle=False)
    print(f"encoder: {len(train):,} train / {len(val):,} val lines, vocab {tokenizer.vocab_size}, "
          f"{n_params / 1e6:.2f}M params, device {device}", flush=True)
    drop = [tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id]
    warmup = min(300, max(1, steps // 10))
    eval_every = eval_every or max(100, steps // 10)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    def save_last(elapsed: float) -> None:
        def write(tmp: Path) -> None:
            save_encoder(tmp, encoder, head)
            tokenizer.save(tmp / "tokenizer.json")
            save_optimizer(optimizer, tmp / "optimizer.safetensors")
            write_json(tmp / "train_state.json", {"step": step, "elapsed_s": elapsed, "best_cer": best_cer,
                                                  "history": history, "seed": seed})
        atomic_dir(last, write)

    def evaluate_and_keep(elapsed: float) -> dict:
        nonlocal best_cer
        result = ctc_evaluate(encoder, head, val_loader, tokenizer, device, eval_batches)
        history.append({"step": step, "val_cer": result["cer"], "val_wer": result["wer"],
                        "elapsed_s": round(elapsed, 1)})
        tqdm.write(f"step {step}: val CER {result['cer']:.4f}, WER {result['wer']:.4f} "
                   f"({result['lines']} lines) e.g. {result.get('examples', [])[:1]}")
        if result["cer"] < best_cer:
            best_cer = result["cer"]
            out.mkdir(parents=True, exist_ok=True)
            save_encoder(out, encoder, head)
            tokenizer.save(out / "tokenizer.json")
        return result

    t0 = time.time()
    deadline = None if minutes is None else t0 + minutes * 60 - elapsed_before
    bar = tqdm(total=steps, initial=step, desc="encoder", disable=not progress, dynamic_ncols=True)
    skipped_before = 0
    stopped, lines_seen = "steps", 0
    epoch = 0
    try:  # Ctrl-C ends the run like a budget does: final evaluation, last/ and the card are still written
        while step < steps and stopped == "steps":
            train_loader.batch_sampler.set_epoch(epoch)
            train_loader.dataset.epoch = epoch
            for batch in train_loader:
                if step >= steps:
                    break
                if deadline is not None and time.time() >= deadline:
                    stopped = "minutes"
                    break
                if batch is None:
                    continue
                batch = batch.to(device)
                for g in optimizer.param_groups:
                    g["lr"] = lr * lr_factor(step, warmup, steps)
                targets, lengths = ctc_targets(batch.input_ids, batch.attention_mask, drop)
                if amp is not None:
                    with amp:
                        tokens, mask = encoder(batch.images, batch.image_mask)
                        logits = head(tokens)
                else:
                    tokens, mask = encoder(batch.images, batch.image_mask)
                    logits = head(tokens)
                loss = ctc_loss(logits, head.frame_mask(mask), targets, lengths)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                step += 1
                lines_seen += len(batch)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                skipped = train_loader.dataset.skipped
                if skipped > skipped_before:
                    tqdm.write(f"skipped {skipped - skipped_before} bad sample(s): "
                               f"{train_loader.dataset.skip_messages[-1]}")
                    skipped_before = skipped
                if step % eval_every == 0:
                    elapsed = elapsed_before + time.time() - t0
                    evaluate_and_keep(elapsed)
                    save_last(elapsed)
            epoch += 1
    except KeyboardInterrupt:
        stopped = "interrupted"
        tqdm.write(f"interrupted at step {step}: evaluating and saving")
    bar.close()
    elapsed = elapsed_before + time.time() - t0
    final = evaluate_and_keep(elapsed)
    save_last(elapsed)
    full = ctc_evaluate(*load_encoder(out, image_cfg.height), val_loader, tokenizer, device) \
        if (out / "model.safetensors").is_file() else final
    card = {
        "command": command, "data": list(map(str, data)), "val_data": str(val_data or data[0]),
        "train_lines": len(train), "val_lines": len(val), "vocab_size": tokenizer.vocab_size,
        "encoder": {k: getattr(cfg.model.encoder, k) for k in ("dim", "depth", "heads", "patch_width",
                                                                "patch_height", "conv_stem", "pos_embedding")},
        "image": {"height": image_cfg.height, "max_width": image_cfg.max_width},
        "init": init, "augment": augment, "encoder_kind": cfg.model.encoder.kind,
        "params": n_params, "steps": step, "stopped_by": stopped, "batch_size": batch_size, "lr": lr,
        "seed": seed, "time_s": round(elapsed, 1), "device": str(device),
        "threads": torch.get_num_threads(), "lines_seen_this_run": lines_seen,
        "val_cer_ctc_greedy": full["cer"], "val_wer_ctc_greedy": full["wer"], "val_lines_evaluated": full["lines"],
        "history": history, "skipped_samples": train_loader.dataset.skipped,
    }
    write_json(out / "encoder_card.json", card)
    print(f"encoder: step {step}, best val CER {full['cer']:.4f} WER {full['wer']:.4f} on {full['lines']} lines, "
          f"{elapsed / 60:.1f} min (stopped by {stopped}); saved {out}", flush=True)
    return card


def train_encoder_cli(data, val_data, out, config, overrides, steps, minutes, batch_size, lr, seed, resume,
                      init=None, augment="none", overwrite=False) -> int:
    cfg = load_config(config, overrides)
    train_encoder(cfg, data, val_data, out, steps, minutes, batch_size, lr, seed, resume,
                  command="bridgeocr " + shlex.join(sys.argv[1:]), init=init, augment=augment,
                  overwrite=bool(overwrite))
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
