"""Connector speed benchmark (the same as `bridgeocr bench`): every connector at 512 / 1024 px, default and
seed-sized decoder, next to a TrOCR-style encoder-decoder of equal size. See docs/benchmarks.md.

  OMP_NUM_THREADS=2 python benchmarks/connectors.py --out runs/bench          # the full table
  python benchmarks/connectors.py --quick                                       # < 2 minutes
  python benchmarks/connectors.py --sizes seed --widths 1024 --connectors linear_gelu_ln qformer encdec
"""

import sys

from bridgeocr.experiments.bench import main

if __name__ == "__main__":
    sys.exit(main())
