#!/usr/bin/env bash
# Issue 13, point 5: end to end on the EHRI ALTO pages, straight from their ALTO (no cutting step).
#
#   scripts/ehri_end_to_end.sh                 # PAGES=../shared/data/ehri_alto/pages OUT=runs/ehri_e2e MINUTES=6
#
# 0. the page split: the one the shipped encoder's (and the shipped OCR model's) EHRI lines were cut with
#    (`scripts/alto_lines.py PAGES --out runs/data/ehri_lines`: the pages with lines sorted, shuffled with
#    seed 0, 4 val, 4 test, the rest train; bridgeocr.data.alto_lines.assign_splits), recomputed here and
#    checked against runs/data/ehri_lines/split.tsv when that exists, written as OUT/pages/split.tsv
#    (page stem<TAB>split) in a folder of links to the pages (nothing under ../shared is written).
#    The test pages are then pages no shipped part trained on (the encoder, the GPT: Gutenberg text only,
#    the OCR model); the val pages were seen only for selection, never trained on.
# 1. baseline: the shipped default model on the test pages, joint decoding (its default) and --ctc
# 2. training from the shipped parts on the train pages, read from their ALTO (frozen encoder, feature cache)
# 3. the trained model on the same test pages (joint, its default; and --ctc)
# 4. recognize --layout --format alto on the test pages (trained and shipped), scored with dinglehopper
#    (benchmarks/layout_dinglehopper.py: page CER/WER and line CER from dinglehopper's edit distance)
# Prints one Markdown table at the end (also OUT/table.md). SKIP_BASELINE=1, SKIP_TRAIN=1, SKIP_EVAL=1 keep the
# results of steps 1, 2, 3 already in OUT. ~14 min on 2 CPU cores (results: docs/benchmarks.md, "EHRI end to end").
set -euo pipefail
cd "$(dirname "$0")/.."
PAGES=${PAGES:-../shared/data/ehri_alto/pages}
OUT=${OUT:-runs/ehri_e2e}
MINUTES=${MINUTES:-6}
ENCODER_SPLIT=${ENCODER_SPLIT:-runs/data/ehri_lines/split.tsv}
export PATH="$PWD/.venv/bin:$PATH"  # dinglehopper's CLI (benchmarks/layout_dinglehopper.py calls it)
B=.venv/bin/bridgeocr
PY=.venv/bin/python
SRC=$OUT/pages
RUN=$OUT/ctc_collapse_ehri
mkdir -p "$OUT"

# 0. the split, as a folder of links + split.tsv
$PY - "$PAGES" "$SRC" "$ENCODER_SPLIT" <<'EOF'
import os, sys
from pathlib import Path
from bridgeocr.data.alto_lines import assign_splits
from bridgeocr.data.layout import IMAGE_SUFFIXES, OUTPUT_SUFFIX, parse_layout
from bridgeocr.data.sources import open_source

pages, out, enc_split = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
xmls = sorted(p for p in pages.iterdir() if p.suffix.lower() == ".xml" and not p.name.endswith(OUTPUT_SUFFIX))
with_lines = [p.stem for p in xmls if any(line.text for line in parse_layout(p).lines)]
rule = assign_splits(with_lines, 4, 4, 0)  # alto_lines' defaults: --val-pages 4 --test-pages 4 --seed 0
if enc_split.is_file():
    used = {}
    for row in enc_split.read_text(encoding="utf-8").splitlines():
        _, split, page = row.split("\t")
        used[page] = split
    if used != rule:
        sys.exit(f"error: {enc_split} does not split the pages as alto_lines' rule does; refusing to guess")
    print(f"split: {enc_split} (the shipped encoder's EHRI lines) and the rule agree on all {len(rule)} pages")
else:
    print(f"split: {enc_split} not found; recomputed with alto_lines' rule (seed 0, 4 val, 4 test)")
out.mkdir(parents=True, exist_ok=True)
for xml in xmls:
    for src in [xml] + [xml.with_suffix(s) for s in IMAGE_SUFFIXES if xml.with_suffix(s).is_file()]:
        link = out / src.name
        if not link.is_symlink():
            os.symlink(src.resolve(), link)
(out / "split.tsv").write_text("".join(f"{s}\t{rule[s]}\n" for s in sorted(rule)), encoding="utf-8")
(out.parent / "test_pages.txt").write_text(" ".join(sorted(s for s in rule if rule[s] == "test")) + "\n")
for split in ("train", "val", "test"):
    src = open_source(out, split)
    stems = sorted(s for s in rule if rule[s] == split)
    print(f"  {split}: {src.pages} pages, {len(src)} lines, problems {len(src.problems)}"
          + (f" ({' '.join(stems)})" if split != "train" else ""))
EOF
TEST_PAGES=$(cat "$OUT/test_pages.txt")

# 1. the shipped default on the test pages (SKIP_BASELINE=1: keep OUT/eval_shipped_*)
[ "${SKIP_BASELINE:-0}" = 1 ] || $B evaluate --checkpoint shipped:ocr_default --data "$SRC" --split test --out "$OUT/eval_shipped_joint"
[ "${SKIP_BASELINE:-0}" = 1 ] || $B evaluate --checkpoint shipped:ocr_default --data "$SRC" --split test --ctc --out "$OUT/eval_shipped_ctc"

# 2. train from the shipped parts on the train pages, straight from ALTO (configs/ocr_default.yaml's recipe:
#    frozen PP-OCR encoder, ctc_collapse connector, shipped GPT, CE + 0.5 CTC; val = the 4 val pages)
#    (SKIP_TRAIN=1: keep the run already in OUT/ctc_collapse_ehri)
[ "${SKIP_TRAIN:-0}" = 1 ] || $B train --config configs/ocr_default.yaml --overwrite data.source="$SRC" \
    model.encoder.pretrained=shipped:encoder_ctc model.decoder.pretrained=shipped:gpt_lm \
    train.out_dir="$OUT" train.name=ctc_collapse_ehri optim.max_minutes="$MINUTES" \
    data.max_val_samples=200 train.val_every_steps=150 > "$OUT/train.log" 2>&1 \
    || { tail -c 3000 "$OUT/train.log" >&2; echo "error: training failed (log: $OUT/train.log)" >&2; exit 1; }
[ "${SKIP_TRAIN:-0}" = 1 ] || tr '\r' '\n' < "$OUT/train.log" | grep -E "\[(val|test)\] (CER|WER)|run finished|unknown|skipped" || true

# 3. the trained model on the same test pages (SKIP_EVAL=1: keep OUT/eval_trained_*)
[ "${SKIP_EVAL:-0}" = 1 ] || $B evaluate --checkpoint "$RUN/best" --data "$SRC" --split test --out "$OUT/eval_trained_joint"
[ "${SKIP_EVAL:-0}" = 1 ] || $B evaluate --checkpoint "$RUN/best" --data "$SRC" --split test --ctc --out "$OUT/eval_trained_ctc"

# 4. ALTO written back by recognize --layout, read by dinglehopper (trained model, then the shipped one)
# shellcheck disable=SC2086
$PY benchmarks/layout_dinglehopper.py "$SRC" --pages $TEST_PAGES --out "$OUT/alto" \
    --checkpoint "$RUN/best" --batch-size 32
# shellcheck disable=SC2086
$PY benchmarks/layout_dinglehopper.py "$SRC" --pages $TEST_PAGES --out "$OUT/alto_shipped" --batch-size 32

$PY - "$OUT" <<'EOF' | tee "$OUT/table.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
j = lambda p: json.loads((out / p).read_text())
t = j("ctc_collapse_ehri/metrics.json")
print(f"\ntraining: {t['step']} steps of {t['config']['batch_size']} lines, {t['wall_time_s'] / 60:.1f} min wall "
      f"({t['stopped_by']}), best at step {t['best_step']} (val CER {t['val_cer']:.4f}, GPT greedy)\n")
print("| model | decoding | test lines | test CER | test WER | dinglehopper page CER (ALTO) | dinglehopper line CER (ALTO) |")
print("|---|---|---:|---:|---:|---:|---:|")
for name, ev, dh in (("shipped:ocr_default", "eval_shipped_joint", "alto_shipped"), ("shipped:ocr_default", "eval_shipped_ctc", None),
                     ("trained on EHRI train (ALTO)", "eval_trained_joint", "alto"), ("trained on EHRI train (ALTO)", "eval_trained_ctc", None)):
    m = j(f"{ev}/metrics.json")
    d = j(f"{dh}/summary.json") if dh else None
    dcells = f"{d['dinglehopper_page_cer']:.4f} | {d['dinglehopper_line_cer']:.4f}" if d else "- | -"
    print(f"| {name} | {m['decoding']} | {m['n']} | {m['cer']:.4f} | {m['wer']:.4f} | {dcells} |")
EOF
