"""`bridgeocr lm train`: a tokenizer and a small GPT pretrained as a causal LM on plain text.

Output: an HF GPT-2 directory (`GPT.save_hf`) + `tokenizer.json` + `lm_card.json`; beside it `OUT/last/`
(the LM at the last evaluation, an LM directory too, with `train_state.json`), the trainer's resume state
`OUT/last.ckpt/` (safetensors + JSON, train/engine.py), `metrics.csv` and `tb/`.
"""

from __future__ import annotations

import math
import random
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import torch
from tqdm.auto import tqdm

from bridgeocr.config import DecoderConfig
from bridgeocr.data.corpus import cut_lines, read_corpus
from bridgeocr.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from bridgeocr.errors import BridgeOCRError, ConfigError
from bridgeocr.models.decoder import GPT
from bridgeocr.shipped import resolve_pretrained
from bridgeocr.train.checkpoint import atomic_dir, write_json
from bridgeocr.train.engine import (
    Budget,
    Checkpoints,
    build_trainer,
    finish_interrupted,
    fit,
    merge_csv_logs,
    start_run,
    step_seed,
)
from bridgeocr.train.losses import ce_loss
from bridgeocr.train.optim import param_groups
from bridgeocr.train.prefix_reading import prefix_reading_loss
from bridgeocr.train.schedule import lr_factor

__all__ = ["train_lm_cli", "train_lm", "build_gpt", "token_stream", "lm_eval"]


def build_gpt(vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_positions: int):
    """A fresh GPT (models/decoder.py) of the given size."""

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


def train_lm(*, docs: list[str], val_docs: list[str] | None, out: str | Path, tokenizer_kind: str = "char",
             vocab_size: int = 4000, n_layer: int = 3, n_embd: int = 192, n_head: int = 3,
             context: int = 128, steps: int = 2000, minutes: float | None = None, batch_size: int = 32,
             lr: float = 1e-3, seed: int = 0, resume: bool = False, eval_every: int | None = None,
             data_desc: str = "", command: str = "", progress: bool = True, prefix_read: float = 0.0,
             init: str | Path | None = None, overwrite: bool = False, devices=None, num_nodes: int | None = None,
             strategy: str | None = None, precision: str | None = None, accelerator: str | None = None) -> dict:
    """Train and save; returns the LM card (dict; {} on the processes of a multi-process run but the first).

    prefix_read: the fraction of steps that are prefix-reading batches (train/prefix_reading.py): the GPT
    writes a line while reading a noisy copy of it in its prefix (stretched or collapsed, as connectors
    give it), the skill an OCR decoder needs.
    init: start from this LM directory (its tokenizer and weights) instead of a fresh model.
    devices / num_nodes / strategy / precision / accelerator: the Lightning trainer's (train/engine.py);
    with several processes each trains on its own batches (batch_size per process).
    """
    out = Path(out)
    _checked(steps, n_embd, n_head, prefix_read, docs)
    ckpt = start_run(out, resume, overwrite)
    pl.seed_everything(seed, verbose=False)
    docs, val_docs = _split(docs, val_docs)
    tokenizer, model = _model(out, ckpt is not None, init, docs, val_docs, tokenizer_kind, vocab_size,
                              (n_layer, n_embd, n_head, max(context + 1, 512)))
    if ckpt is not None:
        print(f"resuming from {ckpt}", flush=True)
    if prefix_read > 0:
        model.cfg = replace(model.cfg, prefix_positions=True)
    train_stream, val_stream = token_stream(docs, tokenizer), token_stream(val_docs, tokenizer)
    if len(train_stream) < 2:
        raise BridgeOCRError("lm train: the corpus gives fewer than 2 tokens")
    context = min(context, len(train_stream) - 1)
    reading = _PrefixReading(docs, val_docs, tokenizer, seed) if prefix_read > 0 else None
    module = _LMModule(model, _StepBatches(train_stream, batch_size, context, seed, prefix_read, reading),
                       lr, steps, seed)
    budget = Budget(minutes)
    saver = _saver(out, tokenizer, val_stream, context, batch_size, reading, eval_every or max(50, steps // 10),
                   seed, budget)
    trainer = build_trainer(out, max_steps=steps, budget=budget, callbacks=[saver], devices=devices,
                            num_nodes=num_nodes, strategy=strategy, precision=precision, accelerator=accelerator,
                            progress=progress, resuming=ckpt is not None)
    if trainer.is_global_zero:
        print(f"lm: {len(train_stream):,} train / {len(val_stream):,} val tokens, vocab {tokenizer.vocab_size}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {trainer.world_size} "
              f"process(es) on {trainer.strategy.root_device}", flush=True)
    stopped = fit(trainer, module, budget, ckpt, out)
    if stopped == "interrupted":
        finish_interrupted(trainer, module, saver)
    if not trainer.is_global_zero:
        return {}
    merge_csv_logs(out)
    final = saver.state["final"]
    print(f"lm: step {trainer.global_step}, val loss {final['val_loss']:.4f}, perplexity {final['val_ppl']:.2f}"
          + (f", prefix-reading val loss {final['prefix_read_val_loss']:.4f}" if reading is not None else "")
          + f", {budget.elapsed() / 60:.1f} min (stopped by {stopped})", flush=True)
    card = _card(model, tokenizer, trainer, budget, saver.state, command=command, data=data_desc,
                 tokenizer_kind=tokenizer_kind, context=context, train_tokens=len(train_stream),
                 val_tokens=len(val_stream), max_steps=steps, stopped_by=stopped, batch_size=batch_size, lr=lr,
                 seed=seed, prefix_read=prefix_read, init=init)
    model.save_hf(out, tokenizer=tokenizer)  # a complete HF model: AutoModelForCausalLM + AutoTokenizer
    write_json(out / "lm_card.json", card)
    print(f"saved LM to {out}", flush=True)
    return card


def _card(model, tokenizer, trainer, budget, state: dict, *, tokenizer_kind, init, **run) -> dict:
    """lm_card.json: the command, data, sizes, what stopped the run and its numbers."""
    loss = trainer.callback_metrics.get("train/loss")
    final = state["final"]
    return {
        "command": run.pop("command"), "data": run.pop("data"),
        "tokenizer": tokenizer.kind if hasattr(tokenizer, "kind") else tokenizer_kind,
        "vocab_size": tokenizer.vocab_size,
        "n_layer": model.cfg.n_layer, "n_embd": model.cfg.n_embd, "n_head": model.cfg.n_head,
        "context": run.pop("context"), "n_positions": model.cfg.n_positions,
        "params": sum(p.numel() for p in model.parameters()),
        "train_tokens": run.pop("train_tokens"), "val_tokens": run.pop("val_tokens"),
        "steps": int(trainer.global_step), **{k: run.pop(k) for k in ("max_steps", "stopped_by", "batch_size",
                                                                       "lr", "seed")},
        "time_s": round(budget.elapsed(), 1),
        "final_train_loss": float(loss) if loss is not None else float("nan"),
        "val_loss": final["val_loss"], "val_ppl": final["val_ppl"], "history": state["history"],
        "device": str(trainer.strategy.root_device), "devices": trainer.world_size,
        "precision": str(trainer.precision),
        "prefix_read": run.pop("prefix_read"), "prefix_positions": bool(model.cfg.prefix_positions),
        "prefix_read_val_loss": final.get("prefix_read_val_loss"),
        "init": None if init is None else str(init),
    }


def _checked(steps: int, n_embd: int, n_head: int, prefix_read: float, docs: list[str]) -> None:
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    if n_embd % n_head:
        raise ConfigError(f"--n-embd {n_embd} is not divisible by --n-head {n_head}")
    if not 0.0 <= prefix_read < 1.0:
        raise ConfigError(f"--prefix-read must be in [0, 1), got {prefix_read}")
    if not docs or not any(d.strip() for d in docs):
        raise BridgeOCRError("lm train: the corpus is empty")


def _split(docs: list[str], val_docs: list[str] | None) -> tuple[list[str], list[str]]:
    """Validation: `val_docs`, else the last 5% of the documents (of the text, for fewer than 20)."""
    if val_docs is not None:
        return docs, val_docs
    if len(docs) >= 20:
        k = max(1, len(docs) // 20)
        return docs[:-k], docs[-k:]
    text = "\n".join(docs)
    cut = int(len(text) * 0.95)
    return [text[:cut]], [text[cut:]]


def _model(out: Path, resuming: bool, init, docs, val_docs, tokenizer_kind, vocab_size, shape):
    """(tokenizer, GPT): the run's own when resuming (its weights come from last.ckpt), --init's, or new."""

    if resuming:
        return load_tokenizer(out / "last" / "tokenizer.json"), GPT.from_hf(out / "last")
    if init is not None:

        init = resolve_pretrained(str(init))
        if not (Path(init) / "tokenizer.json").is_file():
            raise ConfigError(f"--init {init}: no tokenizer.json (not an LM made by `bridgeocr lm train`)")
        print(f"starting from the LM in {init}", flush=True)
        return load_tokenizer(Path(init) / "tokenizer.json"), GPT.from_hf(init)
    if tokenizer_kind == "char":
        tokenizer = CharTokenizer.build(docs + val_docs)
    elif tokenizer_kind == "bpe":
        tokenizer = BPETokenizer.train(docs, vocab_size=vocab_size)
    else:
        raise ConfigError(f"--tokenizer: expected char or bpe, got {tokenizer_kind!r}")
    return tokenizer, build_gpt(tokenizer.vocab_size, *shape)


class _StepBatches(torch.utils.data.IterableDataset):
    """The batches from step `start()` on: step s on rank r is drawn from (seed, r, s) alone, so a resumed
    run trains on exactly the batches the stopped one would have. A prefix-reading step (train/prefix_reading.py)
    gives token lines and the seed of their noise instead of a window of the stream."""

    def __init__(self, stream: torch.Tensor, batch_size: int, context: int, seed: int, prefix_read: float,
                 reading):
        super().__init__()
        self.stream, self.batch_size, self.context, self.seed = stream, batch_size, context, seed
        self.prefix_read, self.reading = prefix_read, reading
        self.rank, self.start = 0, lambda: 0

    def batch(self, step: int) -> dict:
        rng = random.Random(step_seed("lm", self.seed, self.rank, step))
        if self.reading is not None and rng.random() < self.prefix_read:
            return {"lines": self.reading.sample(self.batch_size, rng), "noise_seed": rng.getrandbits(63)}
        return {"ids": _batch(self.stream, self.batch_size, self.context, rng)}

    def __iter__(self):
        step = int(self.start())
        while True:
            yield self.batch(step)
            step += 1


class _LMModule(pl.LightningModule):
    """Next-token CE (or prefix-reading CE) of the GPT; AdamW, warm-up then cosine decay per step."""

    def __init__(self, model, data: _StepBatches, lr: float, steps: int, seed: int):
        super().__init__()
        self.model, self.data, self.lr, self.steps, self.seed = model, data, lr, steps, seed

    def train_dataloader(self):
        self.data.rank = self.trainer.global_rank
        self.data.start = lambda: self.trainer.global_step  # restored from last.ckpt by then
        return torch.utils.data.DataLoader(self.data, batch_size=None)

    def on_train_batch_start(self, batch, batch_idx):  # dropout and prefix noise: from (seed, rank, step)
        torch.manual_seed(step_seed("torch", self.seed, self.global_rank, self.global_step))

    def training_step(self, batch, batch_idx):
        if "lines" in batch:
            loss = self.data.reading.loss(self.model, batch["lines"], random.Random(batch["noise_seed"]))
            n = len(batch["lines"])
        else:
            ids = batch["ids"]
            loss, n = ce_loss(_logits(self.model, ids), ids, torch.ones_like(ids, dtype=torch.bool)), len(ids)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(param_groups(self.model, {"gpt": self.lr}, weight_decay=0.01), lr=self.lr,
                                betas=(0.9, 0.95))
        warmup, steps = min(100, max(1, self.steps // 10)), self.steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _saver(out: Path, tokenizer, val_stream, context, batch_size, reading, every, seed, budget) -> Checkpoints:
    """Val loss every `every` steps (into the history) and at the end (`final`); last/ as an LM directory."""

    def evaluate(module, state, final):
        device = next(module.model.parameters()).device
        vl = lm_eval(module.model, val_stream, context, batch_size, device)
        rec = {"step": int(module.global_step), "val_loss": vl, "val_ppl": math.exp(min(vl, 50))}
        msg = f"step {rec['step']}: val loss {vl:.4f}, ppl {rec['val_ppl']:.2f}"
        if reading is not None:
            rec["prefix_read_val_loss"] = reading.val_loss(module.model, batch_size)
            msg += f", prefix-reading val loss {rec['prefix_read_val_loss']:.4f}"
        if final:
            state["final"] = rec
        else:
            state["history"].append(rec)
            tqdm.write(msg)
        names = {"val_loss": "val/loss", "val_ppl": "val/ppl", "prefix_read_val_loss": "val/prefix_read_loss"}
        return {names[k]: v for k, v in rec.items() if k in names}

    def write_last(module, state):
        def write(tmp: Path) -> None:
            module.model.save_hf(tmp, tokenizer=tokenizer)  # tokenizer.json (+ transformers' files) beside it
            write_json(tmp / "train_state.json", {"step": int(module.global_step), "elapsed_s": budget.elapsed(),
                                                  "seed": seed, "history": state["history"]})

        atomic_dir(out / "last", write)

    return Checkpoints(out, every, evaluate, write_last, {"history": [], "final": None})


class _PrefixReading:
    """Prefix-reading batches from the corpus cut into lines, and a fixed validation set of them."""

    def __init__(self, docs: list[str], val_docs: list[str], tokenizer, seed: int):

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

    def sample(self, batch_size: int, rng: random.Random) -> list[list[int]]:
        return [self.tokenizer.encode(rng.choice(self.lines)) for _ in range(batch_size)]

    def loss(self, model, lines: list[list[int]], rng: random.Random):
        return prefix_reading_loss(model, lines, self.tokenizer, self.char_ids, rng)[0]

    @torch.no_grad()
    def val_loss(self, model, batch_size: int) -> float:
        """Mean CE of the text given its noisy prefix on the fixed validation lines (same noise every time)."""

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
                 overwrite=False, devices=None, num_nodes=None, strategy=None, precision=None,
                 accelerator=None) -> int:
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
             prefix_read=prefix_read, init=init, overwrite=bool(overwrite), devices=devices, num_nodes=num_nodes,
             strategy=strategy, precision=precision, accelerator=accelerator)
    return 0
