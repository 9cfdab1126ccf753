"""Write one manifest + split file over several line sources (paths relative to the new manifest).

usage: python scripts/mixed_manifest.py SOURCE_DIR... OUT_DIR
Each SOURCE_DIR holds manifest.tsv + split.tsv (a synth dataset) or labels.tsv + split_by_letter.tsv.
Rows of the sources are interleaved (seeded shuffle), so a validation subset mixes them.
"""

import os
import random
import sys
from pathlib import Path


def rows_of(src: Path):
    manifest, split = ((src / "manifest.tsv", src / "split.tsv") if (src / "manifest.tsv").is_file()
                       else (src / "labels.tsv", src / "split_by_letter.tsv"))
    splits = dict(line.split("\t")[:2] for line in split.read_text().splitlines() if line and line[0] != "#")
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line and line[0] != "#":
            path, text = line.split("\t", 1)
            if path in splits:
                yield src / path, text, splits[path], src.name


def main(sources: list[str], out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [row for src in sources for row in rows_of(Path(src))]
    random.Random(0).shuffle(rows)
    rel = [(os.path.relpath(p, out_dir), text, split, group) for p, text, split, group in rows]
    (out_dir / "manifest.tsv").write_text("".join(f"{p}\t{t}\n" for p, t, _, _ in rel), encoding="utf-8")
    (out_dir / "split.tsv").write_text("".join(f"{p}\t{s}\t{g}\n" for p, _, s, g in rel))
    print(f"{len(rel)} lines from {len(sources)} sources -> {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1:-1], sys.argv[-1])
