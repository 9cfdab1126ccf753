"""Cut the text lines of ALTO / PAGE XML pages into a bridgeocr line manifest (line crops, manifest.tsv,
a page-wise split.tsv): a thin wrapper around `bridgeocr.data.alto_lines` (see its docstring, or `--help`).

usage: python scripts/alto_lines.py PAGES_DIR --out OUT [--seed 0] [--val-pages 4] [--test-pages 4] [--pad 4]

A PAGE / ALTO folder also reads directly as a source, without cutting: `bridgeocr data check PAGES_DIR`.
"""

from __future__ import annotations

import sys

from bridgeocr.data.alto_lines import (  # noqa: F401 - the script's names, as they were
    AltoLine,
    assign_splits,
    build_parser,
    convert_page,
    crop_line,
    find_image,
    main,
    parse_alto,
)

if __name__ == "__main__":
    sys.exit(main())
