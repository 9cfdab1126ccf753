"""The seed's loss diagnostic: how much worse the LM predicts the text from the image than from the text.

Over one split, in one pass (each image is read once and preprocessed both ways):

- **Reference** loss: the decoder as a plain LM reading the ground-truth text (no visual prefix),
  mean next-token CE over the text tokens (targets: the text tokens and EOS; BOS is never a target,
  PAD never counts) -- the same positions the training CE uses.
- **Connector** loss: the same CE when the decoder reads the connector's visual tokens of the line
  preprocessed with the `pad` width policy (aspect kept).
- **Downsampled** loss: the same with the `resize` policy (every line squeezed to `resize_width`).
- **KL(Q || P)**: Q = the reference next-token distribution, P = the connector (pad) one, summed over
  the vocabulary (`train.losses.kd_loss`, tau = 1): what the KD loss would pull on.

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
from bridgeocr.data.sample import LineSample
from bridgeocr.errors import BridgeOCRError
from bridgeocr.train.losses import ce_loss, kd_loss, target_mask

__all__ = ["compute_loss_gaps", "format_loss_gaps", "loss_gap_cli", "write_loss_gaps"]

SAMPLES_CSV = "loss_gap_samples.csv"
RESULT_JSON = "loss_gap.json"


# ------------------------------------------------------------------------------------ model adapters


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def reference_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits [B, T, V] of the decoder reading the text alone (no visual prefix)."""
    fn = getattr(model, "text_logits", None)
    if callable(fn):
        out = fn(input_ids, attention_mask)
    else:
        out = model.decoder(input_ids, attention_mask)
    return out[0] if isinstance(out, tuple) else out


def image_logits(model, batch):
    """(logits [B, T, V] at the text positions, visual_mask [B, M] or None) reading the image."""
    out = model(batch)
    logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple) else out)
    return logits, getattr(out, "visual_mask", None)


# ------------------------------------------------------------------------------------------- core


class _Items:
    """One image read, two preprocessings (pad / resize), both validated exactly as LineDataset does."""

    def __init__(self, image_cfg: ImageConfig, tokenizer, max_text_tokens: int | None):
        from bridgeocr.data.preprocess import LineDataset

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
                      max_samples: int | None = None, progress: bool = True) -> dict:
    """Reference / connector / downsampled CE, KL(Q||P) and the gaps over `source` (token-weighted).

    `model` is an OCRModel (`model(batch).logits`, `model.decoder`, `model.tokenizer`). Returns a dict:
    total_samples, tokens, reference, connector, downsampled, kl, gaps{...}, visual_tokens{pad, resize},
    skipped, skip_messages, samples (per line: id, n_tokens, reference, connector, downsampled, kl).
    """
    from bridgeocr.data.preprocess import Collator, WidthBucketSampler, image_sizes, target_width

    if batch_size < 1:
        raise BridgeOCRError(f"batch_size must be >= 1, got {batch_size}")
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
    tot = {"reference": 0.0, "connector": 0.0, "downsampled": 0.0, "kl": 0.0}
    n_tok = 0
    vis = {"pad": 0.0, "resize": 0.0}
    per_sample: list[dict] = []
    bar = tqdm(total=len(samples), desc="loss gap", disable=not progress, dynamic_ncols=True, leave=False)
    try:
        for idx in order:
            pairs = [p for p in (make_items(samples[i]) for i in idx) if p is not None]
            bar.update(len(idx))
            if not pairs:
                continue
            pad_batch = collate([p[0] for p in pairs]).to(device)
            res_batch = collate([p[1] for p in pairs]).to(device)
            ids, mask = pad_batch.input_ids, pad_batch.attention_mask
            ref = reference_logits(model, ids, mask)
            con, con_vmask = image_logits(model, pad_batch)
            down, down_vmask = image_logits(model, res_batch)
            tmask = target_mask(mask)
            counts = tmask.sum(1)  # target tokens per line
            sums = {name: ce_loss(lg, ids, mask, reduction="none").sum(1)
                    for name, lg in (("reference", ref), ("connector", con), ("downsampled", down))}
            kl = torch.stack([kd_loss(con[b:b + 1], ref[b:b + 1], tmask[b:b + 1], tau=1.0) * counts[b]
                              for b in range(len(pairs))])
            sums["kl"] = kl
            for b, item in enumerate(p[0] for p in pairs):
                n = int(counts[b])
                per_sample.append({"id": item["id"], "n_tokens": n,
                                   **{k: float(v[b]) / max(n, 1) for k, v in sums.items()}})
            for k, v in sums.items():
                tot[k] += float(v.sum())
            n_tok += int(counts.sum())
            for name, vm in (("pad", con_vmask), ("resize", down_vmask)):
                if vm is not None:
                    vis[name] += float(vm.sum())
    finally:
        bar.close()
        if was_training:
            model.train()

    n = len(per_sample)
    if n == 0:
        raise BridgeOCRError("loss gap: no usable lines"
                             + (f" ({make_items.skip_messages[0]})" if make_items.skip_messages else ""))
    means = {k: v / n_tok for k, v in tot.items()}
    return {
        "total_samples": n,
        "tokens": n_tok,
        **means,
        "gaps": {
            "connector_minus_reference": means["connector"] - means["reference"],
            "downsampled_minus_reference": means["downsampled"] - means["reference"],
            "connector_minus_downsampled": means["connector"] - means["downsampled"],
        },
        "visual_tokens": {k: (v / n if v else None) for k, v in vis.items()},
        "image": {"height": image_cfg.height, "max_width": image_cfg.max_width,
                  "resize_width": image_cfg.resize_width, "width_multiple": image_cfg.width_multiple},
        "skipped": len(make_items.skip_messages),
        "skip_messages": make_items.skip_messages[:20],
        "samples": per_sample,
    }


# ------------------------------------------------------------------------------------------ output


def format_loss_gaps(result: dict) -> str:
    """The seed report's layout (4 decimals)."""
    g = result["gaps"]
    return "\n".join([
        f"Total samples: {result['total_samples']}",
        f"◆ Reference Loss (GT Text → Text): {result['reference']:.4f}",
        f"◆ Connector Loss (Image → Text, padding): {result['connector']:.4f}",
        f"◆ Downsampled Loss (Image → Text, resized): {result['downsampled']:.4f}",
        f"◆ KL(Q || P) (reference → connector): {result['kl']:.4f}",
        "✗ Gaps:",
        f"  Connector - Reference: {g['connector_minus_reference']:.4f}",
        f"  Downsampled - Reference: {g['downsampled_minus_reference']:.4f}",
        f"  Connector - Downsampled: {g['connector_minus_downsampled']:.4f}",
    ])


def write_loss_gaps(result: dict, out: str | Path, extra: dict | None = None) -> tuple[Path, Path]:
    """`loss_gap.json` (everything but the per-line rows) and `loss_gap_samples.csv` in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "samples"}
    summary.update(extra or {})
    jpath = out / RESULT_JSON
    jpath.write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    cpath = out / SAMPLES_CSV
    with cpath.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "n_tokens", "reference", "connector", "downsampled", "kl"])
        for s in result["samples"]:
            w.writerow([s["id"], s["n_tokens"]] + [_f(s[k]) for k in ("reference", "connector", "downsampled",
                                                                        "kl")])
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


def loss_gap_cli(checkpoint, data, split="test", batch_size=32, max_samples=None, out=None) -> int:
    from bridgeocr.data.sources import open_source
    from bridgeocr.eval.evaluate import load_checkpoint

    model_dir, run_dir = _resolve_checkpoint(checkpoint)
    model, image_cfg, _meta = load_checkpoint(model_dir)
    source = open_source(data, None if split in (None, "all") else split)
    if len(source) == 0:
        raise BridgeOCRError(f"{data}: split {split!r} has no lines")
    result = compute_loss_gaps(model, source, image_cfg, batch_size=batch_size, max_samples=max_samples)
    if result["skipped"]:
        print(f"skipped {result['skipped']} bad sample(s), e.g. {result['skip_messages'][0]}")
    print(format_loss_gaps(result))
    out_dir = Path(out) if out else (run_dir or Path.cwd())
    jpath, cpath = write_loss_gaps(result, out_dir, {"checkpoint": str(model_dir), "data": str(data),
                                                     "split": split})
    print(f"wrote {jpath} and {cpath}")
    return 0
