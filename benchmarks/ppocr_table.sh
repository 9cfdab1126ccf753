#!/usr/bin/env bash
# The table in docs/benchmarks.md, "PP-OCR encoder": the new default (joint and CTC), the fine-tuned and the
# zero-shot PP-OCR encoder (CTC head alone), the previous default, PP-OCRv6 (rapidocr) and Tesseract on the
# same lines of four sets none of ours trained on:
#   print_heldout  synthetic print in 24 fonts no training line used (EB Garamond, Linux Libertine/Biolinum,
#                  Caladea, Carlito: Debian packages .ci/run does not install), Gutenberg *val* text
#   hand_heldout   synthetic handwriting in the benchmark-only fonts (bwht, Kaushan, Ecolier, Rufscript,
#                  Leckerli, Lobster), Gutenberg val text
#   hooker val     real cursive, letters not in Hooker train
#   ehri val/test  real typewritten lines of 8 EHRI pages not in the encoder's training (scripts/alto_lines.py)
# Needs: the fonts above (apt), tesseract-ocr + tesseract-ocr-eng, rapidocr (dev extra), ../shared/data, and
#   OLD=a copy of the previous shipped ocr_default, ZS=`bridgeocr encoder import --out` output.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/bridgeocr
G=../shared/data/gutenberg_en/val.txt
F=/usr/share/fonts
OLD=${OLD:-runs/old_ocr_default}
ZS=${ZS:-runs/ppocr_zeroshot}
N=${N:-300}
[ -f runs/bench/print_heldout/settings.json ] || $B data synth --corpus $G --out runs/bench/print_heldout --n 300 \
    --seed 101 --val-fraction 0 --test-fraction 1 --height 48 \
    --fonts $F/opentype/ebgaramond $F/opentype/linux-libertine $F/truetype/crosextra \
    --holdout-fonts ebgaramond linlibertine linbiolinum caladea carlito
[ -f runs/bench/hand_heldout/settings.json ] || $B data synth --corpus $G --out runs/bench/hand_heldout --n 300 \
    --seed 102 --val-fraction 0 --test-fraction 1 --height 48 --fonts $F/opentype/bwht $F/opentype/kaushanscript \
    $F/truetype/ecolier-court $F/truetype/rufscript $F/truetype/leckerli-one $F/opentype/lobster \
    --holdout-fonts bwht becausewe kaushanscript ecolier rufscript leckerli lobster
[ -f runs/data/ehri_lines/manifest.tsv ] || .venv/bin/python scripts/alto_lines.py ../shared/data/ehri_alto/pages \
    --out runs/data/ehri_lines
[ -d "$ZS" ] || $B encoder import --out "$ZS"
.venv/bin/python benchmarks/peers.py --data runs/bench/print_heldout@test --data runs/bench/hand_heldout@test \
    --data ../shared/data/hooker_htr@val --data runs/data/ehri_lines@val --data runs/data/ehri_lines@test \
    --max-samples "$N" --checkpoint shipped:ocr_default --checkpoint shipped:ocr_default@ctc \
    --checkpoint shipped:encoder_ctc --checkpoint "$ZS" --checkpoint "$OLD" "$@"
