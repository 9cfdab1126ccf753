"""Start-up: how long one line takes from the command line, and where the time before the first read goes.

    python benchmarks/startup.py [--image LINE.png] [--checkpoint shipped:ocr_default] [--repeats 3]
                                 [--modules torch onnx ml_dtypes onnxruntime] [--out runs/bench_startup]

Every timing runs in a fresh Python process (a warm process has its imports and sessions already):
- import: `import numpy`, then the module alone, for each of `--modules` (onnx is imported to build the PP-OCR
  encoder's onnxruntime session from its weights, and it imports ml_dtypes);
- stages, in one process: `import bridgeocr.api`, `BridgeOCR.from_pretrained`, the first `recognize` (its
  onnxruntime session is built here), the same line again (the steady cost of one line);
- the command: `bridgeocr recognize IMAGE`, wall time of the whole process, as a user waits for it.

Without `--image`, one printed line is drawn in DejaVu Sans. Prints the machine (CPU, count, load average before
and after) and the versions that matter, then a Markdown table of the median and range of the repeats; `--out`
also keeps startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
from bridgeocr.experiments.bench import machine_info  # noqa: E402  (the parent only: every timing is a child)

STAGES = r"""
import json, sys, time
t0 = time.perf_counter()
from bridgeocr.api import BridgeOCR
t1 = time.perf_counter()
ocr = BridgeOCR.from_pretrained(sys.argv[1])
t2 = time.perf_counter()
first = ocr.recognize(sys.argv[2])
t3 = time.perf_counter()
ocr.recognize(sys.argv[2])
t4 = time.perf_counter()
print(json.dumps({"import bridgeocr.api": t1 - t0, "load the model": t2 - t1, "first line": t3 - t2,
                  "the same line again": t4 - t3, "text": first[0].text}))
"""


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    return env


def _python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=_env())
    if done.returncode != 0:
        raise SystemExit(f"startup.py: a child process failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def import_seconds(module: str) -> float | None:
    """Seconds to import `module` in a fresh process after numpy (None: not installed)."""
    code = ("import importlib.util, time, numpy\n"
            f"if importlib.util.find_spec({module!r}) is None: print('null')\n"
            f"else:\n t = time.perf_counter(); import {module}; print(time.perf_counter() - t)")
    return json.loads(_python(code))


def stage_seconds(checkpoint: str, image: Path) -> dict:
    return json.loads(_python(STAGES, checkpoint, str(image)).strip().splitlines()[-1])


def command_seconds(checkpoint: str, image: Path) -> float:
    cmd = [sys.executable, "-m", "bridgeocr.cli", "recognize", str(image)]
    if checkpoint != "shipped:ocr_default":
        cmd[4:4] = ["--checkpoint", checkpoint]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if done.returncode != 0:
        raise SystemExit(f"startup.py: bridgeocr recognize failed: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t


def draw_line(folder: Path) -> Path:
    """One printed line in DejaVu Sans (matplotlib's own copy: there on every machine bridgeocr runs on)."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    text = "The quick brown fox jumps over the lazy dog, 1234."
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 28)
    img = Image.new("L", (760, 48), 255)
    ImageDraw.Draw(img).text((8, 6), text, font=font, fill=0)
    path = folder / "line.png"
    img.save(path)
    return path


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})" if len(xs) > 1 else f"{xs[0]:.2f}"


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "onnx", "ml_dtypes", "onnxruntime", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", type=Path, help="a line image (default: one printed line drawn here)")
    ap.add_argument("--checkpoint", default="shipped:ocr_default")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per timing (default 3)")
    ap.add_argument("--modules", nargs="*", default=["torch", "onnx", "ml_dtypes", "onnxruntime"])
    ap.add_argument("--out", type=Path, help="folder for startup.json")
    args = ap.parse_args(argv)
    info = machine_info("cpu")  # the CPU's model name, cores, threads, versions, load average at the start
    with tempfile.TemporaryDirectory() as tmp:
        image = args.image or draw_line(Path(tmp))
        if not image.is_file():
            raise SystemExit(f"startup.py: {image}: no such file")
        imports = {m: [import_seconds(m) for _ in range(args.repeats)] for m in args.modules}
        stages = [stage_seconds(args.checkpoint, image) for _ in range(args.repeats)]
        command = [command_seconds(args.checkpoint, image) for _ in range(args.repeats)]
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {"machine": info, "versions": versions(), "checkpoint": args.checkpoint, "repeats": args.repeats,
              "imports": imports, "stages": stages, "command": command, "text": stages[0]["text"]}
    print(f"machine: {info['cpu']}, {info['cores']} CPUs, load average {info['loadavg_start'][0]:.2f} before, "
          f"{info['loadavg_end'][0]:.2f} after")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()))
    print(f"read: {result['text']!r}\n")
    print("| seconds (median (range) of fresh processes) | |\n|---|---:|")
    for m, xs in imports.items():
        print(f"| import {m} | {'not installed' if None in xs else spread(xs)} |")
    for key in ("import bridgeocr.api", "load the model", "first line", "the same line again"):
        print(f"| {key} | {spread([s[key] for s in stages])} |")
    print(f"| `bridgeocr recognize IMAGE`, the whole process | {spread(command)} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "startup.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
