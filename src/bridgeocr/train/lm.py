"""`bridgeocr lm train`: a tokenizer and a small GPT pretrained as a causal LM on plain text.

Output: an HF GPT-2 directory (`GPT.save_hf`) + `tokenizer.json` + `lm_card.json`; the state needed to
continue (`OUT/last`: weights, optimizer tensors as safetensors, step as JSON) is kept beside it.
"""

from __future__ import annotations

import contextlib
import math
import random
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bridgeocr.errors import BridgeOCRError, ConfigError
from bridgeocr.preflight import TRAIN_NEED, ensure_writable
from bridgeocr.train.checkpoint import (
    atomic_dir,
    guard_run_dir,
    load_optimizer,
    read_json,
    save_optimizer,
    write_json,
)
from bridgeocr.train.losses import ce_loss
from bridgeocr.train.schedule import lr_factor

__all__ = ["train_lm_cli", "train_lm", "build_gpt", "token_stream", "lm_eval"]


def build_gpt(vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_positions: int):
    """A fresh GPT (models/decoder.py) of the given size."""
    from bridgeocr.config import DecoderConfig
    from bridgeocr.models.decoder import GPT

    cfg = DecoderConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions)
    return GPT(cfg, vocab_size)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids, torch.ones_like(ids, dtype=torch.bool))
    return out[0] if isinstance(out, tuple) else out


def token_stream(docs: list[str], tokenizer) -> torch.Tensor:
    """All documents as one 1-D stream: BOS doc EOS BOS doc EOS ..."""
    ids: list[int] = []
    for doc in docs:
        if doc.strip():
            ids.append(tokenizer.bos_id)
            ids.extend(tokenizer.encode(doc))
            ids.append(tokenizer.eos_id)
    return torch.tensor(ids, dtype=torch.long)


def _batch(stream: torch.Tensor, batch_size: int, context: int, rng: random.Random) -> torch.Tensor:
    hi = len(stream) - (context + 1)
    starts = [rng.randint(0, max(0, hi)) for _ in range(batch_size)]
    return torch.stack([stream[s: s + context + 1] for s in starts])


@torch.no_grad()
def lm_eval(model, stream: torch.Tensor, context: int, batch_size: int, device, max_batches: int = 50) -> float:
    """Mean next-token loss (nats/token) over non-overlapping windows of the stream."""
    model.eval()
    n = (len(stream) - 1) // context
    windows = [stream[i * context: i * context + context + 1] for i in range(n)]
    if not windows and len(stream) > 1:
        windows = [stream]
    windows = windows[: max_batches * batch_size]
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i: i + batch_size]
        ids = torch.stack(chunk).to(device) if len({len(w) for w in chunk}) == 1 else chunk[0][None].to(device)
        am = torch.ones_like(ids, dtype=torch.bool)
        loss = ce_loss(_logits(model, ids), ids, am, reduction="sum")
        total += float(loss)
        count += int(am[:, 1:].sum())
    model.train()
    return total / max(1, count)


def _save_state(model, tokenizer, optimizer, out: Path, step: int, elapsed: float, extra: dict) -> None:
    def write(tmp: Path) -> None:
        model.save_hf(tmp, tokenizer=tokenizer)  # tokenizer.json (+ transformers' files) beside the weights
        save_optimizer(optimizer, tmp / "optimizer.safetensors")
        write_json(tmp / "train_state.json", {"step": step, "elapsed_s": elapsed, **extra})

    atomic_dir(out / "last", write)


def train_lm(*, docs: list[str], val_docs: list[str] | None, out: str | Path, tokenizer_kind: str = "char",
             vocab_size: int = 4000, n_layer: int = 3, n_embd: int = 192, n_head: int = 3,
             context: int = 128, steps: int = 2000, minutes: float | None = None, batch_size: int = 32,
             lr: float = 1e-3, seed: int = 0, resume: bool = False, eval_every: int | None = None,
             data_desc: str = "", command: str = "", progress: bool = True, prefix_read: float = 0.0,
             init: str | Path | None = None, overwrite: bool = False) -> dict:
    """Train and save; returns the LM card (dict).

    prefix_read: the fraction of steps that are prefix-reading batches (train/prefix_reading.py): the GPT
    writes a line while reading a noisy copy of it in its prefix (stretched or collapsed, as connectors
    give it), the skill an OCR decoder needs.
    init: start from this LM directory (its tokenizer and weights) instead of a fresh model.
    """
    from bridgeocr.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
    from bridgeocr.models.decoder import GPT

    out = Path(out)
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    if n_embd % n_head:
        raise ConfigError(f"--n-embd {n_embd} is not divisible by --n-head {n_head}")
    if not 0.0 <= prefix_read < 1.0:
        raise ConfigError(f"--prefix-read must be in [0, 1), got {prefix_read}")
    if not docs or not any(d.strip() for d in docs):
        raise BridgeOCRError("lm train: the corpus is empty")
    guard_run_dir(out, resume and (out / "last" / "train_state.json").is_file(), overwrite, resume_asked=resume)
    ensure_writable(out, TRAIN_NEED)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # validation split: the last 5% of the documents (or of the text, for a single document)
    if val_docs is None:
        if len(docs) >= 20:
            k = max(1, len(docs) // 20)
            docs, val_docs = docs[:-k], docs[-k:]
        else:
            text = "\n".join(docs)
            cut = int(len(text) * 0.95)
            docs, val_docs = [text[:cut]], [text[cut:]]

    last = out / "last"
    state = None
    if resume and (last / "train_state.json").is_file():
        state = read_json(last / "train_state.json")
        tokenizer = load_tokenizer(last / "tokenizer.json")
        model = GPT.from_hf(last)
        print(f"resuming from {last} at step {state['step']}", flush=True)
    elif init is not None:
        from bridgeocr.shipped import resolve_pretrained

        init = resolve_pretrained(str(init))
        if not (Path(init) / "tokenizer.json").is_file():
            raise ConfigError(f"--init {init}: no tokenizer.json (not an LM made by `bridgeocr lm train`)")
        tokenizer = load_tokenizer(Path(init) / "tokenizer.json")
        model = GPT.from_hf(init)
        print(f"starting from the LM in {init}", flush=True)
    else:
        if resume:
            print(f"--resume: nothing to resume in {last}; starting fresh", flush=True)
        if tokenizer_kind == "char":
            tokenizer = CharTokenizer.build(docs + val_docs)
        elif tokenizer_kind == "bpe":
            tokenizer = BPETokenizer.train(docs, vocab_size=vocab_size)
        else:
            raise ConfigError(f"--tokenizer: expected char or bpe, got {tokenizer_kind!r}")
        model = build_gpt(tokenizer.vocab_size, n_layer, n_embd, n_head, max(context + 1, 512))
    if prefix_read > 0:
        model.cfg = replace(model.cfg, prefix_positions=True)
    model.to(device).train()

    train_stream = token_stream(docs, tokenizer)
    val_stream = token_stream(val_docs, tokenizer)
    if len(train_stream) < 2:
        raise BridgeOCRError("lm train: the corpus gives fewer than 2 tokens")
    if len(train_stream) <= context + 1:
        context = len(train_stream) - 1
    n_params = sum(p.numel() for p in model.parameters())
    print(f"lm: {len(train_stream):,} train / {len(val_stream):,} val tokens, vocab {tokenizer.vocab_size}, "
          f"{n_params / 1e6:.2f}M params, device {device}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    step, elapsed_before = 0, 0.0
    history: list[dict] = []
    if state is not None:
        load_optimizer(optimizer, last / "optimizer.safetensors")
        step, elapsed_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
        history = list(state.get("history", []))
        rng = random.Random(seed * 1_000_003 + step)
    warmup = min(100, max(1, steps // 10))
    eval_every = eval_every or max(50, steps // 10)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    reading = _PrefixReading(docs, val_docs, tokenizer, seed) if prefix_read > 0 else None

    t0 = time.time()
    deadline = None if minutes is None else t0 + minutes * 60 - elapsed_before
    bar = tqdm(total=steps, initial=step, desc="lm", disable=not progress, dynamic_ncols=True)
    stopped = "steps"
    last_loss = float("nan")
    while step < steps:
        if deadline is not None and time.time() >= deadline:
            stopped = "minutes"
            break
        for g in optimizer.param_groups:
            g["lr"] = lr * lr_factor(step, warmup, steps)
        with amp if amp is not None else contextlib.nullcontext():
            if reading is not None and rng.random() < prefix_read:
                loss = reading.train_loss(model, batch_size, rng)
            else:
                ids = _batch(train_stream, batch_size, context, rng).to(device)
                loss = ce_loss(_logits(model, ids), ids, torch.ones_like(ids, dtype=torch.bool))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        last_loss = loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.3f}")
        if step % eval_every == 0 and step < steps:
            vl = lm_eval(model, val_stream, context, batch_size, device)
            history.append({"step": step, "val_loss": vl, "val_ppl": math.exp(min(vl, 50))})
            msg = f"step {step}: val loss {vl:.4f}, ppl {math.exp(min(vl, 50)):.2f}"
            if reading is not None:
                history[-1]["prefix_read_val_loss"] = reading.val_loss(model, batch_size)
                msg += f", prefix-reading val loss {history[-1]['prefix_read_val_loss']:.4f}"
            tqdm.write(msg)
            _save_state(model, tokenizer, optimizer, out, step, elapsed_before + time.time() - t0,
                        {"seed": seed, "history": history})
    bar.close()
    elapsed = elapsed_before + time.time() - t0
    val_loss = lm_eval(model, val_stream, context, batch_size, device)
    ppl = math.exp(min(val_loss, 50))
    read_loss = reading.val_loss(model, batch_size) if reading is not None else None
    print(f"lm: step {step}, val loss {val_loss:.4f}, perplexity {ppl:.2f}"
          + (f", prefix-reading val loss {read_loss:.4f}" if read_loss is not None else "")
          + f", {elapsed / 60:.1f} min (stopped by {stopped})", flush=True)
    _save_state(model, tokenizer, optimizer, out, step, elapsed, {"seed": seed, "history": history})

    card = {
        "command": command,
        "data": data_desc,
        "tokenizer": tokenizer.kind if hasattr(tokenizer, "kind") else tokenizer_kind,
        "vocab_size": tokenizer.vocab_size,
        "n_layer": model.cfg.n_layer, "n_embd": model.cfg.n_embd, "n_head": model.cfg.n_head,
        "context": context, "n_positions": model.cfg.n_positions,
        "params": n_params,
        "train_tokens": len(train_stream), "val_tokens": len(val_stream),
        "steps": step, "max_steps": steps, "stopped_by": stopped,
        "batch_size": batch_size, "lr": lr, "seed": seed,
        "time_s": round(elapsed, 1),
        "final_train_loss": last_loss,
        "val_loss": val_loss, "val_ppl": ppl,
        "history": history,
        "device": str(device),
        "prefix_read": prefix_read, "prefix_positions": bool(model.cfg.prefix_positions),
        "prefix_read_val_loss": read_loss,
        "init": None if init is None else str(init),
    }
    out.mkdir(parents=True, exist_ok=True)
    model.save_hf(out, tokenizer=tokenizer)  # a complete HF model: AutoModelForCausalLM + AutoTokenizer
    write_json(out / "lm_card.json", card)
    print(f"saved LM to {out}", flush=True)
    return card


class _PrefixReading:
    """Prefix-reading batches from the corpus cut into lines, and a fixed validation set of them."""

    def __init__(self, docs: list[str], val_docs: list[str], tokenizer, seed: int):
        from bridgeocr.data.corpus import cut_lines

        def as_lines(texts: list[str], rng: random.Random, limit: int | None) -> list[str]:
            lines = [t for t in texts if 15 <= len(t) <= 80]  # already lines (--line-mode)
            return lines if len(lines) >= len(texts) // 2 else cut_lines(texts, rng, max_lines=limit)

        self.tokenizer = tokenizer
        self.lines = as_lines(docs, random.Random(seed), 200_000)
        val = as_lines(val_docs, random.Random(seed + 1), 2_000)
        self.val_lines = [tokenizer.encode(t) for t in random.Random(seed + 2).sample(val, min(256, len(val)))]
        self.char_ids = [i for i in range(tokenizer.vocab_size) if i not in tokenizer.special_ids]
        if not self.lines or not self.val_lines:
            raise BridgeOCRError("lm train --prefix-read: the corpus gives no 15-80 character lines")

    def train_loss(self, model, batch_size: int, rng: random.Random):
        from bridgeocr.train.prefix_reading import prefix_reading_loss

        lines = [self.tokenizer.encode(rng.choice(self.lines)) for _ in range(batch_size)]
        return prefix_reading_loss(model, lines, self.tokenizer, self.char_ids, rng)[0]

    @torch.no_grad()
    def val_loss(self, model, batch_size: int) -> float:
        """Mean CE of the text given its noisy prefix on the fixed validation lines (same noise every time)."""
        from bridgeocr.train.prefix_reading import prefix_reading_loss

        model.eval()
        rng, total, count = random.Random(12345), 0.0, 0
        for i in range(0, len(self.val_lines), batch_size):
            loss, n = prefix_reading_loss(model, self.val_lines[i: i + batch_size], self.tokenizer,
                                          self.char_ids, rng, reduction="sum")
            total, count = total + float(loss), count + n
        model.train()
        return total / max(1, count)


def train_lm_cli(corpus, val_corpus, out, tokenizer, vocab_size, n_layer, n_embd, n_head, context, steps,
                 minutes, batch_size, lr, seed, resume, line_mode=False, prefix_read=0.0, init=None,
                 overwrite=False) -> int:
    from bridgeocr.data.corpus import cut_lines, read_corpus

    docs = read_corpus(corpus)
    val_docs = read_corpus(val_corpus) if val_corpus else None
    desc = "built-in corpus" if not corpus else ", ".join(map(str, corpus))
    if val_corpus:
        desc += f" (val: {', '.join(map(str, val_corpus))})"
    if line_mode:  # each line its own BOS ... EOS document: what the OCR decoder (and KD teacher) reads
        docs = cut_lines(docs, random.Random(seed))
        val_docs = cut_lines(val_docs, random.Random(seed + 1)) if val_docs else None
        desc += " (cut into 15-80 character lines)"
    train_lm(docs=list(docs), val_docs=list(val_docs) if val_docs is not None else None, out=out,
             tokenizer_kind=tokenizer, vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
             context=context, steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, seed=seed,
             resume=resume, data_desc=desc, command="bridgeocr " + shlex.join(sys.argv[1:]),
             prefix_read=prefix_read, init=init, overwrite=bool(overwrite))
    return 0
