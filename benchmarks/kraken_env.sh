#!/usr/bin/env bash
# Builds the Kraken peer's environment for benchmarks/kraken_peer.py -- NOT a project dependency.
#
#   bash benchmarks/kraken_env.sh [VENV]        # default: .venv-kraken at the repository root
#
# Pins: torch==2.13.0 (the CPU wheel this machine has; any other torch makes pip fetch GBs of CUDA) and
# kraken==7.1.1. Why a shim: kraken imports torchvision, and the only torchvision that requires
# torch==2.13.0 (0.28.0, PyPI) is a CUDA build whose _C.so does not load beside torch 2.13.0+cpu; it then
# registers fake kernels for torchvision::nms/qnms without checking they exist and `import torchvision`
# fails ("operator torchvision::nms does not exist"). benchmarks/tv_cpu_shim.py, imported at start-up
# by a .pth file in the venv's site-packages, defines those two op schemas first. Line recognition
# (ketos train, kraken ocr) needs none of torchvision's C++ ops.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${KRAKEN_VENV:-$ROOT/.venv-kraken}}"
PY="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV"
fi
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==2.13.0" > "$CONSTRAINTS"
"$VENV/bin/pip" install -c "$CONSTRAINTS" "torch==2.13.0" "kraken==7.1.1"

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$ROOT/benchmarks/tv_cpu_shim.py" "$SITE/_tv_cpu_shim.py"
echo "import _tv_cpu_shim" > "$SITE/_tv_cpu_shim.pth"

"$VENV/bin/python" - <<'PY'
import torch
import torchvision
import kraken
import kraken.train  # noqa: F401  (imports torchvision: fails without the shim)
from importlib.metadata import version

print(f"ok: kraken {version('kraken')}, torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
echo "ketos: $VENV/bin/ketos"
