"""Memory and speed of `bridgeocr recognize` over a folder of N line images: does it stream?

    python benchmarks/recognize_memory.py [--n 1000 10000] [--batch-size 32] [--ctc] [--checkpoint DIR]
                                          [--no-contrast] [--out runs/bench_recognize]

For each N it writes N synthetic line images (PIL rectangles, no fonts: 32 px tall, 60-700 px wide, mixed)
into a temporary folder and runs `bridgeocr recognize FOLDER --format jsonl --out FILE` in a subprocess,
measuring:

- peak RSS of that process (its own `ru_maxrss` from `os.wait4`, i.e. VmHWM), and its RSS (VmRSS, sampled
  every 0.1 s from /proc) when 10 % and when 90 % of the lines were in the output file: a streaming
  reader holds about the same at both;
- wall time of the subprocess (model load included), lines/s over it, when the first line was there and
  lines/s from then on (the steady rate; for the contrast row, whose lines all come at the end, none);
- that the output has exactly N lines, each whole JSON, in the folder's sorted order.

The model is, by default, a tiny untrained OCR model (the tests' `tiny_ocr_model`: 1-block encoder 32 wide,
linear connector, 1-layer GPT 32 wide, 16 px lines, 8-character vocabulary, up to 12 tokens a line) read
with its GPT (greedy), so the run measures the pipeline (listing, reading, preprocessing, batching,
writing) rather than a big network; `--checkpoint shipped:encoder_ctc --ctc` reads with a real encoder
(slow on a CPU). With the contrast row (default on) it also reads the same folder the way a caller who
collects everything first would: `BridgeOCR.recognize(list_of_all_paths)`, every image in memory at once.

Prints the machine (CPU count, torch threads, load average) and a Markdown table; `--out` also keeps
recognize_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n line images of dark boxes on white, 32 px tall, widths 60-700 px (varied, so batches are mixed)."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w = int(rng.integers(60, 701))
        img = Image.new("L", (w, 32), 255)
        d = ImageDraw.Draw(img)
        for x in range(4, w - 10, int(rng.integers(9, 16))):
            d.rectangle([x, int(rng.integers(3, 10)), x + int(rng.integers(3, 8)), int(rng.integers(20, 29))],
                        fill=0)
        p = folder / f"line_{i:06d}.png"
        img.save(p)
        paths.append(p)
    return paths


def tiny_model_dir(out: Path) -> Path:
    """The tests' tiny untrained model (tests/conftest.py::tiny_ocr_model), saved with its tokenizer."""
    import torch

    from bridgeocr.config import ModelConfig
    from bridgeocr.data.tokenizers import CharTokenizer
    from bridgeocr.models.ocr import OCRModel

    torch.manual_seed(0)
    m = ModelConfig()
    m.encoder.dim, m.encoder.depth, m.encoder.heads = 32, 1, 2
    m.encoder.patch_height, m.encoder.patch_width, m.encoder.conv_stem = 16, 4, False
    m.connector.kind = "linear"
    m.decoder.n_layer, m.decoder.n_embd, m.decoder.n_head, m.decoder.n_positions = 1, 32, 2, 64
    m.max_text_tokens = 12
    m.ctc_head = True
    tok = CharTokenizer.build(["abcd xyz"])
    OCRModel(m, tok.vocab_size, image_height=16, tokenizer=tok).save_pretrained(out)
    return out


def _vm(pid: int, key: str) -> int | None:
    """VmRSS / VmHWM of a live process in KiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def run_child_peak(cmd: list[str], out: Path, n: int, env: dict) -> dict:
    """run_child, with the peak RSS from the kernel (os.wait4's ru_maxrss, KiB on Linux)."""
    import threading

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state: dict = {"first": None, "rss10": None, "rss90": None, "samples": []}
    done = threading.Event()

    def sample():
        while not done.is_set():
            lines = _count_lines(out)
            rss = _vm(proc.pid, "VmRSS")
            if rss is not None:
                state["samples"].append((lines, rss))
                if state["first"] is None and lines > 0:
                    state["first"] = time.perf_counter() - start
                if state["rss10"] is None and lines >= 0.1 * n:
                    state["rss10"] = rss
                if state["rss90"] is None and lines >= 0.9 * n:
                    state["rss90"] = rss
            done.wait(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    err = proc.stderr.read().decode(errors="replace")  # until the child closes it (exits)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    samples = state["samples"]
    return {"returncode": proc.returncode, "wall_s": wall, "first_line_s": state["first"],
            "peak_rss_kib": usage.ru_maxrss, "rss10_kib": state["rss10"], "rss90_kib": state["rss90"],
            "stderr": err[-2000:], "samples": samples[:: max(1, len(samples) // 50)]}


def check_output(out: Path, paths: list[Path]) -> tuple[bool, str]:
    text = out.read_text(encoding="utf-8") if out.is_file() else ""
    if text and not text.endswith("\n"):
        return False, "last line not complete"
    try:
        got = [json.loads(x)["path"] for x in text.splitlines()]
    except (ValueError, KeyError) as exc:
        return False, f"a line is not whole JSON ({exc})"
    if len(got) != len(paths):
        return False, f"{len(got)} lines for {len(paths)} images"
    if got != [str(p) for p in paths]:
        return False, "lines not in input order"
    return True, f"{len(got)} lines, in order"


CONTRAST = """
import json, sys
from pathlib import Path
from bridgeocr import BridgeOCR
folder, ckpt, bs, decoding, out = sys.argv[1:6]
paths = sorted(Path(folder).glob("*.png"))
ocr = BridgeOCR.from_pretrained(ckpt)
res = ocr.recognize(paths, batch_size=int(bs), decoding=decoding or None)
with open(out, "w") as f:
    for r in res:
        f.write(json.dumps({"path": r.source, "text": r.text, "confidence": r.confidence}) + "\\n")
"""


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000], help="folder sizes (default 1000 10000)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--ctc", action="store_true", help="read with the CTC head (default: the GPT, greedy)")
    ap.add_argument("--checkpoint", default=None, help="model dir (default: a tiny untrained model)")
    ap.add_argument("--no-contrast", action="store_true",
                    help="skip the BridgeOCR.recognize(all paths) row (everything in memory at once)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the child (default 1)")
    ap.add_argument("--out", default=None, help="folder for recognize_memory.json")
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(args.threads)}
    decoding = "ctc" if args.ctc else "gpt"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = args.checkpoint or str(tiny_model_dir(tmp / "model"))
        for n in args.n:
            folder = tmp / f"lines_{n}"
            t0 = time.perf_counter()
            paths = make_images(folder, n)
            print(f"{n} images written in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            out = tmp / f"out_{n}.jsonl"
            cmd = [sys.executable, "-m", "bridgeocr.cli", "recognize", str(folder), "--checkpoint", ckpt,
                   "--batch-size", str(args.batch_size), f"--{decoding}", "--format", "jsonl", "--out", str(out)]
            r = run_child_peak(cmd, out, n, env)
            ok, what = check_output(out, paths)
            rows.append({"n": n, "how": "`bridgeocr recognize FOLDER` (streaming)", "streams": True, **r, "ok": ok, "check": what})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "samples"}), file=sys.stderr, flush=True)
            if not args.no_contrast:
                out2 = tmp / f"contrast_{n}.jsonl"
                cmd = [sys.executable, "-c", CONTRAST, str(folder), ckpt, str(args.batch_size), decoding, str(out2)]
                r = run_child_peak(cmd, out2, n, env)
                ok, what = check_output(out2, paths)
                rows.append({"n": n, "how": "`BridgeOCR.recognize(all paths)` (all in memory)", "streams": False, **r, "ok": ok,
                             "check": what})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "samples"}), file=sys.stderr,
                      flush=True)
            for p in paths:
                p.unlink()

    load = os.getloadavg()
    model = args.checkpoint or "tiny untrained model (tests' tiny_ocr_model)"
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"child OMP_NUM_THREADS={args.threads}, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; "
          f"{model}, --{decoding}, batch {args.batch_size}, 32 px lines 60-700 px wide\n")
    print("| lines | how | wall s | lines/s | first line after s | lines/s after the first | peak RSS MiB "
          "| RSS at 10% / 90% of lines MiB | output |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    mib = lambda k: f"{k / 1024:.0f}" if k else "-"  # noqa: E731
    for r in rows:
        t1 = r["first_line_s"]
        first = f"{t1:.1f}" if t1 is not None else "-"
        after = f"{(r['n'] - 1) / (r['wall_s'] - t1):.0f}" if r["streams"] and t1 is not None else "-"
        print(f"| {r['n']:,} | {r['how']} | {r['wall_s']:.1f} | {r['n'] / r['wall_s']:.0f} | {first} | {after} | "
              f"{mib(r['peak_rss_kib'])} | {mib(r['rss10_kib'])} / {mib(r['rss90_kib'])} | "
              f"{'ok' if r['ok'] else 'FAILED'}: {r['check']}"
              + ("" if r["returncode"] == 0 else f", exit {r['returncode']}") + " |")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "recognize_memory.json").write_text(json.dumps(
            {"machine": {"cpus": os.cpu_count(), "load": load, "platform": platform.platform(),
                         "torch": torch.__version__}, "args": vars(args), "rows": rows}, indent=1))
    return 0 if all(r["ok"] and r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
