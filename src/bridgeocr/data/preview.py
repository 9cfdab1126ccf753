"""`bridgeocr data preview`: a grid PNG of random samples with their transcriptions as titles."""

from __future__ import annotations

import random
from pathlib import Path

from bridgeocr.data.sources import open_source
from bridgeocr.errors import DataError


def preview_source(src, out, n: int = 24, seed: int = 0) -> Path:
    # lazy: matplotlib is slow to import and only plots need it
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if len(src) == 0:
        raise DataError(src.name, "no lines to preview")
    idx = sorted(random.Random(seed).sample(range(len(src)), min(max(1, n), len(src))))
    cols = 1 if len(idx) <= 12 else 2
    rows = (len(idx) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(8 * cols, 1.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx):
        s = src[i]
        title = s.text.replace("$", r"\$")
        try:
            ax.imshow(s.load_image(), cmap="gray", vmin=0, vmax=255, aspect="equal")
        except DataError as exc:
            title = f"[unreadable: {exc.message}] {title}"
        ax.set_title(title if len(title) <= 120 else title[:117] + "...", fontsize=8, loc="left")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def preview_source_cli(source, split=None, split_file=None, iam_split_dir=None, out="preview.png", n=24,
                       seed=0, allow_outside=False, split_by="page") -> int:
    src = open_source(source, split, split_file=split_file, iam_split_dir=iam_split_dir,
                      allow_outside=allow_outside, split_by=split_by)
    path = preview_source(src, out, n=n, seed=seed)
    print(f"wrote {path} ({min(n, len(src))} of {len(src)} lines from {src.name})")
    return 0
