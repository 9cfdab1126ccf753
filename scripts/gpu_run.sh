#!/usr/bin/env bash
# The one prepared GPU check (issue 4): synthesise lines on the GPU machine, train `qformer_kd` in bf16 for
# a few minutes from the shipped encoder and GPT, print throughput and CER.
#   here:  bash scripts/gpu_prepare.sh
#   GPU:   device run, carry [".whl", ".devdata"], command "bash scripts/gpu_run.sh"
# Knobs (environment): MINUTES (training, default 4), N (lines, default 20000), BATCH (default 64).
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
python3 -m bridgeocr.cli train --config configs/qformer_kd.yaml "data.source=$RUN/data" "train.out_dir=$RUN" \
  train.precision=bf16-mixed "optim.max_minutes=${MINUTES:-4}" "optim.batch_size=${BATCH:-64}" \
  optim.max_steps=100000 data.num_workers=8 train.val_every_steps=300 2>&1 | grep -v "it/s]$" || true
python3 - "$RUN/qformer_kd/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print("| setting | steps | train lines/s | decode lines/s | val CER | test CER | test WER | precision |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
f = lambda v, s: "–" if v is None else format(v, s)
print(f"| qformer_kd | {m['step']} | {f(m['train_lines_per_s'], '.0f')} | {f(m['decode_lines_per_s'], '.0f')} | "
      f"{f(m['val_cer'], '.4f')} | {f(m['test_cer'], '.4f')} | {f(m['test_wer'], '.4f')} | {m['precision']} |")
PY
