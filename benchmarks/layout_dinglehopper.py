"""`bridgeocr recognize --layout` on real ALTO pages, checked with a real client (dinglehopper).

    OMP_NUM_THREADS=1 python benchmarks/layout_dinglehopper.py ../shared/data/ehri_alto/pages \
        --pages EHRI-DR-19400712-US_02 EHRI-DR-19390519-US_03 --out runs/bench_layout

For the chosen pages (links to their XML and image in OUT/gt/): `bridgeocr recognize OUT/gt --layout OUT/gt
--format alto --out OUT/ocr`, then `dinglehopper OUT/gt/P.xml OUT/ocr/P.xml` per page (its JSON report: page
CER / WER, the page's lines joined by newlines and aligned as one text), then `bridgeocr evaluate --data
OUT/gt --split all` on the same lines, and the line-level agreement: dinglehopper's own edit distance
summed over the lines (matched by ID) against evaluate's corpus CER. Prints one Markdown table; writes
OUT/summary.json. Both commands run with the same --batch-size (default 1: batches then hold one line each
in both, so any difference is the tools', not padding's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    return time.perf_counter() - t0, proc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pages_dir", type=Path)
    ap.add_argument("--pages", nargs="+", required=True, help="page stems")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_layout"))
    ap.add_argument("--checkpoint", default=None, help="default: the shipped model")
    ap.add_argument("--batch-size", type=int, default=1)
    args = ap.parse_args(argv)

    from dinglehopper.edit_distance import distance
    from dinglehopper.ocr_files import alto_extract_lines
    from lxml import etree
    from uniseg.graphemecluster import grapheme_clusters

    from bridgeocr.api import DEFAULT_MODEL_DIR
    from bridgeocr.data.layout import IMAGE_SUFFIXES

    checkpoint = args.checkpoint or str(DEFAULT_MODEL_DIR)
    gt, ocr = args.out / "gt", args.out / "ocr"
    gt.mkdir(parents=True, exist_ok=True)
    for stem in args.pages:
        xml = args.pages_dir / f"{stem}.xml"
        img = next(p for p in (args.pages_dir / f"{stem}{s}" for s in IMAGE_SUFFIXES) if p.is_file())
        for src in (xml, img):
            link = gt / src.name
            if not link.exists():
                os.symlink(src.resolve(), link)
    bridgeocr = [sys.executable, "-m", "bridgeocr.cli"]
    rec_s, rec = run([*bridgeocr, "recognize", str(gt), "--layout", str(gt), "--format", "alto", "--out", str(ocr),
                      "--checkpoint", checkpoint, "--batch-size", str(args.batch_size)])
    if rec.returncode != 0:
        print(rec.stdout, rec.stderr, file=sys.stderr)
        return 1
    ev_s, ev = run([*bridgeocr, "evaluate", "--checkpoint", checkpoint, "--data", str(gt), "--split", "all",
                    "--batch-size", str(args.batch_size), "--out", str(args.out / "eval")])
    if ev.returncode != 0:
        print(ev.stdout, ev.stderr, file=sys.stderr)
        return 1
    metrics = json.loads((args.out / "eval" / "metrics.json").read_text())

    rows, d_all, n_all, dh_d, dh_n = [], 0, 0, 0.0, 0
    for stem in args.pages:
        _, dh = run(["dinglehopper", str(gt / f"{stem}.xml"), str(ocr / f"{stem}.xml"), stem,
                     str(args.out / "reports")])
        if dh.returncode != 0:
            print(dh.stdout, dh.stderr, file=sys.stderr)
            return 1
        report = json.loads((args.out / "reports" / f"{stem}.json").read_text())
        ref = {t.segment_id: t.text for t in alto_extract_lines(etree.parse(str(gt / f"{stem}.xml")))}
        hyp = {t.segment_id: t.text for t in alto_extract_lines(etree.parse(str(ocr / f"{stem}.xml")))}
        d = sum(distance(list(grapheme_clusters(ref[k])), list(grapheme_clusters(hyp.get(k, "")))) for k in ref
                if ref[k])
        n = sum(len(list(grapheme_clusters(ref[k]))) for k in ref if ref[k])
        d_all, n_all = d_all + d, n_all + n
        dh_d += report["cer"] * report["n_characters"]
        dh_n += report["n_characters"]
        rows.append((stem, len([k for k in ref if ref[k]]), report["cer"], report["wer"], d / n))
    summary = {"pages": args.pages, "checkpoint": checkpoint, "batch_size": args.batch_size,
               "recognize_s": rec_s, "evaluate_s": ev_s, "evaluate_cer": metrics["cer"], "evaluate_wer": metrics["wer"],
               "evaluate_lines": metrics["n"], "dinglehopper_page_cer": dh_d / dh_n, "dinglehopper_line_cer": d_all / n_all,
               "per_page": rows}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("| page | lines | dinglehopper page CER | dinglehopper page WER | dinglehopper line CER |")
    print("|---|---:|---:|---:|---:|")
    for stem, n, c, w, lc in rows:
        print(f"| {stem} | {n} | {c:.4f} | {w:.4f} | {lc:.4f} |")
    print(f"\nall pages: dinglehopper page CER {dh_d / dh_n:.4f} (page texts aligned whole), line CER "
          f"{d_all / n_all:.4f} (edits summed over lines / reference characters); bridgeocr evaluate CER "
          f"{metrics['cer']:.4f}, WER {metrics['wer']:.4f} on {metrics['n']} lines; recognize {rec_s:.0f} s, "
          f"evaluate {ev_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
