"""The seed's loss diagnostic: how much worse the LM predicts the text from the image than from the text.

Over one split, in one pass (each image is read once and preprocessed both ways):

- **Reference** loss: the model's own decoder reading the ground-truth text, mean next-token CE over the
  text tokens (targets: the text tokens and EOS; BOS is never a target, PAD never counts) -- the same
  positions the training CE uses. Two readings (`train/teacher.py`, `reference=`): `lm`, a plain LM with
  no prefix (the seed's; keys `reference`, `kl`, `*_minus_reference`), and `prefix`, the text's own token
  embeddings in place of the visual tokens (what a perfect connector would give; keys `reference_prefix`,
  `kl_prefix`, `*_minus_reference_prefix`).
- **Connector** loss: the same CE when the decoder reads the connector's visual tokens of the line
  preprocessed with the `pad` width policy (aspect kept).
- **Downsampled** loss: the same with the `resize` policy (every line squeezed to `resize_width`).
- **KL(Q || P)**: Q = a reference next-token distribution, P = the connector (pad) one, summed over
  the vocabulary (`train.losses.kd_loss`, tau = 1): what the KD loss would pull on (`loss.kd_teacher`).

All means are token-weighted (total over all target tokens / number of target tokens), so long lines
weigh more, as in a batched CE. Gaps are differences of these means.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bridgeocr.config import ImageConfig
from bridgeocr.data.preprocess import Collator, LineDataset, WidthBucketSampler, image_sizes, target_width
from bridgeocr.data.sample import LineSample
from bridgeocr.data.sources import open_source
from bridgeocr.errors import BridgeOCRError
from bridgeocr.models.load import load_checkpoint
from bridgeocr.train.losses import ce_loss, kd_loss, target_mask
from bridgeocr.train.teacher import READINGS, read_text

__all__ = ["REFERENCES", "compute_loss_gaps", "format_loss_gaps", "loss_gap_cli", "value_columns",
           "write_loss_gaps"]

SAMPLES_CSV = "loss_gap_samples.csv"
RESULT_JSON = "loss_gap.json"
REFERENCES = (*READINGS, "both")  # what `reference=` / `--reference` accept
_SUFFIX = {"lm": "", "prefix": "_prefix"}  # key suffix of each reading: the seed's keys stay the lm ones


def _readings(reference: str) -> tuple[str, ...]:
    if reference == "both":
        return READINGS
    if reference in READINGS:
        return (reference,)
    raise BridgeOCRError(f"reference: expected one of {', '.join(REFERENCES)}, got {reference!r}")


def value_columns(readings) -> list[str]:
    """Per-line value names: the seed's (reference, connector, downsampled, kl) first, then the prefix's."""
    lm = "lm" in readings
    cols = (["reference"] if lm else []) + ["connector", "downsampled"] + (["kl"] if lm else [])
    return cols + (["reference_prefix", "kl_prefix"] if "prefix" in readings else [])


# ------------------------------------------------------------------------------------ model adapters


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def reference_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     reading: str = "lm") -> torch.Tensor:
    """Next-token logits [B, T, V] of the model's own decoder reading the text: alone (`lm`), or after the
    text's embeddings placed where the visual tokens go (`prefix`, at the model's attach layer)."""
    fn = getattr(model, "text_logits", None)
    if reading == "lm" and callable(fn):
        out = fn(input_ids, attention_mask)
        return out[0] if isinstance(out, tuple) else out
    tok = model.tokenizer
    attach = getattr(getattr(model, "cfg", None), "attach_layer", 0)
    return read_text(model.decoder, input_ids, attention_mask, reading, (tok.pad_id, tok.bos_id, tok.eos_id),
                     attach)


def _line_ce(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B]: each line's CE summed over its target tokens."""
    return ce_loss(logits, input_ids, attention_mask, reduction="none").sum(1)


def _line_kl(student: torch.Tensor, teacher: torch.Tensor, tmask: torch.Tensor, counts: torch.Tensor):
    """[B]: each line's KL(Q || P) summed over its target tokens (kd_loss per line times its count)."""
    return torch.stack([kd_loss(student[b:b + 1], teacher[b:b + 1], tmask[b:b + 1], tau=1.0) * counts[b]
                        for b in range(student.shape[0])])


def image_logits(model, batch):
    """(logits [B, T, V] at the text positions, visual_mask [B, M] or None) reading the image."""
    out = model(batch)
    logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple) else out)
    return logits, getattr(out, "visual_mask", None)


# ------------------------------------------------------------------------------------------- core


class _Items:
    """One image read, two preprocessings (pad / resize), both validated exactly as LineDataset does."""

    def __init__(self, image_cfg: ImageConfig, tokenizer, max_text_tokens: int | None):
        self.slot: list[LineSample] = [LineSample("", "")]
        self.pad = LineDataset(self.slot, image_cfg, tokenizer, policy="pad", max_text_tokens=max_text_tokens)
        self.resize = LineDataset(self.slot, image_cfg, tokenizer, policy="resize",
                                  max_text_tokens=max_text_tokens)
        self.skip_messages: list[str] = []

    def __call__(self, sample: LineSample):
        where = sample.origin or sample.id
        try:
            img = sample.load_image()
        except Exception as exc:  # DataError or worse: never fatal, counted
            self.skip_messages.append(str(exc) if str(exc).startswith(str(where)) else f"{where}: {exc}")
            return None
        self.slot[0] = LineSample(sample.id, sample.text, image=img, origin=sample.origin)
        for ds in (self.pad, self.resize):
            ds._skipped_idx.clear()  # both datasets see every line as index 0
        n_pad, n_res = len(self.pad.skip_messages), len(self.resize.skip_messages)
        a = self.pad[0]
        b = self.resize[0] if a is not None else None
        if a is None or b is None:
            msgs = self.pad.skip_messages[n_pad:] + self.resize.skip_messages[n_res:]
            self.skip_messages.append(msgs[0] if msgs else f"{where}: skipped")
            return None
        return a, b


@torch.no_grad()
def compute_loss_gaps(model, source, image_cfg: ImageConfig, batch_size: int = 32,
                      max_samples: int | None = None, progress: bool = True, reference: str = "lm") -> dict:
    """Reference / connector / downsampled CE, KL(Q||P) and the gaps over `source` (token-weighted).

    `model` is an OCRModel (`model(batch).logits`, `model.decoder`, `model.tokenizer`). `reference`: lm
    (the seed's plain-LM reading), prefix (the text as the prefix) or both. Returns a dict: readings,
    total_samples, tokens, connector, downsampled, reference + kl (lm), reference_prefix + kl_prefix
    (prefix), gaps{...}, visual_tokens{pad, resize}, skipped, skip_messages, samples (per line: id,
    n_tokens and `value_columns(readings)`).
    """
    if batch_size < 1:
        raise BridgeOCRError(f"batch_size must be >= 1, got {batch_size}")
    readings = _readings(reference)
    totals = _Totals(value_columns(readings))
    samples = list(source)
    if max_samples is not None:
        samples = samples[: max(0, int(max_samples))]
    tokenizer = model.tokenizer
    max_tokens = getattr(getattr(model, "cfg", None), "max_text_tokens", None)
    make_items = _Items(image_cfg, tokenizer, max_tokens)
    collate = Collator.for_tokenizer(tokenizer, image_cfg.width_multiple)
    # batches of similar (pad-policy) width, from the image headers only: little padding, same result
    widths = [target_width(w, h, image_cfg, "pad") for w, h in image_sizes(samples)]
    order = WidthBucketSampler(widths, batch_size, shuffle=False)

    device = _device(model)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(samples), desc="loss gap", disable=not progress, dynamic_ncols=True, leave=False)
    try:
        for idx in order:
            pairs = [p for p in (make_items(samples[i]) for i in idx) if p is not None]
            bar.update(len(idx))
            if not pairs:
                continue
            pad_batch = collate([p[0] for p in pairs]).to(device)
            res_batch = collate([p[1] for p in pairs]).to(device)
            totals.add([p[0] for p in pairs], *_batch_sums(model, pad_batch, res_batch, readings))
    finally:
        bar.close()
        if was_training:
            model.train()
    return totals.result(readings, image_cfg, make_items.skip_messages)


def _batch_sums(model, pad_batch, res_batch, readings):
    """One batch read from its image both ways and from its text -> (each value column's per-line sum over
    the target tokens, target tokens per line, the pad and the resize visual masks)."""
    ids, mask = pad_batch.input_ids, pad_batch.attention_mask
    con, con_vmask = image_logits(model, pad_batch)
    down, down_vmask = image_logits(model, res_batch)
    tmask = target_mask(mask)
    counts = tmask.sum(1)  # target tokens per line
    sums = {"connector": _line_ce(con, ids, mask), "downsampled": _line_ce(down, ids, mask)}
    for reading in readings:
        ref = reference_logits(model, ids, mask, reading)
        sums["reference" + _SUFFIX[reading]] = _line_ce(ref, ids, mask)
        sums["kl" + _SUFFIX[reading]] = _line_kl(con, ref, tmask, counts)
    return sums, counts, con_vmask, down_vmask


class _Totals:
    """The token-weighted totals of every value column, the visual tokens read, and the per-line rows."""

    def __init__(self, cols: list[str]):
        self.cols = cols
        self.tot = dict.fromkeys(cols, 0.0)
        self.n_tok = 0
        self.vis = {"pad": 0.0, "resize": 0.0}
        self.per_sample: list[dict] = []

    def add(self, items: list[dict], sums: dict, counts: torch.Tensor, con_vmask, down_vmask) -> None:
        """One batch's lines (`items`: their pad-policy dataset items) and `_batch_sums`."""
        for b, item in enumerate(items):
            n = int(counts[b])
            self.per_sample.append({"id": item["id"], "n_tokens": n,
                                    **{k: float(sums[k][b]) / max(n, 1) for k in self.cols}})
        for k, v in sums.items():
            self.tot[k] += float(v.sum())
        self.n_tok += int(counts.sum())
        for name, vm in (("pad", con_vmask), ("resize", down_vmask)):
            if vm is not None:
                self.vis[name] += float(vm.sum())

    def result(self, readings, image_cfg: ImageConfig, skip_messages: list[str]) -> dict:
        """`compute_loss_gaps`'s dict; no usable line at all is an error (naming the first skipped one)."""
        n = len(self.per_sample)
        if n == 0:
            raise BridgeOCRError("loss gap: no usable lines"
                                 + (f" ({skip_messages[0]})" if skip_messages else ""))
        means = {k: v / self.n_tok for k, v in self.tot.items()}
        return {
            "readings": list(readings),
            "total_samples": n,
            "tokens": self.n_tok,
            **means,
            "gaps": _gaps(means, readings),
            "visual_tokens": {k: (v / n if v else None) for k, v in self.vis.items()},
            "image": {"height": image_cfg.height, "max_width": image_cfg.max_width,
                      "resize_width": image_cfg.resize_width, "width_multiple": image_cfg.width_multiple},
            "skipped": len(skip_messages),
            "skip_messages": skip_messages[:20],
            "samples": self.per_sample,
        }


def _gaps(means: dict, readings) -> dict:
    """Connector / downsampled minus each reference, then connector minus downsampled (the seed's order)."""
    gaps = {}
    for reading in readings:
        ref = means["reference" + _SUFFIX[reading]]
        gaps["connector_minus_reference" + _SUFFIX[reading]] = means["connector"] - ref
        gaps["downsampled_minus_reference" + _SUFFIX[reading]] = means["downsampled"] - ref
    gaps["connector_minus_downsampled"] = means["connector"] - means["downsampled"]
    return gaps


# ------------------------------------------------------------------------------------------ output

# per reading: (what the reference reads, what Q is called, the gap lines' tag)
_LABELS = {"lm": ("GT Text → Text", "reference", ""), "prefix": ("GT Text as prefix → Text", "prefix reference",
                                                                 " (prefix)")}


def format_loss_gaps(result: dict) -> str:
    """The seed report's layout (4 decimals); with the prefix reading, its lines follow each lm one."""
    g = result["gaps"]
    readings = result.get("readings", ["lm"])
    labels = [(_SUFFIX[r], *_LABELS[r]) for r in readings]
    lines = [f"Total samples: {result['total_samples']}"]
    lines += [f"◆ Reference Loss ({what}): {result['reference' + sfx]:.4f}" for sfx, what, _, _ in labels]
    lines += [f"◆ Connector Loss (Image → Text, padding): {result['connector']:.4f}",
              f"◆ Downsampled Loss (Image → Text, resized): {result['downsampled']:.4f}"]
    lines += [f"◆ KL(Q || P) ({q} → connector): {result['kl' + sfx]:.4f}" for sfx, _, q, _ in labels]
    lines.append("✗ Gaps:")
    for sfx, _, _, tag in labels:
        lines += [f"  Connector - Reference{tag}: {g['connector_minus_reference' + sfx]:.4f}",
                  f"  Downsampled - Reference{tag}: {g['downsampled_minus_reference' + sfx]:.4f}"]
    lines.append(f"  Connector - Downsampled: {g['connector_minus_downsampled']:.4f}")
    return "\n".join(lines)


def write_loss_gaps(result: dict, out: str | Path, extra: dict | None = None) -> tuple[Path, Path]:
    """`loss_gap.json` (everything but the per-line rows) and `loss_gap_samples.csv` in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "samples"}
    summary.update(extra or {})
    jpath = out / RESULT_JSON
    jpath.write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    cpath = out / SAMPLES_CSV
    cols = value_columns(result.get("readings", ["lm"]))
    with cpath.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "n_tokens", *cols])
        for s in result["samples"]:
            w.writerow([s["id"], s["n_tokens"]] + [_f(s[k]) for k in cols])
    return jpath, cpath


def _f(x: float) -> str:
    return f"{x:.6f}" if math.isfinite(x) else str(x)


def _resolve_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """A model dir, or a run dir (-> its best/, else last/). Returns (model dir, run dir or None)."""
    path = Path(path)
    if (path / "config.json").is_file():
        parent = path.parent
        is_run = (parent / "config.yaml").is_file() or (parent / "metrics.json").is_file()
        return path, parent if is_run else None
    for sub in ("best", "last"):
        if (path / sub / "config.json").is_file():
            return path / sub, path
    raise BridgeOCRError(f"{path}: not a model checkpoint (no config.json) nor a run directory (no best/ or last/)")


def loss_gap_cli(checkpoint, data, split="test", batch_size=32, max_samples=None, out=None,
                 reference="both", allow_outside=False, split_by="page") -> int:
    model_dir, run_dir = _resolve_checkpoint(checkpoint)
    model, image_cfg, _meta = load_checkpoint(model_dir)
    source = open_source(data, None if split in (None, "all") else split, allow_outside=allow_outside,
                         split_by=split_by)
    if len(source) == 0:
        raise BridgeOCRError(f"{data}: split {split!r} has no lines")
    result = compute_loss_gaps(model, source, image_cfg, batch_size=batch_size, max_samples=max_samples,
                               reference=reference)
    if result["skipped"]:
        print(f"skipped {result['skipped']} bad sample(s), e.g. {result['skip_messages'][0]}")
    print(format_loss_gaps(result))
    out_dir = Path(out) if out else (run_dir or Path.cwd())
    jpath, cpath = write_loss_gaps(result, out_dir, {"checkpoint": str(model_dir), "data": str(data),
                                                     "split": split})
    print(f"wrote {jpath} and {cpath}")
    return 0
