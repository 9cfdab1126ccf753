#!/usr/bin/env bash
# The one prepared GPU check: synthesise lines on the GPU machine, train SETTINGS (configs/NAME.yaml; default
# ctc_collapse, linear_gelu_ln, qformer_kd) in bf16 for MINUTES each from the shipped encoder and GPT, print a table.
#   here:  bash scripts/gpu_prepare.sh
#   GPU:   device run, carry [".whl", ".devdata"], command "bash scripts/gpu_run.sh"
# Knobs (environment): SETTINGS, MINUTES (per setting, default 2: the whole script fits a 10-minute call), N (lines, default 20000), BATCH (default 64).
# DECODE=1: also decoding speed on the GPU (issue 15): `bridgeocr bench --device cuda --quick` and benchmarks/decoding.py
# (the shipped model: CTC head, greedy GPT, joint, --fast) at batch 64, 256 and 1024 on DECODE_LINES (default 2,048)
# of the synthesised test lines; DEVICE=cpu runs it here (a dry run).
# DISTIL=1: also issue 15's cheaper trunk: shipped:encoder_ctc with its columns halved at stage 3 (1.27 of 1.88
# GMAC per line; scripts/read_at_height.py --halve-columns-at 1), re-trained for DISTIL_STEPS (default 3000) of 64
# lines, at most DISTIL_MINUTES (default 6), on 48 px lines in all CI fonts and in the handwriting ones with `--teacher
# shipped:encoder_ctc` (KL to its frame posteriors beside CTC); the encoder comes back under $OUT/halved.
# CUT=1: also the 32 px trunk of shipped:ocr_fast with its residual MLPs CUT_MLPS (default 4,5,6,7,8,9,10,11: all of
# stages 3-4) narrowed to CUT_KEEP (default 0.5) of their hidden channels, re-fitted on the synthesised lines (1.26 ->
# 0.81 GMAC per line; scripts/drop_mlps.py --keep), re-trained as DISTIL's (lr 2e-4) with that encoder as its teacher;
# it comes back under $OUT/cut. CUT_KEEP=drop: drop those MLPs instead, rank-64 stand-ins in their place.
# Issue 15 on one lease: SETTINGS=" " DECODE=1 CUT=1 DISTIL_MINUTES=4 (an estimate, never run on a GPU: the
# synthesis of 60,000 lines ~1-2 min, the decoding rows a few minutes, 4 of training; timeout_s 600). The narrowed
# trunk (CUT) learned ~3x faster than the halved one (DISTIL) on the CPU (docs/benchmarks.md, "Fewer residual MLPs").
# Dry run here: PATH=$PWD/.venv/bin:$PATH SETTINGS=" " CUT=1 N=200 DISTIL_STEPS=2 DISTIL_MINUTES=1 (2 min, done).
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
RUN=${RUN:-runs/gpu}
fonts=(); [ -d .devdata/fonts ] && fonts=(--fonts .devdata/fonts)
corpus=(); [ -f .devdata/corpus.txt ] && corpus=(--corpus .devdata/corpus.txt)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
time python3 -m bridgeocr.cli data synth --out "$RUN/data" --n "${N:-20000}" "${corpus[@]}" "${fonts[@]}"
SETTINGS=${SETTINGS:-"ctc_collapse linear_gelu_ln qformer_kd"}
for name in $SETTINGS; do
  python3 -m bridgeocr.cli train --config "configs/$name.yaml" "data.source=$RUN/data" "train.out_dir=$RUN" \
    train.precision=bf16-mixed "optim.max_minutes=${MINUTES:-2}" "optim.batch_size=${BATCH:-64}" \
    optim.max_steps=100000 data.num_workers=8 train.val_every_steps=300 2>&1 | grep -v "it/s]$" || true
done
python3 - $RUN <<'PY'
import json, sys
from pathlib import Path
print("| setting | steps | train lines/s | decode lines/s | val CER | test CER | test WER | test decoding | precision |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|")
f = lambda v, s: "–" if v is None else format(v, s)
for path in sorted(Path(sys.argv[1]).glob("*/metrics.json")):
    m = json.load(open(path))
    print(f"| {path.parent.name} | {m['step']} | {f(m['train_lines_per_s'], '.0f')} | "
          f"{f(m['decode_lines_per_s'], '.0f')} | {f(m['val_cer'], '.4f')} | {f(m['test_cer'], '.4f')} | "
          f"{f(m['test_wer'], '.4f')} | {(m.get('test') or {}).get('decoding', '–')} | {m['precision']} |")
PY
if [ "${DECODE:-0}" = 1 ]; then
  python3 -m bridgeocr.cli bench --device "${DEVICE:-cuda}" --quick --out "$RUN/bench" | tail -n 20
  python3 benchmarks/decoding.py --device "${DEVICE:-cuda}" --no-peers --data "$RUN/data" --split test \
    --max-samples "${DECODE_LINES:-2048}" --rows gpt,joint,fast,ctc --batch-sizes 64 256 1024 --repeats 2 \
    --out "$RUN/decoding" | sed -n '/^shipped/,$p'
fi
if [ "${DISTIL:-0}" = 1 ] || [ "${CUT:-0}" = 1 ]; then
  for style in all handwriting; do
    python3 -m bridgeocr.cli data synth --out "$RUN/data48_$style" --n "${N:-20000}" --height 48 --style "$style" \
      --val-fraction 0.02 --test-fraction 0 "${corpus[@]}" "${fonts[@]}" | tail -n 2
  done
fi
if [ "${CUT:-0}" = 1 ]; then
  python3 scripts/drop_mlps.py shipped:ocr_fast "$RUN/cut_teacher"
  narrow=(); [ "${CUT_KEEP:-0.5}" != drop ] && narrow=(--keep "${CUT_KEEP:-0.5}")
  python3 scripts/drop_mlps.py shipped:ocr_fast "$RUN/cut_init" --mlps "${CUT_MLPS:-4,5,6,7,8,9,10,11}" --rank 64 "${narrow[@]}" \
    --calibration "$RUN/data48_all@train" "$RUN/data48_handwriting@train" 2>&1 | grep -v "^warning" || true
  python3 -m bridgeocr.cli encoder train --init "$RUN/cut_init" --teacher "$RUN/cut_teacher" --augment handwriting \
    --data "$RUN/data48_all" "$RUN/data48_handwriting" --val-data "$RUN/data48_handwriting" --out "$RUN/cut" \
    --steps "${DISTIL_STEPS:-3000}" --minutes "${DISTIL_MINUTES:-6}" --batch-size 64 --lr 2e-4 --precision bf16-mixed \
    data.num_workers=8 2>&1 | grep -v "it/s]$" || true
  if [ -n "${OUT:-}" ] && [ -f "$RUN/cut/model.safetensors" ]; then
    mkdir -p "$OUT/cut" && cp "$RUN/cut"/{config.json,model.safetensors,tokenizer.json,encoder_card.json} "$OUT/cut/"
  fi
fi
if [ "${DISTIL:-0}" = 1 ]; then
  python3 scripts/read_at_height.py shipped:encoder_ctc "$RUN/halved_init" --halve-columns-at 1
  python3 -m bridgeocr.cli encoder train --init "$RUN/halved_init" --teacher shipped:encoder_ctc --augment handwriting \
    --data "$RUN/data48_all" "$RUN/data48_handwriting" --val-data "$RUN/data48_handwriting" --out "$RUN/halved" \
    --steps "${DISTIL_STEPS:-3000}" --minutes "${DISTIL_MINUTES:-6}" --batch-size 64 --lr 3e-4 --precision bf16-mixed \
    data.num_workers=8 2>&1 | grep -v "it/s]$" || true
  if [ -n "${OUT:-}" ] && [ -f "$RUN/halved/model.safetensors" ]; then
    mkdir -p "$OUT/halved" && cp "$RUN/halved"/{config.json,model.safetensors,tokenizer.json,encoder_card.json} "$OUT/halved/"
  fi
fi
