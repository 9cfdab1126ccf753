"""CER / WER (corpus-level, case-sensitive, via jiwer) and the seed report's metric lines."""

from __future__ import annotations

from collections.abc import Sequence

import jiwer

__all__ = ["cer", "wer", "line_cer", "line_cers", "format_seed_metrics", "print_seed_metrics"]


def _check(refs: Sequence[str], hyps: Sequence[str]) -> tuple[list[str], list[str]]:
    refs, hyps = [str(r) for r in refs], [str(h) for h in hyps]
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    return refs, hyps


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


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate over the whole corpus (edits summed over lines / reference characters)."""
    refs, hyps = _check(refs, hyps)
    return _rate(refs, hyps, jiwer.process_characters)


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate over the whole corpus (whitespace-split words, case-sensitive)."""
    refs, hyps = _check(refs, hyps)
    return _rate(refs, hyps, jiwer.process_words)


def line_cer(ref: str, hyp: str) -> float:
    """CER of one line (an empty reference gives 0 for an empty hypothesis, else 1)."""
    return cer([ref], [hyp])


def line_cers(refs: Sequence[str], hyps: Sequence[str]) -> list[float]:
    refs, hyps = _check(refs, hyps)
    return [line_cer(r, h) for r, h in zip(refs, hyps)]


def format_seed_metrics(split: str, epoch: int, cer: float, wer: float) -> str:  # noqa: F811
    """The seed report's two lines, e.g. `[val] CER at epoch 0: 0.0333` / `[val] WER at epoch 0: 0.1194`."""
    return (f"[{split}] CER at epoch {int(epoch)}: {float(cer):.4f}\n"
            f"[{split}] WER at epoch {int(epoch)}: {float(wer):.4f}")


def print_seed_metrics(split: str, epoch: int, cer: float, wer: float) -> None:  # noqa: F811
    print(format_seed_metrics(split, epoch, cer, wer), flush=True)
