"""`bridgeocr demo` (what `make demo` runs): the seed's study end to end on built-in data, in a time budget.

1. synthesise lines from the built-in corpus (or --corpus),
2. take the shipped CTC-pretrained encoder and GPT LM (or, where a package has none, pretrain an LM here),
   and compute the frozen encoder's tokens of every line once (the feature cache, data/features.py),
3. train the seed's three settings -- `linear_gelu_ln`, `qformer`, `qformer` + KD -- and bridgeocr's
   `ctc_collapse` connector, each in an equal share of the budget,
4. evaluate them and write `report.md`: the seed's numbers, curves, and where the checkpoints are.

Rerunning the same command resumes: finished settings are kept, the dataset is reused.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bridgeocr.config import load_config
from bridgeocr.data.corpus import cut_lines, read_corpus
from bridgeocr.data.preprocess import make_loader
from bridgeocr.data.sources import open_source
from bridgeocr.data.synth import make_dataset
from bridgeocr.data.tokenizers import load_tokenizer
from bridgeocr.errors import BridgeOCRError
from bridgeocr.eval.evaluate import read_predictions
from bridgeocr.eval.metrics import group_scores
from bridgeocr.experiments.compare import compare
from bridgeocr.experiments.loss_gap import loss_gap_cli
from bridgeocr.experiments.sweep import run_status
from bridgeocr.models.encoder import load_encoder
from bridgeocr.models.encoder_reader import encoder_image_config
from bridgeocr.shipped import SHIPPED_DIR, resolve_pretrained
from bridgeocr.train.encoder_pretrain import ctc_evaluate
from bridgeocr.train.features import fill_for_config
from bridgeocr.train.lm import train_lm
from bridgeocr.train.resume import resume_point
from bridgeocr.train.run import read_metrics, train

# The seed's settings (its report, "Experiment: which connector layer is better"), each with the lever that
# makes it read in minutes on a CPU (docs/reading.md): the projection starts as the prefix the GPT learnt to
# read (connector.init=ctc), the Q-Former's queries each read their share of the line (connector.locality).
QFORMER = ["model.connector.kind=qformer", "model.connector.num_queries=64", "model.connector.layers=2",
           "model.connector.locality=0.02", "model.connector.init=ctc",
           "optim.lr_connector=2e-3", "optim.lr_decoder=6e-4"]  # a new prefix form: the GPT moves faster
SEED_SETTINGS: dict[str, list[str]] = {
    "linear_gelu_ln": ["model.connector.kind=linear_gelu_ln", "model.connector.init=ctc"],
    "qformer": QFORMER,
    "qformer_kd": QFORMER + ["loss.kd_alpha=0.1", "loss.kd_tau=1.0", "loss.kd_teacher=prefix"],
}

# bridgeocr's own bridges, trainable beside the seed's (`--settings`): the encoder's CTC reading written in
# the GPT's embedding space, one token per character (ctc_collapse) or per visual token (ctc_embed); they
# read with joint CTC / GPT beam search (models/joint_decoding.py), the seed's settings with the GPT alone.
BRIDGE_SETTINGS: dict[str, list[str]] = {
    "ctc_collapse": ["model.connector.kind=ctc_collapse", "model.ctc_head=true", "model.decoding=joint"],
    "ctc_embed": ["model.connector.kind=ctc_embed", "model.ctc_head=true", "model.decoding=joint"],
}
ALL_SETTINGS = {**SEED_SETTINGS, **BRIDGE_SETTINGS}
DEFAULT_SETTINGS = [*SEED_SETTINGS, "ctc_collapse"]

# What every demo run shares: CPU-sized, parts from the shipped checkpoints, connector first then all.
DEMO_OVERRIDES = [
    "data.image.height=48", "data.image.max_width=2048",  # what the shipped PP-OCR encoder reads
    "model.encoder.freeze=true",  # the shipped encoder already reads: on a CPU, spend the budget on the bridge
    "optim.batch_size=16", "optim.max_steps=100000", "optim.warmup_steps=60",
    "optim.lr_encoder=1e-4", "optim.lr_connector=1e-3", "optim.lr_decoder=3e-4",
    "loss.ctc_weight=0.0", "train.val_every_steps=250", "train.log_every_steps=10",
    "data.max_val_samples=200",  # validations during training on 200 lines; the test split is read whole
]
LOSS_GAP_LINES = 200  # the loss diagnostic reads the encoder twice per line (pad, resize): 200 test lines
FREEZE_SCHEDULE = "optim.freeze_schedule=[{until_step: 100, train: [connector]}]"
# Joint CTC / GPT beam search read 19-23 demo lines/s on 2 CPU cores (GPT greedy ~60-70; measured 2026-11-26):
# a setting that decodes jointly leaves that time (with margin) for its test decoding out of its training
# minutes, so the budget holds.
JOINT_DECODE_LINES_PER_S = 12.0
# What follows the trainings: the encoder-only CTC reference on the test lines, the comparison and the report
# (~25 s on 2 cores, 2026-12-01). Each setting's loss diagnostic (~15 s) runs right after its training, in
# the shares; this is set aside from the start so that the whole demo ends within its minutes.
TAIL_MINUTES = 0.75


@dataclass
class DemoPlan:
    """Where everything goes and how the budget is shared (written to plan.json)."""

    out: Path
    minutes: float
    n: int
    corpus: list[str] | None
    encoder: str | None = None
    lm: str | None = None
    settings: list[str] = field(default_factory=lambda: list(DEFAULT_SETTINGS))
    log: list[str] = field(default_factory=list)


def default_lines(minutes: float) -> int:
    """Enough lines that a run sees few repeats at CPU speed (~15 lines/s), within the built-in corpus."""
    return int(min(4000, max(600, 200 * minutes)))


def _shipped(name: str) -> str | None:
    return f"shipped:{name}" if (SHIPPED_DIR / name / "config.json").is_file() else None


def _say(plan: DemoPlan, text: str) -> None:
    print(f"[demo] {text}", flush=True)
    plan.log.append(text)


def make_data(plan: DemoPlan) -> Path:
    data = plan.out / "data"
    settings = data / "settings.json"
    if settings.is_file():
        have = json.loads(settings.read_text())
        if have.get("n") == plan.n and have.get("seed") == 0:
            _say(plan, f"reusing {sum(have['counts'].values())} synthetic lines in {data}")
            return data
        raise BridgeOCRError(f"{data}: holds a dataset made with other settings; remove it or use --out")
    t0 = time.time()
    summary = make_dataset(corpus=plan.corpus, out=data, n=plan.n, seed=0, height=48)
    c = summary["counts"]
    unused = sum(f.get("used_for", "").startswith("none") for f in summary["fonts"])
    left_out = f" ({unused} benchmark-only fonts left out)" if unused else ""
    _say(plan, f"synthesised {sum(c.values())} lines (train {c['train']}, val {c['val']}, test {c['test']}) "
               f"with {len(summary['fonts']) - unused} fonts{left_out} in {time.time() - t0:.0f} s -> {data}")
    return data


def pretrain_lm_here(plan: DemoPlan, minutes: float) -> str:
    """No shipped LM: a small one from the corpus lines (what `bridgeocr lm train --line-mode` does)."""
    out = plan.out / "lm"
    if (out / "lm_card.json").is_file():
        _say(plan, f"reusing the LM in {out}")
        return str(out)
    docs = cut_lines(read_corpus(plan.corpus), random.Random(0))
    card = train_lm(docs=docs, val_docs=None, out=out, steps=100000, minutes=minutes, batch_size=32,
                    data_desc="demo corpus lines", command="bridgeocr demo")
    _say(plan, f"pretrained an LM here ({card['steps']} steps, val ppl {card['val_ppl']:.2f}) -> {out}")
    return str(out)


def run_overrides(plan: DemoPlan, name: str, minutes: float, data: Path, extra: list[str] | None = None) -> list[str]:
    parts = [f"model.encoder.pretrained={plan.encoder}" if plan.encoder else "model.ctc_head=true",
             f"model.decoder.pretrained={plan.lm}"]
    if not plan.encoder:  # no pretrained encoder: train it here, with CTC to make it read sooner
        parts += ["model.encoder.freeze=false", "loss.ctc_weight=0.3", "model.encoder.patch_height=48"]
    return (DEMO_OVERRIDES + [FREEZE_SCHEDULE] + parts + ALL_SETTINGS[name]
            + [f"data.source={data}", f"train.out_dir={plan.out / 'runs'}", f"train.name={name}",
               f"optim.max_minutes={minutes:.3f}"] + list(extra or []))


def run_demo(minutes: float = 20.0, out: str | Path = "runs/demo", corpus: list[str] | None = None,
             n: int | None = None, encoder: str | None = "shipped", lm: str | None = "shipped",
             extra_overrides: list[str] | None = None, settings: list[str] | None = None) -> dict:
    """The whole study; returns {setting: metrics}. `encoder`/`lm`: "shipped", a directory, or None.
    `settings`: names from ALL_SETTINGS (default DEFAULT_SETTINGS)."""
    t_start = time.time()
    _check_request(minutes, settings)
    plan = DemoPlan(out=Path(out), minutes=minutes, n=n or default_lines(minutes), corpus=corpus)
    if settings:
        plan.settings = list(dict.fromkeys(settings))
    plan.out.mkdir(parents=True, exist_ok=True)
    deadline = t_start + minutes * 60
    data = make_data(plan)
    _choose_models(plan, encoder, lm, deadline)

    results, todo = _finished_settings(plan)
    if todo:
        cache_encoder_tokens(plan, data, run_overrides(plan, todo[0], 1.0, data, extra_overrides))
    _train_settings(plan, todo, data, deadline, extra_overrides, results)
    for name in results:  # settings finished before (kept) that have no diagnostic yet
        _loss_gap(plan, data, name)

    reference = ctc_reference(plan, data) if plan.encoder else None
    report = write_report(plan, results, time.time() - t_start, reference)
    _say(plan, f"report: {report}")
    return results


def _check_request(minutes: float, settings: list[str] | None) -> None:
    """A budget and setting names the demo can run, before anything is written."""
    if minutes <= 0:
        raise BridgeOCRError(f"--minutes must be positive, got {minutes}")
    unknown = [name for name in settings or [] if name not in ALL_SETTINGS]
    if unknown:
        raise BridgeOCRError(f"--settings: unknown {', '.join(unknown)} (known: {', '.join(ALL_SETTINGS)})")


def _choose_models(plan: DemoPlan, encoder: str | None, lm: str | None, deadline: float) -> None:
    """The encoder and LM every setting starts from ("shipped": the package's, when it has them); without
    an LM one is pretrained here on a slice of the budget."""
    plan.encoder = _shipped("encoder_ctc") if encoder == "shipped" else encoder
    plan.lm = _shipped("gpt_lm") if lm == "shipped" else lm
    _say(plan, f"encoder: {plan.encoder or 'trained from scratch here (with a CTC loss)'}; "
               f"decoder: {plan.lm or 'an LM pretrained here'}")
    if not plan.lm:
        plan.lm = pretrain_lm_here(plan, minutes=max(0.5, 0.15 * (deadline - time.time()) / 60))


def _finished_settings(plan: DemoPlan) -> tuple[dict[str, dict], list[str]]:
    """A rerun keeps what is done -> (metrics of the settings already finished, those still to train)."""

    results: dict[str, dict] = {}
    todo = []
    for name in plan.settings:
        run_dir = plan.out / "runs" / name
        if run_status(run_dir) == "done":  # the sweep's notion of a finished run
            results[name] = read_metrics(run_dir)
            _say(plan, f"{name}: already finished (test CER {_fmt(results[name].get('test_cer'))}); kept")
        else:
            todo.append(name)
    return results, todo


def _train_settings(plan: DemoPlan, todo: list[str], data: Path, deadline: float,
                    extra_overrides: list[str] | None, results: dict[str, dict]) -> None:
    """Train each setting of `todo` (resuming a cut run) in an equal share of the time left, then its loss
    diagnostic; its test metrics go into `results`."""

    for i, name in enumerate(todo):
        # equal shares of what is left; ~15% of each share goes to validation, test decoding, saving and the
        # loss diagnostic (measured 2026-12-01: ~34 s of a 250 s share)
        share = (deadline - TAIL_MINUTES * 60 - time.time()) / 60 / (len(todo) - i)
        train_minutes = max(0.2, 0.85 * share - decode_minutes(name, data))
        _say(plan, f"{name}: training for {train_minutes:.1f} min")
        cfg = load_config(None, run_overrides(plan, name, train_minutes, data, extra_overrides))
        run_dir = plan.out / "runs" / name
        results[name] = train(cfg, resume=resume_point(run_dir / "last.ckpt") is not None)
        _loss_gap(plan, data, name)


def _loss_gap(plan: DemoPlan, data: Path, name: str) -> None:
    """The seed's loss diagnostic of a setting on the test lines, unless its run already has one."""

    run_dir = plan.out / "runs" / name
    if not (run_dir / "loss_gap.json").is_file():
        loss_gap_cli(checkpoint=run_dir / "best", data=str(data), split="test", out=str(run_dir),
                     max_samples=LOSS_GAP_LINES)


def cache_encoder_tokens(plan: DemoPlan, data: Path, overrides: list[str]) -> None:
    """The frozen encoder's tokens for every line the settings read, once, before the budget is shared."""

    cfg = load_config(None, overrides)
    t0 = time.time()
    store = fill_for_config(cfg, {"train": None, "val": cfg.data.max_val_samples, "test": None})
    if store is not None:
        _say(plan, f"the frozen encoder's tokens for {len(store)} lines: {time.time() - t0:.0f} s -> {store.dir}")


def decode_minutes(name: str, data: Path) -> float:
    """Test-decoding time to set aside for a setting beyond the usual share (joint decoding is slow)."""
    if "model.decoding=joint" not in ALL_SETTINGS[name]:
        return 0.0
    settings = data / "settings.json"
    n_test = json.loads(settings.read_text()).get("counts", {}).get("test", 0) if settings.is_file() else 0
    return n_test / JOINT_DECODE_LINES_PER_S / 60


def ctc_reference(plan: DemoPlan, data: Path) -> dict:
    """What the encoder alone reads on the same test lines (greedy CTC, no GPT): the bar for the bridges."""
    encoder, head = load_encoder(plan.encoder)
    image = encoder_image_config(encoder)  # the encoder's own line height (and PP-OCR's width settings)
    if head is None:
        return {}
    tokenizer = load_tokenizer(resolve_pretrained(plan.encoder) / "tokenizer.json")
    loader = make_loader(open_source(data, "test"), image, tokenizer, 32, shuffle=False)
    result = ctc_evaluate(encoder, head, loader, tokenizer, torch.device("cpu"))
    _say(plan, f"the encoder alone (greedy CTC) on the test lines: CER {result['cer']:.4f}, WER {result['wer']:.4f}")
    return result


def hardest_fonts(predictions: Path, data: Path, k: int = 8) -> list[str]:
    """Report lines: a setting's test CER by font, worst first, with each font's share of the errors (where
    the errors are: a few hard hands can hold most of them). [] without predictions or fonts."""
    if not predictions.is_file():
        return []
    rows = read_predictions(predictions)
    font = {sample.id: sample.group for sample in open_source(data, "test")}
    groups = group_scores([font.get(r["id"], "") for r in rows], [r["reference"] for r in rows],
                          [r["hypothesis"] for r in rows])
    if len(groups) < 2:
        return []
    edits = {g["group"]: g["cer"] * g["chars"] for g in groups}
    total = sum(edits.values()) or 1.0
    lines = ["| font | lines | CER | share of the errors |", "|---|---:|---:|---:|"]
    lines += [f"| {g['group'] or '(none)'} | {g['lines']} | {g['cer']:.4f} | {edits[g['group']] / total:.0%} |"
              for g in groups[:k]]
    rest = groups[k:]
    if rest:
        chars, rest_edits = sum(g["chars"] for g in rest), sum(edits[g["group"]] for g in rest)
        lines.append(f"| the other {len(rest)} fonts | {sum(g['lines'] for g in rest)} | "
                     f"{rest_edits / max(chars, 1):.4f} | {rest_edits / total:.0%} |")
    return lines


def _fmt(value, spec=".4f") -> str:
    return "–" if value is None else format(value, spec)


def write_report(plan: DemoPlan, results: dict[str, dict], seconds: float, reference: dict | None = None) -> Path:
    """report.md: the seed's result lines per setting, one table, curves and where the checkpoints are."""

    runs = [plan.out / "runs" / name for name in results]
    figures = compare(runs, plan.out / "compare")
    best = min(results, key=lambda k: results[k].get("test_cer") if results[k].get("test_cer") is not None
               else float("inf"))
    lines = [
        "# bridgeocr demo report", "",
        f"The seed's connector study on {plan.n} synthetic lines (`{plan.out / 'data'}`), "
        f"{plan.minutes:g}-minute budget, {seconds / 60:.1f} minutes used.",
        f"Encoder: `{plan.encoder}`; decoder and KD teacher: `{plan.lm}`.", "",
        "## Results in the seed's form", "",
        "Val CER: greedy GPT decoding of 200 val lines during training (it picks the checkpoint); test CER: "
        "every test line, read the way the setting's model reads (`test decoding` in the table below).", "",
    ]
    for name, m in results.items():
        epoch = m.get("best_epoch", 0) or 0
        lines += [f"### {name}", "```",
                  f"[val] CER at epoch {epoch}: {_fmt(m.get('val_cer'))}",
                  f"[val] WER at epoch {epoch}: {_fmt(m.get('val_wer'))}",
                  f"[test] CER at epoch {epoch}: {_fmt(m.get('test_cer'))}",
                  f"[test] WER at epoch {epoch}: {_fmt(m.get('test_wer'))}", "```", ""]
    lines += ["## All settings", "", (plan.out / "compare" / "compare.md").read_text(), "",
              f"Best setting: **{best}** (test CER {_fmt(results[best].get('test_cer'))}).", ""]
    if reference:
        lines += [f"For scale, the encoder alone (its CTC head, no GPT) reads the same test lines at CER "
                  f"{_fmt(reference.get('cer'))}, WER {_fmt(reference.get('wer'))}.", ""]
    fonts = hardest_fonts(plan.out / "runs" / best / "predictions_test.tsv", plan.out / "data")
    if fonts:
        lines += [f"## Where {best} errs: test CER by font", "",
                  "The fonts it reads worst first (`bridgeocr evaluate --by-group` gives the same for any model).",
                  ""] + fonts + [""]
    for png, title in (("curves.png", "Training loss and validation CER"),
                       ("frontier.png", "Test CER against decode speed")):
        if any(Path(f).name == png for f in figures["files"]):
            lines += [f"## {title}", "", f"![{title}](compare/{png})", ""]
    lines += ["## Checkpoints", ""]
    for name in results:
        run = plan.out / "runs" / name
        lines.append(f"- {name}: `{run / 'best'}` (best by val CER), `{run / 'last'}`; "
                     f"predictions: `{run / 'predictions_test.tsv'}`")
    lines += ["", "Transcribe with the best one:", "```",
              f"bridgeocr recognize LINE.png --checkpoint {plan.out / 'runs' / best / 'best'}", "```", "",
              "## Log", ""] + [f"- {entry}" for entry in plan.log] + [""]
    report = plan.out / "report.md"
    report.write_text("\n".join(lines))
    (plan.out / "plan.json").write_text(json.dumps(
        {"minutes": plan.minutes, "n": plan.n, "encoder": plan.encoder, "lm": plan.lm, "settings": plan.settings,
         "seconds": round(seconds, 1), "best": best}, indent=2))
    return report


def demo_cli(minutes, out, corpus, n, settings=None) -> int:
    run_demo(minutes=minutes, out=out, corpus=corpus, n=n, settings=settings)
    return 0
