#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before scripts/gpu_run.sh: fetch the wheels the GPU image lacks into
# .whl/ and copy fonts and a corpus into .devdata/ (both git-ignored; name both in the device run's carry).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl .devdata/fonts
for pkg in omegaconf==2.4.0 antlr4-python3-runtime==4.9.3 jiwer==4.0.0 rapidfuzz; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$pkg" || python3 -m pip download -q --no-deps -d .whl "$pkg"
done
# the synthetic-line fonts (Debian packages installed by .ci/run), without the symbol fonts
find /usr/share/fonts \( -name '*.ttf' -o -name '*.otf' \) -size -2M -exec cp -n {} .devdata/fonts/ \; 2>/dev/null || true
cp ../shared/data/gutenberg_en/val.txt .devdata/corpus.txt
du -sh .whl .devdata
