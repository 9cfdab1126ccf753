"""Command line: argument parsing only. Each command calls one function, imported lazily."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from bridgeocr import __version__
from bridgeocr.errors import BridgeOCRError


def _number(kind, test, requirement):
    """An argparse `type=`: a bad value is argparse's usual one-line error (exit 2) at parse time."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not (value == value and abs(value) != float("inf") and test(value)):  # NaN, inf refused too
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value
    parse.__name__ = f"{kind.__name__} {requirement}"
    return parse


positive_int = _number(int, lambda v: v >= 1, ">= 1")
positive_float = _number(float, lambda v: v > 0, "> 0")
nonneg_float = _number(float, lambda v: v >= 0, ">= 0")


def _call(target: str, **kwargs):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(**kwargs)


def add_split_by(p) -> None:
    p.add_argument("--split-by", choices=["page", "document"], default="page",
                   help="PAGE / ALTO pages without a split file: split by a hash of the page's name (default) or "
                   "of its document's, so that lines of one page (document) never cross splits")


def add_decoding_args(p) -> None:
    """--beam and the decoding switches of `evaluate` and `recognize` (default: the model's config)."""
    p.add_argument("--beam", type=positive_int, default=None,
                   help="beam width (default: 1 for --gpt, model.joint_beam (4) for --joint)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--gpt", dest="decoding", action="store_const", const="gpt", default=None,
                     help="decode with the GPT (greedy, or beam search with --beam)")
    how.add_argument("--ctc", dest="decoding", action="store_const", const="ctc",
                     help="decode with the encoder's CTC head (fast, no language model)")
    how.add_argument("--joint", dest="decoding", action="store_const", const="joint",
                     help="beam search scored by the CTC head and the GPT together (model.joint_ctc_weight), on "
                          "the lines where the GPT does not accept the CTC head's reading whole (draft first; "
                          "--full-search: on every line); the most accurate")
    how.add_argument("--full-search", dest="decoding", action="store_const", const="full",
                     help="joint decoding with the beam search on every line (model.joint_draft=false). By default "
                          "a line whose CTC reading the GPT's check accepts whole keeps it and only the others are "
                          "searched: on print and typewriting 1.3-1.6x the lines/s at batch 32 and 2x at batch 1, at "
                          "the same CER (docs/benchmarks.md, \"Draft first\")")
    how.add_argument("--fast", dest="decoding", action="store_const", const="fast",
                     help="the speed preset: joint decoding at beam 1, the CTC head's reading checked by the GPT in "
                          "one parallel pass (1.1-1.3x the lines/s of --joint at batch 32, up to 1.6x at batch 1, at "
                          "+0-5 %% CER: docs/benchmarks.md, \"Draft first\"); a model without a CTC head reads with "
                          "the GPT, greedy")
    p.add_argument("--widen", type=nonneg_float, default=None, metavar="DENSITY",
                   help="read a line again, stretched wider, when its first CTC reading emits more than DENSITY "
                   "letters per frame (a narrow hand or condensed face has fewer frames than letters); 0: read "
                   "every line once. Default: the model's model.widen_crowded (docs/reading.md section 7)")


def _add_data(sub):
    data = sub.add_parser("data", help="make, check and look at line datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="{synth,check,preview,cache-features}")

    p = dsub.add_parser("synth", help="render synthetic text lines from a corpus with many fonts",
                        description="Render lines cut from a text corpus with varied fonts, sizes, ink, "
                        "paper, noise, blur and distortion. Writes images, manifest.tsv, split.tsv and "
                        "settings.json. The same seed gives the same dataset.")
    p.add_argument("--corpus", nargs="+", default=None, metavar="FILE",
                   help="text files (documents split by <|endoftext|>); default: the built-in corpus")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n", type=positive_int, default=2000, help="number of lines in all splits (default 2000)")
    p.add_argument("--fonts", nargs="+", default=None, metavar="FONT",
                   help="font files or directories (default: installed fonts, else matplotlib's DejaVu)")
    p.add_argument("--style", choices=["all", "printed", "handwriting"], default="all",
                   help="which kind of installed fonts to use (default all)")
    p.add_argument("--holdout-fonts", nargs="*", default=None, metavar="NAME",
                   help="font names (substrings) used only for val/test; default: none held out. Benchmark-only "
                   "fonts (fonts-bwht, -kaushanscript, -ecolier-court, -rufscript, -leckerli-one, -lobster) are "
                   "never used for train and for val/test only when named here; fractions may sum to 1 for a "
                   "set with no train lines")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--height", type=int, default=48, help="rendered line height in px (default 48)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(target="bridgeocr.data.synth:make_dataset_cli",
                   keys=["corpus", "out", "n", "fonts", "style", "holdout_fonts", "val_fraction",
                         "test_fraction", "height", "seed"])

    for name, helptext in (("check", "count lines and report every problem (exit 1 if any)"),
                           ("preview", "draw a grid of samples with their transcriptions")):
        p = dsub.add_parser(name, help=helptext)
        p.add_argument("source", help="IAM root, manifest (.tsv/.jsonl), synth directory, or PAGE / ALTO pages "
                       "(a folder of .xml + images, a list of .xml files, one .xml)")
        p.add_argument("--split", default=None, help="train/val/test or a split list (default: all lines)")
        p.add_argument("--split-file", default=None, help="manifest split file (default: found beside it)")
        p.add_argument("--iam-split-dir", default=None, help="IAM: folder with the split lists")
        p.add_argument("--allow-outside", action="store_true",
                       help="accept manifest image paths outside the manifest's folder (else problems)")
        add_split_by(p)
        keys = ["source", "split", "split_file", "iam_split_dir", "allow_outside", "split_by"]
        if name == "preview":
            p.add_argument("--out", required=True, help="PNG file to write")
            p.add_argument("--n", type=positive_int, default=24, help="number of samples (default 24)")
            p.add_argument("--seed", type=int, default=0)
            keys += ["out", "n", "seed"]
        p.set_defaults(target=f"bridgeocr.data.{name}:{name}_source_cli", keys=keys)

    p = dsub.add_parser("cache-features", help="compute a frozen encoder's tokens for every line once, ahead of "
                        "training", description="Fill the feature cache a `bridgeocr train` run with the same "
                        "config reads (a frozen encoder's tokens per line, keyed by the encoder's weights, the "
                        "image settings and the image; train fills it too, this does it ahead, e.g. once for a "
                        "whole sweep). Stale entries are never read: another encoder or other image settings "
                        "get another store.")
    p.add_argument("--config", default=None, help="YAML experiment config (its encoder, data and image settings)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.source=runs/data/synth")
    p.add_argument("--encoder", default=None, help="the frozen encoder (default: model.encoder.pretrained)")
    p.add_argument("--data", default=None, help="the line source (default: data.source)")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="default: train val test")
    p.add_argument("--cache-dir", default=None,
                   help="default: data.feature_cache (auto: TRAIN_OUT_DIR/.feature_cache)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.set_defaults(target="bridgeocr.train.features:cache_features_cli",
                   keys=["config", "overrides", "splits", "cache_dir", "encoder", "data", "batch_size"])


def _add_lm(sub):
    lm = sub.add_parser("lm", help="pretrain the GPT decoder as a language model")
    lsub = lm.add_subparsers(dest="lm_command", required=True, metavar="{train}")
    p = lsub.add_parser("train", help="train a tokenizer and a small GPT LM on text; saves an HF directory")
    p.add_argument("--corpus", nargs="+", default=None, metavar="FILE",
                   help="training text files (default: the built-in corpus)")
    p.add_argument("--val-corpus", nargs="+", default=None, metavar="FILE",
                   help="validation text (default: the last 5%% of the corpus)")
    p.add_argument("--out", required=True, help="output directory (HF GPT-2 format + tokenizer)")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="char")
    p.add_argument("--vocab-size", type=positive_int, default=4000, help="BPE vocabulary size")
    p.add_argument("--n-layer", type=positive_int, default=3)
    p.add_argument("--n-embd", type=positive_int, default=192)
    p.add_argument("--n-head", type=positive_int, default=3)
    p.add_argument("--context", type=positive_int, default=128, help="training context length in tokens")
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--minutes", type=positive_float, default=None, help="stop after this wall-clock time")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last if present")
    p.add_argument("--overwrite", action="store_true", help="replace the LM already in OUT (else refused)")
    p.add_argument("--line-mode", action="store_true",
                   help="train on text lines (15-80 characters, each BOS line EOS) as the OCR decoder reads "
                   "them, instead of running documents")
    p.add_argument("--prefix-read", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of steps that teach the GPT to read: it writes a line while its prefix holds "
                   "a noisy copy of the line's embeddings, stretched or collapsed as a connector gives it (the "
                   "skill the OCR decoder needs; sets prefix positions; docs/reading.md). 0 = plain LM")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="start from this LM (its tokenizer and weights), e.g. shipped:gpt_lm")
    add_trainer_args(p)
    p.set_defaults(target="bridgeocr.train.lm:train_lm_cli",
                   keys=["corpus", "val_corpus", "out", "tokenizer", "vocab_size", "n_layer", "n_embd",
                         "n_head", "context", "steps", "minutes", "batch_size", "lr", "seed", "resume",
                         "line_mode", "prefix_read", "init", "overwrite", *TRAINER_KEYS])


TRAINER_KEYS = ["devices", "num_nodes", "strategy", "precision", "accelerator"]


def add_trainer_args(p, config: bool = False) -> None:
    """The Lightning trainer's flags of `lm train` and `encoder train` (train/engine.py)."""
    # lazy: `bridgeocr --help` stays fast without omegaconf
    from bridgeocr.config import PRECISIONS

    def default(key: str, value: str) -> str:
        return f" (default: the config's train.{key})" if config else (f" (default {value})" if value else "")

    p.add_argument("--devices", default=None,
                   help="devices per node (Lightning), e.g. 1, 2 or auto" + default("devices", "1"))
    p.add_argument("--num-nodes", type=positive_int, default=None,
                   help="machines (Lightning)" + default("num_nodes", "1"))
    p.add_argument("--strategy", default=None, help="Lightning strategy, e.g. ddp" + default("strategy", "auto"))
    p.add_argument("--precision", choices=PRECISIONS, default=None, metavar="PRECISION",
                   help=f"{' | '.join(PRECISIONS[:10])}; auto: bf16-mixed on a GPU that has it, 32-true on the CPU"
                   + default("precision", "auto"))
    p.add_argument("--accelerator", default=None, help="auto | cpu | gpu" + default("accelerator", "auto"))


def _add_encoder(sub):
    enc = sub.add_parser("encoder", help="pretrain the line encoder with CTC")
    esub = enc.add_subparsers(dest="encoder_command", required=True, metavar="{train,import}")
    p = esub.add_parser("import", help="an encoder from PP-OCR's ONNX recogniser, reading before any training",
                        description="Read PP-OCR's text-line recogniser (default: PP-OCRv6_rec_small from the "
                        "installed rapidocr wheel) into a trainable bridgeocr encoder; its CTC classifier is "
                        "mapped onto the tokenizer's characters. The directory reads at once "
                        "(`recognize --checkpoint OUT --ctc`, `evaluate --checkpoint OUT`) and is what "
                        "`encoder train --init OUT` fine-tunes. Needs the `onnx` package; nothing is downloaded.")
    p.add_argument("--onnx", default=None, metavar="FILE",
                   help="the .onnx recogniser (default: rapidocr's PP-OCRv6_rec_small.onnx)")
    p.add_argument("--tokenizer", default="shipped:gpt_lm", metavar="PATH",
                   help="tokenizer whose characters the CTC head covers (default: the shipped GPT's)")
    p.add_argument("--out", required=True, help="output encoder directory")
    p.set_defaults(target="bridgeocr.train.encoder_pretrain:import_ppocr_cli", keys=["onnx", "tokenizer", "out"])

    p = esub.add_parser("train", help="train the line encoder + CTC head; reports val CER of CTC decoding")
    p.add_argument("--data", nargs="+", required=True, metavar="SOURCE", help="line sources (train split used)")
    p.add_argument("--val-data", default=None, metavar="SOURCE", help="validation source (default: first --data)")
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=None, help="YAML with model.encoder / data.image settings")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--steps", type=positive_int, default=3000)
    p.add_argument("--minutes", type=positive_float, default=None)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last if present")
    p.add_argument("--overwrite", action="store_true", help="replace the encoder already in OUT (else refused)")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="start from this encoder directory (e.g. one `encoder import` wrote, or "
                   "shipped:encoder_ctc), its CTC head and image settings included; `ppocr` imports PP-OCR")
    p.add_argument("--augment", choices=["none", "print", "handwriting"], default="none",
                   help="augment training lines as real scans look (blur, noise, contrast, JPEG, rotation/shear; "
                   "handwriting adds ink width and elastic distortion); synthetic lines get it too")
    p.add_argument("--teacher", default=None, metavar="DIR",
                   help="an encoder directory with a CTC head (same height and vocabulary) whose frame posteriors "
                   "the trained encoder also learns: KL(teacher || student) per frame beside the CTC loss. For "
                   "re-training a restructured encoder (scripts/read_at_height.py --halve-columns-at) from the one "
                   "it came from")
    p.add_argument("--distill-weight", type=positive_float, default=1.0,
                   help="weight of the teacher's KL beside the CTC loss (default 1)")
    add_trainer_args(p, config=True)
    p.set_defaults(target="bridgeocr.train.encoder_pretrain:train_encoder_cli",
                   keys=["data", "val_data", "out", "config", "overrides", "steps", "minutes",
                         "batch_size", "lr", "seed", "resume", "init", "augment", "overwrite", *TRAINER_KEYS,
                         "teacher", "distill_weight"])


def _add_train_eval(sub):
    p = sub.add_parser("train", help="train an OCR model from a YAML config",
                       description="Train encoder -> connector -> GPT with CE (+ KD, + CTC). "
                       "Checkpoints: OUT/NAME/best (by val CER) and OUT/NAME/last.")
    p.add_argument("--config", required=True, help="YAML experiment config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.max_steps=100")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in OUT/NAME (without it, or --resume, an existing run is refused)")
    p.add_argument("--devices", default=None, help="devices per node (Lightning), e.g. 1, 2 or auto")
    p.add_argument("--num-nodes", type=positive_int, default=None)
    p.set_defaults(target="bridgeocr.train.run:train_cli",
                   keys=["config", "overrides", "resume", "devices", "num_nodes", "overwrite"])

    p = sub.add_parser("evaluate", help="CER/WER and a predictions file for a checkpoint on a source")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, metavar="SOURCE")
    p.add_argument("--split", default=None,
                   help="train/val/test, all (every line) or another split of the source (default: test when "
                   "the source has splits, else all)")
    add_decoding_args(p)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-samples", type=positive_int, default=None)
    p.add_argument("--normalize", choices=["nfc", "nfkc", "none"], default="nfc",
                   help="Unicode normal form of references and hypotheses before CER/WER (default nfc)")
    p.add_argument("--out", default=None, help="directory for predictions.tsv and metrics.json")
    p.add_argument("--allow-outside", action="store_true",
                   help="accept manifest image paths outside the manifest's folder (else refused)")
    p.add_argument("--max-skipped", type=nonneg_float, default=None, metavar="FRACTION",
                   help="fail (exit 1) when more than this share of the rows is dropped (missing or unreadable "
                   "images, bad rows); every dropped row is counted by reason either way")
    add_split_by(p)
    p.add_argument("--by-group", action="store_true",
                   help="also score each group of lines: a synthetic line's font and a Hooker line's letter (the "
                   "split file's third column), an IAM line's writer (ascii/forms.txt), a PAGE / ALTO line's page; "
                   "a table worst first, and groups.tsv in --out")
    p.set_defaults(target="bridgeocr.eval.evaluate:evaluate_cli",
                   keys=["checkpoint", "data", "split", "beam", "batch_size", "max_samples", "out", "decoding",
                         "allow_outside", "max_skipped", "normalize", "split_by", "by_group", "widen"])

    p = sub.add_parser("recognize", help="transcribe line images (files, folders, globs), or the lines of pages "
                       "with their PAGE / ALTO layout (--layout)",
                       description="Line images in, one result line each out (text, tsv, jsonl). With --layout "
                       "and --format page|alto: page images in, with their PAGE XML / ALTO file or folder, and "
                       "the same PAGE / ALTO out with each TextLine's transcription and confidence (PAGE: a "
                       "TextEquiv index 0 with conf; ALTO: one String per word with WC, SP between, word boxes "
                       "shared out over the line's box by length), every other element kept as it was.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--checkpoint", default=None, help="model directory (default: the shipped model)")
    add_decoding_args(p)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--format", choices=["text", "tsv", "jsonl", "page", "alto"], default=None,
                   help="text, tsv or jsonl (default text); page or alto with --layout (default: the layout's "
                   "own kind)")
    p.add_argument("--layout", default=None, metavar="XML_OR_DIR",
                   help="the pages' PAGE / ALTO file, or a folder of them matched with the input images by stem "
                   "(else by the image file the XML names)")
    p.add_argument("--recursive", action="store_true",
                   help="also read the images in the subfolders of a folder input (sorted by path)")
    p.add_argument("--out", default=None, metavar="FILE_OR_DIR",
                   help="write the results to FILE (replaced) instead of stdout; either way each line is "
                   "written and flushed as its batch finishes. With --layout: a folder, each page's XML "
                   "under its own name (default: beside the input as NAME.bridgeocr.xml)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --layout: the result may replace the input XML (without --out: in place)")
    p.set_defaults(target="bridgeocr.api:recognize_cli",
                   keys=["inputs", "checkpoint", "beam", "batch_size", "format", "decoding", "recursive",
                         "out", "layout", "overwrite", "widen"])

    p = sub.add_parser("loss-gap", help="reference vs connector vs downsampled loss (the seed's diagnostic)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, metavar="SOURCE")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-samples", type=positive_int, default=None)
    p.add_argument("--out", default=None, help="directory for loss_gap.json and per-sample CSV")
    p.add_argument("--reference", choices=["lm", "prefix", "both"], default="both",
                   help="how the decoder reads the true text for Reference and KL's Q: lm (plain LM, the "
                        "seed's), prefix (the text's embeddings in place of the visual tokens), both")
    p.add_argument("--allow-outside", action="store_true",
                   help="accept manifest image paths outside the manifest's folder (else refused)")
    add_split_by(p)
    p.set_defaults(target="bridgeocr.experiments.loss_gap:loss_gap_cli",
                   keys=["checkpoint", "data", "split", "batch_size", "max_samples", "out", "reference",
                         "allow_outside", "split_by"])

    p = sub.add_parser("compare", help="one table (Markdown + CSV) and plots from finished runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output directory (default: common parent/compare)")
    p.set_defaults(target="bridgeocr.experiments.compare:compare_cli", keys=["runs", "out"])

    p = sub.add_parser("sweep", help="run a grid of configs, resumable, then compare")
    p.add_argument("--config", required=True)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a grid axis; repeat for more axes")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides for every cell")
    p.add_argument("--out", default=None, help="sweep directory (default: runs/sweep/<config name>)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    p.set_defaults(target="bridgeocr.experiments.sweep:sweep_cli",
                   keys=["config", "grid", "overrides", "out", "dry_run"])

    p = sub.add_parser("bench", help="connector speed benchmark (params, tokens, step time, decode lines/s)")
    p.add_argument("--quick", action="store_true", help="a smaller run (< 2 minutes on 2 CPU cores)")
    p.add_argument("--widths", type=int, nargs="+", default=None, help="line widths in px (default 512 1024)")
    p.add_argument("--sizes", nargs="+", choices=["default", "seed"], default=None,
                   help="default config and/or a seed-sized decoder (3 GPT-2-small blocks)")
    p.add_argument("--connectors", nargs="+", default=None, help="a subset of the connectors (+ encdec)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per cell (median; default 3)")
    p.add_argument("--height", type=int, default=None, help="line height (default 32)")
    p.add_argument("--vocab-size", type=positive_int, default=None, help="decoder vocabulary (default 100)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", default="runs/bench", help="directory for bench.json and bench.md")
    p.set_defaults(target="bridgeocr.experiments.bench:bench_cli",
                   keys=["quick", "widths", "sizes", "connectors", "repeats", "height", "vocab_size", "device",
                         "out"])

    p = sub.add_parser("demo", help="the whole study end to end on built-in data (what `make demo` runs)",
                       description="Synthesise lines from the built-in corpus, start from the shipped encoder "
                       "and GPT, train the seed's three settings (linear_gelu_ln, qformer, qformer + KD) and "
                       "bridgeocr's ctc_collapse connector in equal shares of the budget, run the loss-gap "
                       "diagnostic, and write OUT/report.md with the seed's CER/WER lines, a comparison table, curves and checkpoint paths. Rerunning the "
                       "same command resumes: finished settings are kept.")
    p.add_argument("--minutes", type=positive_float, default=20.0, help="total time budget in minutes (default 20)")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--corpus", nargs="+", default=None, metavar="FILE",
                   help="text for the synthetic lines (default: the built-in corpus)")
    p.add_argument("--n", type=positive_int, default=None, help="synthetic lines (default scales with --minutes)")
    p.add_argument("--settings", nargs="+", default=None, metavar="NAME",
                   help="settings to train (default: linear_gelu_ln qformer qformer_kd ctc_collapse; also "
                   "ctc_embed)")
    p.set_defaults(target="bridgeocr.experiments.demo:demo_cli", keys=["minutes", "out", "corpus", "n", "settings"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridgeocr",
        description="Read text-line images with a language model: "
        "line image -> vision encoder -> connector -> GPT -> text.")
    parser.add_argument("--version", action="version", version=f"bridgeocr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data(sub)
    _add_lm(sub)
    _add_encoder(sub)
    _add_train_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "decoding", None) == "fast" and getattr(args, "beam", None) not in (None, 1):
        parser.error("--fast reads with beam 1: leave out --beam, or use --joint --beam N")
    kwargs = {key: getattr(args, key) for key in args.keys}
    try:
        code = _call(args.target, **kwargs)
    except BridgeOCRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bridgeocr recognize DIR | head`: the reader has what it wanted
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so that Python's exit flush stays silent
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
