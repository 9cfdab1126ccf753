"""Off-the-shelf OCR next to ours on the same text lines: CER, WER, lines/s.

Peers (none is a project dependency; see benchmarks/requirements-peers.txt):
  tesseract  Tesseract 5 LSTM, single-line mode: the `tesserocr` binding, else the `tesseract` CLI
  rapidocr   PP-OCRv6 recognition (ONNX, models in the `rapidocr` wheel), on the line crop (no detection)
  ours       a bridgeocr checkpoint (--checkpoint), read the way its config says (decoding: gpt | ctc | joint)
  trocr      a TrOCR-style encoder-decoder trained like one of our runs (--trocr DIR, made by
             benchmarks/trocr_baseline.py train), greedy decoding; runs here (project deps only)
  kraken     Kraken's VGSL CTC recognizer trained with `ketos train` on the same data (--kraken DIR, made by
             benchmarks/kraken_peer.py train), each line image read whole (no segmentation); runs in
             `.venv-kraken` (benchmarks/kraken_env.sh), row "kraken (ketos, N min)"

The script runs in the project's environment (it reads the data and scores with bridgeocr); a peer that is
not importable here runs in the peers' environment (`--peer-python`, default `.venv-peers/bin/python`)
as a worker subprocess of this same file. A peer that is available nowhere is skipped with a message.

  python benchmarks/peers.py --data runs/data/synth@test --data ../shared/data/hooker_htr@val --max-samples 200 \
      [--checkpoint runs/train/x/best] [--trocr runs/baselines/trocr_x] [--kraken runs/baselines/kraken_x] \
      [--out runs/peers]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEERS = ("tesseract", "rapidocr")
DECODING_SUFFIXES = ("@gpt", "@ctc", "@joint")  # --checkpoint DIR@ctc reads DIR with that decoding
TESSDATA_DIRS = ("/usr/share/tesseract-ocr/5/tessdata/", "/usr/share/tesseract-ocr/4.00/tessdata/",
                 "/usr/share/tessdata/")
DEFAULT_PEER_PYTHON = Path(__file__).resolve().parents[1] / ".venv-peers" / "bin" / "python"


# ------------------------------------------------------------------------------- peers (no bridgeocr)


def _tessdata() -> str | None:
    env = os.environ.get("TESSDATA_PREFIX")
    for d in ([env] if env else []) + list(TESSDATA_DIRS):
        if d and (Path(d) / "eng.traineddata").is_file():
            return d if d.endswith("/") else d + "/"
    return None


def available(peer: str) -> tuple[bool, str]:
    """(usable in this interpreter, how / why not)."""
    if peer == "tesseract":
        if importlib.util.find_spec("tesserocr") is not None and _tessdata():
            return True, "tesserocr"
        if shutil.which("tesseract"):
            return True, "tesseract CLI"
        return False, "needs `tesserocr` (pip) or the `tesseract` binary (apt: tesseract-ocr tesseract-ocr-eng)"
    if peer == "rapidocr":
        if importlib.util.find_spec("rapidocr") and importlib.util.find_spec("onnxruntime"):
            return True, "rapidocr PP-OCRv6 rec (onnxruntime)"
        return False, "needs `rapidocr` and `onnxruntime` (pip)"
    return False, f"unknown peer {peer!r}"


def recognize(peer: str, paths: list[str], threads: int = 2) -> tuple[list[str], float, str]:
    """Transcribe every image; returns (texts, seconds spent recognizing, engine label). Model loading
    and one warm-up line are not timed."""
    from PIL import Image

    ok, how = available(peer)
    if not ok:
        raise RuntimeError(how)
    if peer == "tesseract" and how == "tesserocr":
        import tesserocr

        with tesserocr.PyTessBaseAPI(path=_tessdata(), lang="eng", psm=tesserocr.PSM.SINGLE_LINE) as api:
            def run(p):
                with Image.open(p) as im:
                    api.SetImage(im.convert("L"))
                return api.GetUTF8Text()
            return _timed(run, paths) + (how,)
    if peer == "tesseract":
        env = dict(os.environ, OMP_THREAD_LIMIT=str(threads))

        def run(p):
            out = subprocess.run(["tesseract", p, "stdout", "--psm", "7", "-l", "eng"], capture_output=True,
                                 text=True, env=env, check=False)
            return out.stdout
        return _timed(run, paths) + (how,)
    if peer == "rapidocr":
        import numpy as np
        from rapidocr import RapidOCR

        engine = RapidOCR(params={"Global.log_level": "error", "Global.use_det": False, "Global.use_cls": False,
                                  "EngineConfig.onnxruntime.intra_op_num_threads": threads})

        def run(p):
            with Image.open(p) as im:
                arr = np.array(im.convert("RGB"))
            res = engine(arr, use_det=False, use_cls=False, use_rec=True)
            return " ".join(res.txts or ())
        return _timed(run, paths) + (how,)
    raise RuntimeError(f"unknown peer {peer!r}")


def _timed(run, paths):
    if paths:
        run(paths[0])  # warm-up
    t0 = time.perf_counter()
    texts = [" ".join(str(run(p)).split()) for p in paths]
    return texts, time.perf_counter() - t0


def _worker(argv: list[str]) -> int:
    """`peers.py --worker PEER --lines LIST --out JSON`: runs in the peers' environment."""
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True)
    p.add_argument("--lines", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    paths = [line for line in Path(a.lines).read_text(encoding="utf-8").splitlines() if line]
    texts, seconds, how = recognize(a.worker, paths, a.threads)
    Path(a.out).write_text(json.dumps({"texts": texts, "seconds": seconds, "engine": how}))
    return 0


# ------------------------------------------------------------------------------------------- driver


def _lines(data: str, split: str | None, max_samples: int | None, tmp: Path):
    """(ids, image paths, references) from a bridgeocr source; in-memory images saved as PNG."""
    from bridgeocr.data.sources import open_source

    return line_files(list(open_source(data, split))[: max_samples or None], tmp)


def line_files(samples, tmp: Path):
    """LineSamples -> (ids, image paths, references) of those with text and an image, the peers' input:
    an image file as it is, an in-memory image (a line cut from a page) saved as PNG in `tmp`."""
    ids, paths, refs = [], [], []
    for i, s in enumerate(samples):
        if not s.text.strip():
            continue
        if s.image_path is not None and Path(s.image_path).is_file():
            path = str(s.image_path)
        elif s.image is not None:
            path = str(tmp / f"{i}.png")
            s.image.save(path)
        else:
            continue
        ids.append(s.id)
        paths.append(path)
        refs.append(s.text)
    return ids, paths, refs


def _run_peer(peer: str, paths: list[str], tmp: Path, peer_python: str | None, threads: int):
    ok, how = available(peer)
    python = peer_python or (str(DEFAULT_PEER_PYTHON) if DEFAULT_PEER_PYTHON.is_file() else None)
    fallback = how.endswith("CLI")  # the tesseract CLI: one process per line, prefer the binding
    if ok and not (fallback and python):
        return recognize(peer, paths, threads)
    if python is None:
        raise RuntimeError(f"{how}; install benchmarks/requirements-peers.txt into .venv-peers")
    lst, out = tmp / f"{peer}.lines", tmp / f"{peer}.json"
    lst.write_text("\n".join(paths) + "\n", encoding="utf-8")
    proc = subprocess.run([python, __file__, "--worker", peer, "--lines", str(lst), "--out", str(out),
                           "--threads", str(threads)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"not usable in {python}: {last}")
    data = json.loads(out.read_text())
    return data["texts"], data["seconds"], f"{data['engine']} ({Path(python).parent.parent.name})"


def _run_ours(checkpoint: str, data: str, split: str | None, max_samples: int | None, threads: int):
    import torch

    from bridgeocr.data.sources import open_source
    from bridgeocr.eval.evaluate import evaluate_model, load_checkpoint

    torch.set_num_threads(threads)
    checkpoint, _, decoding = checkpoint.rpartition("@") if checkpoint.endswith(DECODING_SUFFIXES) \
        else (checkpoint, "", None)  # DIR@ctc: that checkpoint, read with one decoding
    model, image_cfg, _ = load_checkpoint(checkpoint)
    source = [s for s in list(open_source(data, split))[: max_samples or None] if s.text.strip()]
    res = evaluate_model(model, source, image_cfg, batch_size=32, progress=False, decoding=decoding or None)
    return res["refs"], res["hyps"], res["seconds"], f"bridgeocr {res['decoding']} ({checkpoint})"


def _run_trocr(model_dir: str, data: str, split: str | None, max_samples: int | None, threads: int):
    import torch

    from bridgeocr.data.sources import open_source
    from bridgeocr.eval.evaluate import evaluate_baseline
    from bridgeocr.models.encdec import load_baseline

    torch.set_num_threads(threads)
    model, tok, image_cfg, card = load_baseline(model_dir)
    source = [s for s in list(open_source(data, split))[: max_samples or None] if s.text.strip()]
    res = evaluate_baseline(model, source, image_cfg, tok, batch_size=32,
                            max_new_tokens=int(card.get("max_new_tokens", 160)))
    return res["refs"], res["hyps"], res["seconds"], f"VisionEncoderDecoder greedy ({Path(model_dir).name})"


def _kraken_peer():
    """benchmarks/kraken_peer.py as a module (this file may be loaded from a path, so no plain import)."""
    spec = importlib.util.spec_from_file_location("kraken_peer", Path(__file__).with_name("kraken_peer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kraken_label(model_dir: str) -> str:
    """'kraken (ketos, N min)' from the training card: the budget is part of what the row means."""
    card = Path(model_dir) / "card.json"
    minutes = json.loads(card.read_text()).get("minutes") if card.is_file() else None
    return f"kraken (ketos, {minutes:g} min)" if minutes is not None else "kraken (ketos)"


def _run_kraken(model_dir: str, paths: list[str], tmp: Path, venv: str | None, threads: int):
    """Reads the same image files as the peers, in the kraken environment (a worker of kraken_peer.py)."""
    kp = _kraken_peer()
    return kp.recognize(model_dir, paths, threads, venv or kp.DEFAULT_VENV, tmp=tmp)


def format_table(rows: list[dict]) -> str:
    out = ["| set | system | lines | CER | WER | lines/s | engine |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.get("skipped"):
            out.append(f"| {r['set']} | {r['system']} | – | – | – | – | skipped: {r['skipped']} |")
        else:
            out.append(f"| {r['set']} | {r['system']} | {r['lines']} | {r['cer']:.4f} | {r['wer']:.4f} | "
                       f"{r['lines_per_s']:.1f} | {r['engine']} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        return _worker(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, metavar="SOURCE",
                   help="a line source (synth dir, manifest, Hooker dir), optionally SOURCE@SPLIT; repeatable")
    p.add_argument("--split", default="val", help="split of every source (default val; 'all' for all lines)")
    p.add_argument("--max-samples", type=int, default=200)
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma list from {PEERS} (default all)")
    p.add_argument("--checkpoint", action="append", default=None,
                   help="our model dir (or shipped:NAME, or an encoder dir), to score alongside; DIR@ctc|@gpt|@joint "
                   "reads it with that decoding (default: its own); repeat for several")
    p.add_argument("--trocr", default=None, metavar="DIR",
                   help="a TrOCR-style baseline dir (benchmarks/trocr_baseline.py train), to score alongside")
    p.add_argument("--kraken", default=None, metavar="DIR",
                   help="a Kraken model dir (benchmarks/kraken_peer.py train), to score alongside")
    p.add_argument("--kraken-venv", default=None, help="the kraken environment (default .venv-kraken)")
    p.add_argument("--peer-python", default=None, help="python of the peers' environment")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/peers")
    a = p.parse_args(argv)
    from bridgeocr.eval.metrics import cer, wer

    peers = [x.strip() for x in a.peers.split(",") if x.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        for spec in a.data:
            data, _, own = spec.rpartition("@") if "@" in spec else (spec, "", "")
            set_split = own or a.split
            split = None if set_split == "all" else set_split
            label = f"{Path(data).name}:{set_split}"
            ids, paths, refs = _lines(data, split, a.max_samples, tmp)
            print(f"{label}: {len(paths)} lines", flush=True)
            systems = [(peer, None) for peer in peers]
            if a.trocr:
                systems.append(("trocr", a.trocr))
            if a.kraken:
                systems.append(("kraken", a.kraken))
            systems += [("ours", ckpt) for ckpt in a.checkpoint or []]
            for name, ckpt in systems:
                system = _kraken_label(ckpt) if name == "kraken" else name
                try:
                    if name == "trocr":
                        r, hyps, seconds, how = _run_trocr(ckpt, data, split, a.max_samples, a.threads)
                    elif name == "kraken":
                        hyps, seconds, how = _run_kraken(ckpt, paths, tmp, a.kraken_venv, a.threads)
                        r = refs
                    elif ckpt:
                        r, hyps, seconds, how = _run_ours(ckpt, data, split, a.max_samples, a.threads)
                    else:
                        hyps, seconds, how = _run_peer(name, paths, tmp, a.peer_python, a.threads)
                        r = refs
                except Exception as exc:  # a peer that fails must not lose the others
                    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    print(f"  {system}: skipped ({msg})", flush=True)
                    rows.append({"set": label, "system": system, "skipped": msg})
                    continue
                row = {"set": label, "system": system, "lines": len(r), "cer": cer(r, hyps), "wer": wer(r, hyps),
                       "seconds": seconds, "lines_per_s": len(r) / seconds if seconds > 0 else 0.0,
                       "engine": how, "threads": a.threads}
                rows.append(row)
                print(f"  {system}: CER {row['cer']:.4f}  WER {row['wer']:.4f}  {row['lines_per_s']:.1f} lines/s",
                      flush=True)
    table = format_table(rows)
    print(table, end="")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "peers.md").write_text(table)
    print(f"wrote {out / 'peers.json'} and {out / 'peers.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
