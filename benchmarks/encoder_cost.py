"""What the PP-OCR encoder costs on this CPU, and what cheaper ways of running it buy and lose.

    python benchmarks/encoder_cost.py [--checkpoint shipped:encoder_ctc] [--checkpoint DIR ...] \
        [--set print=runs/bench/print_heldout@test --set ehri=runs/data/ehri_lines@val] [--max-samples 150] \
        [--calibration runs/data/ehri_lines@train] [--heights 40 32] [--out runs/bench_encoder_cost]

For the first checkpoint: multiply-accumulates per line (ONNX shape inference at a 608 px line, the print set's
mean width) by kind of convolution; onnxruntime's time per line at one thread and the MACs per second that makes;
its profile by op. Then each variant of it, and every further checkpoint (e.g. one fine-tuned at another height),
read with its CTC head on every set at batch 32, two threads: CER and lines/s, beside the time per line at one
thread. Variants: as shipped (float32 in onnxruntime); int8 (onnxruntime.quantization's static QDQ, per-channel
int8 weights and uint8 activations calibrated on `--calibration` lines, convolutions only); read at a lower
height without training (`--heights`, the line as wide as before, so its frames per letter stay the same);
without some residual MLPs, or with them narrowed, untrained (`--drop-mlps`, `--shrink-mlps`: models/ppocr.drop_mlps,
shrink_mlps; their stand-ins or output convs fitted on the calibration lines).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decoding import machine, parse_set  # noqa: E402  (benchmarks/decoding.py)

from bridgeocr.data.sources import open_source  # noqa: E402
from bridgeocr.eval.evaluate import evaluate_model, load_checkpoint, make_loader  # noqa: E402
from bridgeocr.models.onnx_graph import conv_macs, ort_session  # noqa: E402
from bridgeocr.models.ppocr import drop_mlps, shrink_mlps  # noqa: E402

DEFAULT_SETS = ("print=runs/bench/print_heldout@test", "hand=runs/bench/hand_heldout@test",
                "ehri=runs/data/ehri_lines@val")
PROBE_WIDTH = 608  # px at height 48: the held-out print lines' mean width


def probe(s, height: int, width: int = PROBE_WIDTH) -> dict:
    """One random line [1, 3, height, width] as the session's feed."""
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, height, width)).astype(np.float32)
    return {s.get_inputs()[0].name: x}


def ms_per_line(model_bytes: bytes, height: int, width: int = PROBE_WIDTH, runs: int = 20) -> float:
    """Median milliseconds of one [1, 3, height, width] call at one thread (3 warm-up calls first)."""
    s = ort_session(model_bytes, 1)
    x = probe(s, height, width)
    for _ in range(3):
        s.run(None, x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, x)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def conv_macs_by_kind(model, height: int, width: int = PROBE_WIDTH) -> dict[str, float]:
    """Multiply-accumulates of the graph's convolutions on one line, by kind (pointwise / depthwise / other)."""
    from onnx import helper

    per_node = conv_macs(model, (1, 3, height, width))
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    macs: dict[str, float] = collections.Counter()
    for node in model.graph.node:
        if node.output[0] not in per_node:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kind = ("depthwise" if attrs.get("group", 1) > 1 else
                "pointwise 1x1" if weights[node.input[1]][2:] == [1, 1] else "full k x k")
        macs[kind] += per_node[node.output[0]]
    return dict(macs)


def op_profile(model_bytes: bytes, height: int, runs: int = 10) -> list[tuple[str, float]]:
    """onnxruntime's own profile at one thread: (op, share of the kernel time), largest first."""
    s = ort_session(model_bytes, 1, profile=True)
    x = probe(s, height)
    for _ in range(runs):
        s.run(None, x)
    path = s.end_profiling()
    events = json.loads(Path(path).read_text())
    Path(path).unlink(missing_ok=True)
    by_op: dict[str, float] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values()) or 1
    return [(op, t / total) for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])]


def int8_model(model, reader, image_cfg, calibration: list, tmp: Path) -> bytes:
    """Static QDQ int8 of the convolutions, calibrated on real lines at their own widths (as the encoder reads)."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    feeds = [x.numpy() for x in line_inputs(reader, image_cfg, calibration)]

    class Lines(CalibrationDataReader):
        def __init__(self):
            self.items = iter({model.graph.input[0].name: x} for x in feeds)

        def get_next(self):
            return next(self.items, None)

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process the model, once per call
    src, dst = tmp / "fp32.onnx", tmp / "int8.onnx"
    onnx.save(version_converter.convert_version(model, 17), str(src))  # per-channel QDQ needs opset >= 13
    quantize_static(str(src), str(dst), Lines(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])
    return dst.read_bytes()


def read_at(reader, image_cfg, height: int):
    """Point the reader's encoder at another line height, untrained, each line as wide as before (its frames per
    letter unchanged) -> the image settings to read with, from `image_cfg` (the settings at its own height).
    The encoder's `image_height` follows its `image` settings."""
    reader.encoder.image["height"] = height
    return replace(image_cfg, height=height, width_scale=image_cfg.width_scale * image_cfg.height / height)


def line_inputs(reader, image_cfg, lines: list) -> list[torch.Tensor]:
    """The encoder's network input for each line, at its own width (as the encoder reads it)."""
    loader = make_loader(lines, image_cfg, reader.tokenizer, batch_size=1, shuffle=False)
    return [reader.encoder.line_input(b.images, b.image_mask) for b in loader]


def without_mlps(reader, spec: str, calibration: list[torch.Tensor]) -> tuple[str, bytes]:
    """`N,N[:RANK|:cut]` -> (row label, the trunk without those residual MLPs, each replaced by a linear
    stand-in of rank RANK (default 64) fitted on the calibration inputs, or cut out)."""
    which, _, rank = spec.partition(":")
    numbers = [int(x) for x in which.split(",") if x]
    encoder = copy.deepcopy(reader.encoder)
    if rank == "cut":
        drop_mlps(encoder, numbers)
        how = "cut out"
    else:
        drop_mlps(encoder, numbers, calibration=calibration, rank=int(rank or 64))
        how = f"rank-{int(rank or 64)} stand-ins"
    return f"without MLPs {which} ({how}), untrained", encoder.graph.to_onnx().SerializeToString()


def narrower_mlps(reader, spec: str, calibration: list[torch.Tensor]) -> tuple[str, bytes]:
    """`N,N:KEEP` -> (row label, the trunk with those residual MLPs narrowed to KEEP of their hidden channels,
    each re-fitted on the calibration inputs)."""
    which, _, keep = spec.partition(":")
    encoder = shrink_mlps(copy.deepcopy(reader.encoder), [int(x) for x in which.split(",") if x], float(keep or 0.5),
                          calibration)
    return (f"MLPs {which} at {float(keep or 0.5):g} of their hidden width (re-fitted), untrained",
            encoder.graph.to_onnx().SerializeToString())


def read_ctc(reader, image_cfg, sets: dict, model_bytes: bytes | None = None) -> dict:
    """CTC-head CER and lines/s on every set at batch 32; `model_bytes`: run this graph instead of the encoder's."""
    runner = reader.encoder._ort
    with runner.replaced_by(model_bytes) if model_bytes is not None else contextlib.nullcontext():
        out = {}
        first = next(iter(sets.values()))
        evaluate_model(reader, first[:4], image_cfg, batch_size=4, progress=False, decoding="ctc")  # warm-up
        for name, lines in sets.items():
            res = evaluate_model(reader, lines, image_cfg, batch_size=32, progress=False, decoding="ctc")
            out[name] = (res["cer"], res["lines_per_s"])
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", default=None,
                    help="an encoder directory (repeatable; default shipped:encoder_ctc); the first gets the variants")
    ap.add_argument("--set", dest="sets", action="append", default=None, metavar="NAME=SOURCE[@SPLIT]")
    ap.add_argument("--max-samples", type=int, default=150)
    ap.add_argument("--calibration", nargs="+", default=["runs/data/ehri_lines@train"], metavar="SOURCE[@SPLIT]",
                    help="lines the int8 variant and the MLP stand-ins are calibrated on, the first of each source in "
                         "equal shares (none of the sets'; default the EHRI train pages)")
    ap.add_argument("--calibration-lines", type=int, default=32)
    ap.add_argument("--heights", type=int, nargs="*", default=[40, 32], help="read at these heights untrained")
    ap.add_argument("--drop-mlps", nargs="*", default=[], metavar="N,N[:RANK]",
                    help="variants without these residual MLPs (scripts/drop_mlps.py --list), untrained: each replaced "
                         "by a linear stand-in of rank RANK (default 64) fitted on the calibration lines, or cut out "
                         "(:cut); e.g. 11 5,11 5,7,9,11:32")
    ap.add_argument("--shrink-mlps", nargs="*", default=[], metavar="N,N[:KEEP]",
                    help="variants with these residual MLPs narrowed to KEEP (default 0.5) of their hidden channels, "
                         "the output conv re-fitted on the calibration lines (models/ppocr.shrink_mlps), untrained")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="folder for encoder_cost.json and encoder_cost.md")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    info = machine("cpu")
    sets = {}
    for spec in args.sets or DEFAULT_SETS:
        name, source, split, _ = parse_set(spec)
        sets[name] = [s for s in open_source(source, split) if s.text.strip()][: args.max_samples or None]
    checkpoints = args.checkpoint or ["shipped:encoder_ctc"]
    reader, image_cfg, _ = load_checkpoint(checkpoints[0])
    model = reader.encoder.graph.to_onnx()
    height = reader.encoder.image_height
    lines = [f"{checkpoints[0]}; {info['cpu']}, {info['cores']} cores; load average {info['load_before']:.2f} "
             f"before; {info['date']}", ""]

    macs = conv_macs_by_kind(model, height)
    ms = ms_per_line(model.SerializeToString(), height)
    total = sum(macs.values())
    lines += [f"## Cost of one {PROBE_WIDTH} px line at height {height}",
              f"{total / 1e9:.2f} GMAC in convolutions ("
              + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(macs.items(), key=lambda kv: -kv[1]))
              + f"); onnxruntime at 1 thread: {ms:.1f} ms, {total / ms / 1e6:.1f} GMAC/s", "",
              "onnxruntime's profile (share of kernel time): "
              + ", ".join(f"{op} {share:.1%}" for op, share in op_profile(model.SerializeToString(), height)[:8]), ""]
    print("\n".join(lines), flush=True)

    rows = []

    def row(label, ms_line, result):
        rows.append({"variant": label, "ms_per_line_1_thread": ms_line,
                     **{f"{k}_cer": v[0] for k, v in result.items()}, **{f"{k}_lines_per_s": v[1] for k, v in result.items()}})
        print(f"  {label}: {ms_line:.1f} ms/line; " + "; ".join(
            f"{k} CER {c:.4f} at {s:.1f} lines/s" for k, (c, s) in result.items()), flush=True)

    row("as shipped (float32)", ms, read_ctc(reader, image_cfg, sets))
    with tempfile.TemporaryDirectory() as tmp:
        calibration = []  # the first lines of each source, in equal shares
        for spec in args.calibration:
            cal_source, _, cal_split = spec.partition("@")
            share = max(1, args.calibration_lines // len(args.calibration))
            calibration += [s for s in open_source(cal_source, cal_split or None) if s.text.strip()][:share]
        q = int8_model(model, reader, image_cfg, calibration, Path(tmp))
        row("int8 (static QDQ, per channel)", ms_per_line(q, height), read_ctc(reader, image_cfg, sets, q))
        inputs = line_inputs(reader, image_cfg, calibration) if args.drop_mlps or args.shrink_mlps else []
        for make, specs in ((without_mlps, args.drop_mlps), (narrower_mlps, args.shrink_mlps)):
            for spec in specs:
                label, cut = make(reader, spec, inputs)
                row(label, ms_per_line(cut, height), read_ctc(reader, image_cfg, sets, cut))
    for h in args.heights:
        cfg = read_at(reader, image_cfg, h)
        row(f"height {h}, untrained", ms_per_line(model.SerializeToString(), h), read_ctc(reader, cfg, sets))
    for ckpt in checkpoints[1:]:
        other, other_cfg, _ = load_checkpoint(ckpt)
        row(f"{ckpt} (height {other.encoder.image_height})",
            ms_per_line(other.encoder.graph.to_onnx().SerializeToString(), other.encoder.image_height),
            read_ctc(other, other_cfg, sets))

    names = list(sets)
    table = ["| variant | ms per line, 1 thread | " + " | ".join(f"{n} CER | {n} lines/s" for n in names) + " |",
             "|---|---:|" + "---:|---:|" * len(names)]
    table += [f"| {r['variant']} | {r['ms_per_line_1_thread']:.1f} | "
              + " | ".join(f"{r[n + '_cer']:.4f} | {r[n + '_lines_per_s']:.1f}" for n in names) + " |" for r in rows]
    info["load_after"] = os.getloadavg()[0]
    text = "\n".join(lines + [f"## Ways of running it: CTC head, batch 32, {args.threads} threads "
                              f"({', '.join(f'{n} {len(v)} lines' for n, v in sets.items())}); load average "
                              f"{info['load_after']:.2f} after", ""] + table)
    print("\n" + text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "encoder_cost.json").write_text(json.dumps({"machine": info, "macs": macs, "rows": rows}, indent=2))
        (out / "encoder_cost.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
