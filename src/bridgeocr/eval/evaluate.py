"""Decode a split with a trained OCRModel: CER/WER (the seed's lines), predictions TSV, metrics.json.

`evaluate_model` is shared with training (end-of-run test, `bridgeocr evaluate`). References and hypotheses are
Unicode-normalised before scoring (`normalize`, NFC by default; see eval/metrics.py); the predictions file
holds the texts as read and decoded, and `read_predictions` gives them back exactly.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bridgeocr.config import ImageConfig
from bridgeocr.data.features import make_feature_loader
from bridgeocr.data.manifest import find_split_file
from bridgeocr.data.preprocess import make_loader
from bridgeocr.data.sources import LineSource, drop_reasons, format_drops, open_source
from bridgeocr.errors import BridgeOCRError, NoUsableDataError
from bridgeocr.eval.metrics import DEFAULT_NORMALIZE, group_scores, line_cers, print_seed_metrics
from bridgeocr.eval.metrics import cer as corpus_cer
from bridgeocr.eval.metrics import wer as corpus_wer
from bridgeocr.files import write_json
from bridgeocr.models.encdec import decode_batch
from bridgeocr.models.load import TRAINING_META, load_checkpoint  # re-exported: read from here too
from bridgeocr.preflight import ensure_writable

__all__ = ["evaluate_model", "evaluate_cli", "load_checkpoint", "write_predictions", "read_predictions",
           "write_groups", "print_groups",
           "print_worst", "source_has_splits", "TRAINING_META", "PREDICTION_COLUMNS"]



def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def decode_loader(model, loader, beam: int | None = None, progress: bool = True, desc: str = "decode",
                  total: int | None = None, decoding: str | None = "gpt"):
    """Decode every batch of a loader -> (ids, refs, hyps, confidences): `decoding` gpt (greedy / beam),
    ctc (the CTC head), joint (both) or None (the model's `decoding` setting); see OCRModel.read."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    ids, refs, hyps, confs = [], [], [], []
    bar = tqdm(total=total, desc=desc, disable=not progress, dynamic_ncols=True, leave=True)
    for batch in loader:
        if batch is None:
            continue
        out = model.read(batch.images.to(device), batch.image_mask.to(device), beam=beam, decoding=decoding)
        ids.extend(batch.ids)
        refs.extend(batch.texts)
        hyps.extend(h.text for h in out)
        confs.extend(float(h.confidence) for h in out)
        bar.update(len(batch))
    bar.close()
    if was_training:
        model.train()
    return ids, refs, hyps, confs


def evaluate_model(model, source, image_cfg: ImageConfig, beam: int | None = None, batch_size: int = 32,
                   progress: bool = True, desc: str = "decode", num_workers: int = 0,
                   decoding: str | None = "gpt", features=None, normalize: str = DEFAULT_NORMALIZE) -> dict:
    """Decode every line of `source` -> dict(cer, wer, n, skipped, skip_messages, lines_per_s, decoding,
    normalize, ids, refs, hyps, confidences, line_cer, groups: each line's LineSample.group). Bad samples
    are skipped and counted, never fatal.
    `features`: a FeatureStore holding the model's (frozen) encoder tokens for these lines (then the
    time measured is the connector's and the decoder's alone). `normalize`: the Unicode normal form
    references and hypotheses are scored in (nfc | nfkc | none); refs / hyps are kept as they were."""

    tokenizer = model.tokenizer
    if features is not None:
        loader = make_feature_loader(source, features, image_cfg, tokenizer, batch_size=batch_size, shuffle=False)
    else:
        loader = make_loader(source, image_cfg, tokenizer, batch_size=batch_size, shuffle=False,
                             num_workers=num_workers)
    t0 = time.perf_counter()
    ids, refs, hyps, confs = decode_loader(model, loader, beam=beam, progress=progress, desc=desc,
                                           total=len(source), decoding=decoding)
    dt = time.perf_counter() - t0
    dataset = loader.dataset
    if not refs:  # never CER 0 from nothing
        msgs = list(getattr(dataset, "skip_messages", []))
        first = source[0] if len(source) else None  # a plain list (e.g. --max-samples) has no name: its first row
        name = getattr(source, "name", None) or (first.origin or first.image_path if first is not None else "data")
        raise NoUsableDataError(str(name), f"not one of its {len(source)} line(s) could be read"
                                + (f", e.g. {msgs[0]}" if msgs else ""))
    group_of = {sample.id: sample.group for sample in source}
    return {
        "cer": corpus_cer(refs, hyps, normalize),
        "wer": corpus_wer(refs, hyps, normalize),
        "n": len(refs),
        "skipped": int(getattr(dataset, "skipped", 0)),
        "skip_messages": list(getattr(dataset, "skip_messages", []))[:20],
        "seconds": dt,
        "lines_per_s": len(refs) / dt if dt > 0 else 0.0,
        "decoding": describe_decoding(model, decoding, beam),
        # how wide the lines were read (models/widening.py): their stretch, and the density above which a
        # line was read again (0: never; cached tokens are read as they were stored)
        "reading": {"width_scale": float(image_cfg.width_scale),
                    "widen_crowded": float(model.cfg.widen_crowded) if reads_wider(model, features) else 0.0},
        "normalize": normalize,
        "ids": ids, "refs": refs, "hyps": hyps, "confidences": confs,
        "line_cer": line_cers(refs, hyps, normalize),
        "groups": [group_of.get(i, "") for i in ids],
    }


PREDICTION_COLUMNS = ("id", "reference", "hypothesis", "cer", "confidence")
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def escape_field(text: str) -> str:
    """One predictions-file field: backslash, TAB, LF, CR written as `\\\\`, `\\t`, `\\n`, `\\r`."""
    return re.sub(r"[\\\t\n\r]", lambda m: _ESCAPES[m.group()], str(text))


def unescape_field(field: str) -> str:
    """The inverse of `escape_field` (a backslash before any other character is kept as it is)."""
    return re.sub(r"\\(.)", lambda m: _UNESCAPES.get(m.group(1), m.group()), field, flags=re.S)


def write_predictions(path: str | Path, result: dict) -> Path:
    """TSV `id, reference, hypothesis, cer, confidence`, worst lines (highest CER) first.

    Convention (any text round-trips; `read_predictions` reads it back): UTF-8, one header line, one line per
    sample ending in LF, fields separated by TAB, no quoting at all (a `"` is just a character, leading and
    trailing spaces are kept); in the text fields (id, reference, hypothesis) exactly four characters are
    escaped, backslash -> `\\\\`, TAB -> `\\t`, LF -> `\\n`, CR -> `\\r`, so a line is a row and a TAB
    is a separator. The texts are the ones read and decoded, before the normalisation the scores use.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(zip(result["ids"], result["refs"], result["hyps"], result["line_cer"],
                    result.get("confidences") or [float("nan")] * len(result["ids"])))
    rows.sort(key=lambda r: (-r[3], str(r[0])))
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("\t".join(PREDICTION_COLUMNS) + "\n")
        for i, ref, hyp, c, conf in rows:
            f.write("\t".join([escape_field(i), escape_field(ref), escape_field(hyp), f"{c:.4f}", f"{conf:.4f}"])
                    + "\n")
    return path


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a `write_predictions` file: dicts id, reference, hypothesis (exact texts), cer, confidence
    (floats). Lines are split on LF only (a text's other line-break characters are not separators)."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0].split("\t") != list(PREDICTION_COLUMNS):
        raise BridgeOCRError(f"{path}: not a predictions file (expected the header {' '.join(PREDICTION_COLUMNS)})")
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(PREDICTION_COLUMNS):
            raise BridgeOCRError(f"{path}:{lineno}: expected {len(PREDICTION_COLUMNS)} TAB-separated fields, "
                                 f"got {len(fields)}")
        i, ref, hyp, c, conf = fields
        try:
            c, conf = float(c), float(conf)
        except ValueError:
            raise BridgeOCRError(f"{path}:{lineno}: cer and confidence should be numbers") from None
        rows.append({"id": unescape_field(i), "reference": unescape_field(ref), "hypothesis": unescape_field(hyp),
                     "cer": c, "confidence": conf})
    return rows


GROUP_COLUMNS = ("group", "lines", "chars", "cer", "wer")


def print_groups(groups: list[dict], k: int = 20) -> None:
    """The per-group scores (`metrics.group_scores`, worst first) as a table; the k worst when there are more."""
    if not groups:
        return
    shown = groups[:k]
    width = min(40, max(len("group"), *(len(g["group"] or "(none)") for g in shown)))
    more = f", the {len(shown)} worst shown" if len(groups) > len(shown) else ""
    print(f"by group ({len(groups)} groups{more}):", flush=True)
    print(f"  {'group':<{width}}  {'lines':>6}  {'CER':>7}  {'WER':>7}", flush=True)
    for g in shown:
        name = (g["group"] or "(none)")[:width]
        print(f"  {name:<{width}}  {g['lines']:>6}  {g['cer']:>7.4f}  {g['wer']:>7.4f}", flush=True)


def write_groups(path: str | Path, groups: list[dict]) -> Path:
    """TSV `group, lines, chars, cer, wer`, worst CER first; the group name escaped as in predictions.tsv."""
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("\t".join(GROUP_COLUMNS) + "\n")
        for g in groups:
            f.write(f"{escape_field(g['group'])}\t{g['lines']}\t{g['chars']}\t{g['cer']:.6f}\t{g['wer']:.6f}\n")
    return path


def print_worst(result: dict, k: int = 5, label: str = "") -> None:
    rows = sorted(zip(result["ids"], result["refs"], result["hyps"], result["line_cer"]),
                  key=lambda r: (-r[3], str(r[0])))[:k]
    if not rows:
        return
    print(f"{label}worst {len(rows)} lines (by CER):", flush=True)
    for i, ref, hyp, c in rows:
        print(f"  {c:.3f}  {i}\n    ref: {ref}\n    hyp: {hyp}", flush=True)


def summary(result: dict) -> dict:
    """The JSON-friendly part of an evaluate_model result."""
    keys = ("cer", "wer", "n", "skipped", "seconds", "lines_per_s", "decoding", "normalize")
    return {k: result[k] for k in keys if k in result}


def reads_wider(model, features=None) -> bool:
    """Whether a read may re-read crowded lines: the model widens and reads pixels, not cached tokens."""
    return bool(getattr(model, "widens", False)) and features is None


def describe_decoding(model, decoding: str | None, beam: int | None) -> str:
    """How a read decodes, in words for logs and metrics.json ("CTC head", "GPT, beam 1", ...)."""
    how, beam = model.decoding_for(decoding), model.beam_for(decoding, beam)
    if how == "ctc":
        return "CTC head"
    if how == "joint":
        draft = beam > 1 and model.drafts_first(decoding)
        return f"joint CTC/GPT, beam {beam}, CTC weight {model.cfg.joint_ctc_weight:g}" + (", draft first" * draft)
    return f"GPT, beam {beam}"


def source_has_splits(spec) -> bool:
    """Whether a source names splits: an IAM root does, a manifest when its split file lies beside it
    (manifest.tsv / manifest.jsonl: split.tsv, labels.tsv: split_by_letter.tsv). What is neither (a missing
    path, an unknown kind) counts as having them, so that `open_source` says what is wrong."""

    if isinstance(spec, LineSource):
        return True
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "ascii" / "lines.txt").is_file():
            return True
        path = next((path / n for n in ("manifest.tsv", "manifest.jsonl", "labels.tsv") if (path / n).is_file()),
                    None)
        if path is None:
            return True
    if path.name == "lines.txt" and path.parent.name == "ascii":
        return True
    return find_split_file(path) is not None if path.is_file() else True


def evaluate_cli(checkpoint, data, split, beam, batch_size, max_samples, out, decoding=None,
                 allow_outside=False, max_skipped=None, normalize=DEFAULT_NORMALIZE, split_by="page",
                 by_group=False, widen=None) -> int:
    """`split`: train / val / test (or another split the source names), `all` (every line), or None: `test`
    when the source has splits, else `all` (said in one line). Output is labelled with the split read.
    `by_group`: also score each group of lines (LineSample.group), printed worst first and written to
    OUT/groups.tsv and metrics.json. `widen`: the model's `widen_crowded` for this read (None: its own)."""

    model, image_cfg, meta = load_checkpoint(checkpoint, widen=widen)
    unsplit = split is None and not source_has_splits(data)
    if split is None:
        split = "all" if unsplit else "test"
    source = open_source(data, None if split == "all" else split,  # `all`: every line of the source
                         allow_outside=allow_outside, split_by=split_by)
    if unsplit:
        print(f"{data} has no splits: reading all {len(source)} lines", flush=True)
    problems = list(getattr(source, "problems", []))
    if max_samples is not None:
        source = list(source)[: max(0, int(max_samples))]
    if len(source) == 0:
        raise NoUsableDataError(str(data), f"split {split!r} has no usable lines"
                                + (f" ({len(problems)} row(s) dropped, e.g. {problems[0]})" if problems else ""))
    if out is not None:  # an unwritable or full --out fails now, not after the decode
        ensure_writable(out)
    result = evaluate_model(model, source, image_cfg, beam=beam, batch_size=batch_size,
                            desc=f"decode {split}", decoding=decoding, normalize=normalize)
    dropped = drop_reasons(problems)
    if result["skipped"]:
        dropped["unreadable image"] = result["skipped"]
    rows = result["n"] + sum(dropped.values())
    if dropped:  # every row that was not scored, by reason: a result must say what it left out
        why = format_drops(dropped)
        example = (problems or result["skip_messages"] or ["?"])[0]
        print(f"{data}: dropped {sum(dropped.values())} of {rows} rows ({why}), e.g. {example}", file=sys.stderr,
              flush=True)
        if max_skipped is not None and sum(dropped.values()) / rows > float(max_skipped):
            raise NoUsableDataError(str(data), f"{sum(dropped.values())} of {rows} rows dropped, more than "
                                    f"--max-skipped {float(max_skipped):g} allows ({why})")
    label = split if split in ("val", "test", "train", "all") else "test"
    epoch = int(meta.get("epoch", 0) or 0)
    print_seed_metrics(label, epoch, result["cer"], result["wer"])
    how = result["decoding"]
    print(f"{result['n']} lines, {result['lines_per_s']:.1f} lines/s ({how})", flush=True)
    groups = group_scores(result["groups"], result["refs"], result["hyps"], normalize) if by_group else None
    if groups is not None:
        print_groups(groups)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_predictions(out / "predictions.tsv", result)
        write_json(out / "metrics.json", {
            "checkpoint": str(checkpoint), "data": str(data), "split": split, "beam": beam, "decoding": how,
            "epoch": epoch, **summary(result), "reading": result["reading"], "rows": rows, "dropped": dropped,
            f"{label}_cer": result["cer"], f"{label}_wer": result["wer"],
            **({"groups": groups} if groups is not None else {}),
        })
        if groups is not None:
            write_groups(out / "groups.tsv", groups)
        print(f"wrote {out / 'predictions.tsv'} and {out / 'metrics.json'}"
              + (f" and {out / 'groups.tsv'}" if groups is not None else ""), flush=True)
    print_worst(result)
    return 0


def evaluate_baseline(model, source, image_cfg: ImageConfig, tokenizer, batch_size: int = 32,
                      max_new_tokens: int = 160, progress: bool = False, desc: str = "decode") -> dict:
    """Decode every line of `source` -> dict(cer, wer, n, skipped, seconds, lines_per_s, ids, refs, hyps).
    Timed like `evaluate_model`: loading + preprocessing + decoding, from the first batch to the last."""

    loader = make_loader(source, image_cfg, tokenizer, batch_size=batch_size, shuffle=False)
    ids, refs, hyps = [], [], []
    t0 = time.perf_counter()
    bar = tqdm(total=len(source), desc=desc, unit="line", disable=not progress, leave=False)
    for batch in loader:
        if batch is None:
            continue
        hyps.extend(decode_batch(model, batch, tokenizer, max_new_tokens))
        refs.extend(batch.texts)
        ids.extend(batch.ids)
        bar.update(len(batch))
    bar.close()
    dt = time.perf_counter() - t0
    return {"cer": corpus_cer(refs, hyps) if refs else float("nan"), "wer": corpus_wer(refs, hyps) if refs else float("nan"),
            "n": len(refs), "skipped": int(loader.dataset.skipped), "seconds": dt,
            "lines_per_s": len(refs) / dt if dt > 0 else 0.0, "ids": ids, "refs": refs, "hyps": hyps}
