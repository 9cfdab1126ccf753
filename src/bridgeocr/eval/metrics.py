"""CER / WER (corpus-level, case-sensitive, via jiwer) and the seed report's metric lines.

Before scoring, references and hypotheses are Unicode-normalised, here and nowhere else: `normalize` is
`nfc` (the default: a precomposed `é` and `e` + combining acute are the same character), `nfkc` (also folds
compatibility forms: ligatures `ﬁ` -> `fi`, full-width letters, superscripts) or `none` (code points as
given). Then jiwer's default transforms apply: CER strips each line's leading and trailing whitespace and
counts every remaining code point, spaces included (case, punctuation and inner runs of spaces all count);
WER also collapses runs of whitespace to one space and splits words on spaces.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import jiwer

__all__ = ["cer", "wer", "line_cer", "line_cers", "group_scores", "normalize_text", "NORMALIZE_FORMS", "DEFAULT_NORMALIZE",
           "format_seed_metrics", "print_seed_metrics"]

NORMALIZE_FORMS = ("nfc", "nfkc", "none")
DEFAULT_NORMALIZE = "nfc"


def normalize_text(text: str, normalize: str = DEFAULT_NORMALIZE) -> str:
    """`text` in Unicode normal form `normalize` (nfc | nfkc | none)."""
    form = (normalize or "none").lower()
    if form == "none":
        return text
    if form not in NORMALIZE_FORMS:
        raise ValueError(f"normalize: expected one of {', '.join(NORMALIZE_FORMS)}, got {normalize!r}")
    return unicodedata.normalize(form.upper(), text)


def _check(refs: Sequence[str], hyps: Sequence[str], normalize: str = DEFAULT_NORMALIZE) -> tuple[list[str], list[str]]:
    refs, hyps = [str(r) for r in refs], [str(h) for h in hyps]
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    return [normalize_text(r, normalize) for r in refs], [normalize_text(h, normalize) for h in hyps]


def _rate(refs: list[str], hyps: list[str], process) -> float:
    """Total edits / total reference units, summed over lines (corpus level).

    jiwer drops empty references from its denominator; a corpus whose references are all empty has
    rate 0 if every hypothesis is empty too, else 1.0 (as jiwer itself reports).
    """
    if not refs:
        return 0.0
    out = process(refs, hyps)
    errors = out.substitutions + out.deletions + out.insertions
    total = out.substitutions + out.deletions + out.hits
    if total == 0:
        return 0.0 if errors == 0 else 1.0
    return float(errors) / float(total)


def cer(refs: Sequence[str], hyps: Sequence[str], normalize: str = DEFAULT_NORMALIZE) -> float:
    """Character error rate over the whole corpus (edits summed over lines / reference characters)."""
    refs, hyps = _check(refs, hyps, normalize)
    return _rate(refs, hyps, jiwer.process_characters)


def wer(refs: Sequence[str], hyps: Sequence[str], normalize: str = DEFAULT_NORMALIZE) -> float:
    """Word error rate over the whole corpus (whitespace-split words, case-sensitive)."""
    refs, hyps = _check(refs, hyps, normalize)
    return _rate(refs, hyps, jiwer.process_words)


def line_cer(ref: str, hyp: str, normalize: str = DEFAULT_NORMALIZE) -> float:
    """CER of one line (an empty reference gives 0 for an empty hypothesis, else 1)."""
    return cer([ref], [hyp], normalize)


def line_cers(refs: Sequence[str], hyps: Sequence[str], normalize: str = DEFAULT_NORMALIZE) -> list[float]:
    refs, hyps = _check(refs, hyps, normalize)
    return [line_cer(r, h, "none") for r, h in zip(refs, hyps)]  # normalised once, above


def group_scores(groups: Sequence[str], refs: Sequence[str], hyps: Sequence[str],
                 normalize: str = DEFAULT_NORMALIZE) -> list[dict]:
    """CER / WER of each group's lines (corpus level within the group), worst CER first: dicts group, lines,
    chars (reference characters after normalisation), cer, wer. Lines without a group form the group ''."""
    if not len(groups) == len(refs) == len(hyps):
        raise ValueError(f"{len(groups)} groups for {len(refs)} references and {len(hyps)} hypotheses")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(str(g), []).append(i)
    rows = []
    for g, idx in members.items():
        r, h = [refs[i] for i in idx], [hyps[i] for i in idx]
        chars = sum(len(normalize_text(x, normalize).strip()) for x in r)
        rows.append({"group": g, "lines": len(idx), "chars": chars, "cer": cer(r, h, normalize),
                     "wer": wer(r, h, normalize)})
    return sorted(rows, key=lambda row: (-row["cer"], row["group"]))


def format_seed_metrics(split: str, epoch: int, cer: float, wer: float) -> str:  # noqa: F811
    """The seed report's two lines, e.g. `[val] CER at epoch 0: 0.0333` / `[val] WER at epoch 0: 0.1194`."""
    return (f"[{split}] CER at epoch {int(epoch)}: {float(cer):.4f}\n"
            f"[{split}] WER at epoch {int(epoch)}: {float(wer):.4f}")


def print_seed_metrics(split: str, epoch: int, cer: float, wer: float) -> None:  # noqa: F811
    print(format_seed_metrics(split, epoch, cer, wer), flush=True)
