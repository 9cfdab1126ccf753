"""Kraken as a trained peer: `ketos train` on a bridgeocr line source for a wall-clock budget, then read lines.

Kraken ships no model for the project's hands, so, like the TrOCR baseline, it is trained on our data. It runs
in its own environment (`bash benchmarks/kraken_env.sh` makes `.venv-kraken`; kraken is not a project
dependency): this script runs with the project's python, which reads the data, and calls `ketos` and kraken
in that environment as subprocesses.

  # export SOURCE's train/val splits to a ketos folder (image + .gt.txt), train M minutes, keep the best
  python benchmarks/kraken_peer.py train --data ../shared/data/hooker_htr --minutes 30 --threads 2 \
      --out runs/baselines/kraken_hooker [--batch-size 1] [--freq 1.0] [--max-val N] [--kraken-venv DIR]
  # read line images without segmentation (each image is one line); prints JSON {texts, seconds, engine}
  python benchmarks/kraken_peer.py recognize --model runs/baselines/kraken_hooker LINE.png [LINE2.jpg ...]

Training is ketos's recognition defaults (VGSL, AdamW, early stopping) on CPU with `--workers 0`; ketos has no
time limit of its own, so this script sends it SIGINT at the deadline (Lightning saves
`checkpoint_abort.ckpt` and exits) and keeps the checkpoint with the best validation character accuracy
(ketos's `val_metric`; validated every `--freq` epochs on the source's val split, `-e`). A run whose budget
ends before the first validation keeps the interrupted weights instead (card: `best_val_accuracy` null).
OUT holds model.safetensors, card.json (command, minutes, threads, lines, epochs, best val metric),
ketos.log, the kept checkpoints (ketos/) and the exported lines (lines/, removable).
`benchmarks/peers.py --kraken OUT` puts the model in the peers' table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path(os.environ.get("KRAKEN_VENV", ROOT / ".venv-kraken"))
CKPT_RE = re.compile(r"checkpoint_(\d+)-(\d+\.\d+)(?:-v\d+)?\.ckpt$")
STAGE_RE = re.compile(r"stage (\d+)/\S+[^\d\n]*(\d+)/(\d+)")
GRACE_S = 180  # after SIGINT: Lightning writes checkpoint_abort.ckpt, then ketos exits (slow on a busy CPU)


def venv_tool(venv: str | Path, name: str) -> str:
    """A program of the kraken environment; a clear error if the environment is missing."""
    path = Path(venv) / "bin" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `bash benchmarks/kraken_env.sh {venv}`")
    return str(path)


# ------------------------------------------------------------------------ export (project python)


def export_split(data: str, split: str, folder: Path, max_lines: int | None = None) -> tuple[Path, int]:
    """Write `data[split]` as ketos `path` data (NNNNNN.ext + NNNNNN.gt.txt; numbered names, because ketos
    cuts the name at its last dot) and a manifest of the image paths; returns (manifest, lines). Images are
    copied as they are (ketos converts them itself); in-memory ones are saved as PNG; empty texts are
    dropped, as peers.py drops them."""
    from bridgeocr.data.sources import open_source

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in open_source(data, split):
        text = " ".join(s.text.split())
        if not text:
            continue
        stem = folder / f"{len(paths):06d}"
        if s.image_path is not None and Path(s.image_path).is_file():
            image = stem.with_suffix(Path(s.image_path).suffix.lower() or ".png")
            shutil.copyfile(s.image_path, image)
        elif s.image is not None:
            image = stem.with_suffix(".png")
            s.image.save(image)
        else:
            continue
        stem.with_suffix(".gt.txt").write_text(text + "\n", encoding="utf-8")
        paths.append(str(image.resolve()))
        if max_lines and len(paths) >= max_lines:
            break
    manifest = folder.with_suffix(".txt")
    manifest.write_text("\n".join(paths) + "\n", encoding="utf-8")
    return manifest, len(paths)


# ------------------------------------------------------------------------------------------ training


def ketos_command(venv, train_manifest: Path, val_manifest: Path, ckpt_dir: Path, threads: int,
                  batch_size: int, freq: float, extra: list[str]) -> list[str]:
    """`ketos train` with its defaults but for CPU, threads, in-process data loading and our splits."""
    return [venv_tool(venv, "ketos"), "-d", "cpu", "--threads", str(threads), "--workers", "0",
            "train", "-f", "path", "-t", str(train_manifest), "-e", str(val_manifest), "-o", str(ckpt_dir),
            "-B", str(batch_size), "-F", str(freq), *extra]


def run_until(cmd: list[str], seconds: float, log: Path, env: dict) -> tuple[str, float]:
    """Run `cmd` (output to `log`) until it exits or `seconds` pass; at the deadline SIGINT, so Lightning
    checkpoints and exits, then SIGKILL after GRACE_S. Returns (who stopped it, wall seconds)."""
    t0 = time.monotonic()
    with open(log, "w", encoding="utf-8") as fp:
        proc = subprocess.Popen(cmd, stdout=fp, stderr=subprocess.STDOUT, env=env)
        try:
            proc.wait(timeout=seconds)
            return ("ketos" if proc.returncode == 0 else f"ketos failed (exit {proc.returncode})",
                    time.monotonic() - t0)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=GRACE_S)
            raise
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return "deadline", time.monotonic() - t0


def validated_checkpoints(ckpt_dir: Path) -> list[tuple[float, int, Path]]:
    """(val_metric, epoch, path) of ketos's validated checkpoints, best first (metric from the name)."""
    found = []
    for p in ckpt_dir.glob("checkpoint_*.ckpt"):
        m = CKPT_RE.search(p.name)
        if m:
            found.append((float(m.group(2)), int(m.group(1)), p))
    return sorted(found, key=lambda t: (-t[0], -t[2].stat().st_mtime))  # ties: the later (trained longer)


def epochs_done(log: Path) -> float | None:
    """Epochs trained, from the last progress line ketos printed ("stage E/N ... i/n": one per finished
    epoch, and one for the interrupted one); checkpoints cannot tell, ketos keeps only its top 10."""
    matches = STAGE_RE.findall(log.read_text(encoding="utf-8", errors="replace"))
    if not matches:
        return None
    epoch, done, total = (int(x) for x in matches[-1])
    return round(epoch + done / total, 3) if total else float(epoch)


def train(a: argparse.Namespace) -> dict:
    """Export, train to the deadline, convert the kept checkpoint to OUT/model.safetensors, write card.json."""
    out = Path(a.out)
    ckpt_dir = out / "ketos"
    if ckpt_dir.exists() and any(ckpt_dir.glob("*.ckpt")):
        raise FileExistsError(f"{ckpt_dir} already holds checkpoints: pick a new --out")
    train_list, n_train = export_split(a.data, a.train_split, out / "lines" / "train", a.max_train)
    val_list, n_val = export_split(a.data, a.val_split, out / "lines" / "val", a.max_val)
    print(f"exported {n_train} train / {n_val} val lines to {out / 'lines'}", flush=True)
    extra = ["-q", "fixed", "-N", str(a.epochs)] if a.epochs else []
    cmd = ketos_command(a.kraken_venv, train_list, val_list, ckpt_dir, a.threads, a.batch_size, a.freq,
                        extra + list(a.ketos_arg or []))
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               PYTHONUNBUFFERED="1")  # the log is whole even if ketos has to be killed
    print(f"ketos for {a.minutes:g} min: {' '.join(cmd)}", flush=True)
    stopped_by, wall = run_until(cmd, a.minutes * 60, out / "ketos.log", env)
    print(f"ketos stopped by {stopped_by} after {wall:.0f} s (log: {out / 'ketos.log'})", flush=True)

    ranked = validated_checkpoints(ckpt_dir)
    abort = ckpt_dir / "checkpoint_abort.ckpt"
    if ranked:
        best_val, best_epoch, kept = ranked[0]
    elif abort.is_file():
        best_val, best_epoch, kept = None, None, abort
    else:
        last = (out / "ketos.log").read_text(encoding="utf-8", errors="replace").strip().splitlines() or ["?"]
        raise RuntimeError(f"ketos ({stopped_by}) wrote no checkpoint in {a.minutes:g} min: {last[-1]} "
                           f"(see {out / 'ketos.log'})")
    newest = max(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    model = out / "model.safetensors"
    conv = subprocess.run([venv_tool(a.kraken_venv, "ketos"), "convert", "-o", str(model), str(kept)],
                          capture_output=True, text=True, check=False)
    if conv.returncode != 0 or not model.is_file():
        raise RuntimeError(f"ketos convert failed: {(conv.stderr.strip().splitlines() or ['?'])[-1]}")
    for _, _, p in ranked[1:]:  # ketos keeps its top 10 (about 50 MB each): keep the best and the last
        if p != newest:
            p.unlink()
    card = {"system": "kraken", "kraken": _kraken_version(a.kraken_venv), "command": cmd,
            "data": a.data, "train_split": a.train_split, "val_split": a.val_split,
            "lines": {"train": n_train, "val": n_val}, "minutes": a.minutes, "threads": a.threads,
            "batch_size": a.batch_size, "wall_s": round(wall, 1), "stopped_by": stopped_by,
            "epochs_done": epochs_done(out / "ketos.log"), "freq": a.freq,
            "best_val_accuracy": best_val, "best_epoch": best_epoch,
            "val_metric": "ketos val_metric = character accuracy (1 - CER) on the val split",
            "checkpoint": str(kept), "model": str(model)}
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def _kraken_version(venv) -> str | None:
    out = subprocess.run([venv_tool(venv, "python"), "-c",
                          "from importlib.metadata import version; print(version('kraken'))"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


# --------------------------------------------------------------------------------------- recognition


def model_file(model: str | Path) -> Path:
    """OUT/model.safetensors (or .mlmodel) of a `train` output dir, or a weights file itself."""
    path = Path(model)
    if path.is_dir():
        for name in ("model.safetensors", "model.mlmodel"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: no model.safetensors or model.mlmodel (benchmarks/kraken_peer.py train)")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return path


def recognize(model: str | Path, paths: list[str], threads: int = 1, venv: str | Path = DEFAULT_VENV,
              tmp: Path | None = None) -> tuple[list[str], float, str]:
    """(texts, seconds, engine) for line images, read in the kraken environment by a worker subprocess of
    this file. Model loading and one warm-up line are not timed (as in peers.py)."""
    import tempfile

    weights = model_file(model).resolve()
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        lst, res = Path(d) / "lines.txt", Path(d) / "out.json"
        lst.write_text("\n".join(paths) + "\n", encoding="utf-8")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        proc = subprocess.run([venv_tool(venv, "python"), __file__, "--worker", str(weights), "--lines", str(lst),
                               "--out", str(res), "--threads", str(threads)],
                              capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"kraken worker failed in {venv}: {last}")
        data = json.loads(res.read_text())
    return data["texts"], data["seconds"], data["engine"]


def _recognize_here(weights: str, paths: list[str], threads: int) -> dict:
    """In the kraken environment: each image is one whole line (a bbox line over the image: what
    `kraken ocr --no-segmentation` does), read with kraken's task API, greedy CTC, in-process extraction."""
    import torch
    from kraken.configs import RecognitionInferenceConfig
    from kraken.containers import BBoxLine, Segmentation
    from kraken.lib.util import open_image
    from kraken.tasks import RecognitionTaskModel

    torch.set_num_threads(threads)
    net = RecognitionTaskModel.load_model(weights)
    config = RecognitionInferenceConfig(accelerator="cpu", device="auto", num_threads=threads, num_line_workers=0)

    def read(p):
        im = open_image(p)
        seg = Segmentation(type="bbox", imagename=p, text_direction="horizontal-tb", script_detection=False,
                           lines=[BBoxLine(id="line", bbox=(0, 0, im.width, im.height))])
        return " ".join(" ".join(rec.prediction.split()) for rec in net.predict(im=im, segmentation=seg,
                                                                                config=config))

    if paths:
        read(paths[0])  # warm-up
    t0 = time.perf_counter()
    texts = [read(p) for p in paths]
    seconds = time.perf_counter() - t0
    from importlib.metadata import version

    return {"texts": texts, "seconds": seconds,
            "engine": f"kraken {version('kraken')} {type(net.net).__name__}, greedy CTC ({Path(weights).parent.name})"}


def _worker(argv: list[str]) -> int:
    """`kraken_peer.py --worker WEIGHTS --lines LIST --out JSON`: runs in the kraken environment."""
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True)
    p.add_argument("--lines", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    paths = [line for line in Path(a.lines).read_text(encoding="utf-8").splitlines() if line]
    Path(a.out).write_text(json.dumps(_recognize_here(a.worker, paths, a.threads)))
    return 0


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        return _worker(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="ketos train on a source's train split for a wall-clock budget")
    t.add_argument("--data", required=True, metavar="SOURCE", help="a bridgeocr line source")
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, required=True, help="wall-clock budget, ketos's start-up included")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=1, help="ketos -B (default 1, ketos's own)")
    t.add_argument("--freq", type=float, default=1.0,
                   help="ketos -F: validate (and checkpoint) every FREQ epochs; < 1 for fractions (default 1)")
    t.add_argument("--epochs", type=int, default=None, help="ketos -q fixed -N EPOCHS (default: early stopping)")
    t.add_argument("--train-split", default="train")
    t.add_argument("--val-split", default="val")
    t.add_argument("--max-train", type=int, default=None, help="first N train lines only")
    t.add_argument("--max-val", type=int, default=None, help="first N val lines only (faster validation)")
    t.add_argument("--ketos-arg", action="append", metavar="ARG", help="extra `ketos train` argument; repeat")
    t.add_argument("--kraken-venv", default=str(DEFAULT_VENV))
    r = sub.add_parser("recognize", help="read line images (no segmentation); prints JSON texts + seconds")
    r.add_argument("--model", required=True, help="a `train` output dir or a weights file")
    r.add_argument("images", nargs="*")
    r.add_argument("--lines", default=None, help="a file with one image path per line")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--kraken-venv", default=str(DEFAULT_VENV))
    a = p.parse_args(argv)
    if a.cmd == "train":
        card = train(a)
        print(json.dumps({k: card[k] for k in ("lines", "minutes", "wall_s", "stopped_by", "epochs_done",
                                                "best_val_accuracy", "model")}))
        return 0
    paths = list(a.images)
    if a.lines:
        paths += [x for x in Path(a.lines).read_text(encoding="utf-8").splitlines() if x]
    texts, seconds, engine = recognize(a.model, paths, a.threads, a.kraken_venv)
    print(json.dumps({"texts": texts, "seconds": seconds, "engine": engine}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
