#!/usr/bin/env bash
# The one prepared GPU check: synthesise lines on the GPU machine, train SETTINGS (configs/NAME.yaml; default
# ctc_collapse, linear_gelu_ln, qformer_kd) in bf16 for MINUTES each from the shipped encoder and GPT, print a table.
#   here:  bash scripts/gpu_prepare.sh
#   GPU:   device run, carry [".whl", ".devdata"], command "bash scripts/gpu_run.sh"
# Knobs (environment): SETTINGS, MINUTES (per setting, default 2: the whole script fits a 10-minute call), N (lines, default 20000), BATCH (default 64).
# DECODE=1: also decoding speed on the GPU (issue 15): `bridgeocr bench --device cuda --quick` and benchmarks/decoding.py
# (the shipped model: CTC head, greedy GPT, joint, --fast) at batch 64, 256 and 1024 on 2,048 of the synthesised lines.
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
  python3 -m bridgeocr.cli bench --device cuda --quick --out "$RUN/bench" | tail -n 20
  python3 benchmarks/decoding.py --device cuda --no-peers --data "$RUN/data" --split test --max-samples 2048 \
    --batch-sizes 64 256 1024 --repeats 2 --out "$RUN/decoding" | sed -n '/^shipped/,$p'
fi
