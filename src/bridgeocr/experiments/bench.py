"""Connector speed benchmark: parameters, visual tokens, training step time, greedy decode throughput and
peak memory for every connector, next to a TrOCR-style encoder-decoder of equal size.

What one cell measures (one connector x one line width x one model size), on random weights and random
full-width line images (every column real, so every visual token is real):

- `params`: all parameters of the model (encoder + connector + decoder), `connector_params` the bridge only.
- `visual_tokens`: tokens the decoder reads. Decoder-only rows: the connector's output M, which enters the
  GPT's self-attention as a prefix. Encoder-decoder row: the encoder's N tokens, which the decoder reads
  through cross-attention (its self-attention holds text only).
- `train_step_s`: one training step on a batch of `train_batch` lines with `text_len` text tokens:
  forward + CE loss + backward + AdamW step (+ zero_grad), median over `repeats` after `warmup` steps.
- `decode_e2e_s`: greedy decoding of `decode_batch` lines from the images, exactly `new_tokens` new tokens
  per line (no early stop: EOS is disabled), through the model's own generation path: `OCRModel.generate`
  (encoder -> connector -> prefill -> KV-cached steps), or HF `generate` for the encoder-decoder.
  `lines_per_s` = decode_batch / decode_e2e_s.
- `decode_dec_s`: the decoder side alone, the encoder output computed once beforehand and shared:
  connector + prefill + generation (decoder-only), or cross-attention decoding from the given encoder
  outputs (encoder-decoder). `dec_lines_per_s` likewise.
- `peak_train_mb`, `peak_decode_mb`: CPU: growth of the process's peak resident set (VmHWM, reset before
  each phase through /proc/self/clear_refs where the kernel allows it, else ru_maxrss) above the resident
  set after building the model and its inputs; each cell runs in its own subprocess so cells do not share
  an allocator. Training includes the AdamW state. CUDA: torch.cuda.max_memory_allocated growth.

The encoder-decoder baseline is a transformers `VisionEncoderDecoderModel`: our `LineEncoder` (the same
config, wrapped as a `PreTrainedModel`) + a `GPT2LMHeadModel` with cross-attention (`add_cross_attention`)
of the decoder's width, depth, heads and vocabulary; decoding is its `generate` (greedy, KV cache,
`min_new_tokens = max_new_tokens`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from bridgeocr.config import ConnectorConfig, DecoderConfig, EncoderConfig, ModelConfig
from bridgeocr.data.sample import Batch
from bridgeocr.errors import BridgeOCRError, ConfigError
from bridgeocr.models.decoding import greedy_search
from bridgeocr.models.encdec import build_baseline  # the TrOCR-style baseline (encdec rows)
from bridgeocr.models.load import resolve_device as _resolve_device
from bridgeocr.models.ocr import OCRModel

BASELINE = "encdec"

# name -> ConnectorConfig overrides (LLaVA-style projectors, the resamplers, and token reduction k=4)
CONNECTOR_SPECS: dict[str, dict] = {
    "linear": {"kind": "linear"},
    "linear_ln": {"kind": "linear_ln"},
    "linear_gelu_ln": {"kind": "linear_gelu_ln"},
    "mlp": {"kind": "mlp"},
    "qformer": {"kind": "qformer", "num_queries": 32, "layers": 2},
    "cabstractor": {"kind": "cabstractor", "num_queries": 32},
    "pool4+linear_ln": {"kind": "linear_ln", "reduce": "pool", "reduce_k": 4},
    "concat4+linear_ln": {"kind": "linear_ln", "reduce": "concat", "reduce_k": 4},
}

# model sizes: decoder overrides (the encoder is the default EncoderConfig in both)
SIZES: dict[str, dict] = {
    "default": {},  # ModelConfig defaults: GPT 3 x 192 (3 heads)
    "seed": {"n_layer": 3, "n_embd": 768, "n_head": 12},  # 3 GPT-2-small blocks
}

ROW_KEYS = ("size", "connector", "width", "height", "params", "connector_params", "visual_tokens",
            "train_step_s", "decode_e2e_s", "lines_per_s", "decode_dec_s", "dec_lines_per_s",
            "peak_train_mb", "peak_decode_mb")

TARGET_WIDTH = 1024
TARGET_SIZE = "seed"


@dataclass
class BenchSettings:
    sizes: list[str] = field(default_factory=lambda: ["default", "seed"])
    connectors: list[str] = field(default_factory=lambda: list(CONNECTOR_SPECS) + [BASELINE])
    widths: list[int] = field(default_factory=lambda: [512, 1024])
    height: int = 32
    vocab_size: int = 100  # a character vocabulary (the project's default tokenizer kind)
    train_batch: int = 16
    decode_batch: int = 32
    text_len: int = 48  # training text tokens per line
    new_tokens: int = 48
    warmup: int = 1
    repeats: int = 3
    device: str = "cpu"
    isolate: bool = True  # one subprocess per cell (clean peak-memory numbers)
    tiny: bool = False  # tests: a few-thousand-parameter model
    seed: int = 0


# ------------------------------------------------------------------------------------------ building


def model_config(settings: BenchSettings, size: str, connector: str) -> ModelConfig:
    enc = EncoderConfig()
    dec = replace(DecoderConfig(), **SIZES[size])
    conn = ConnectorConfig.of(**CONNECTOR_SPECS.get(connector, {"kind": ConnectorConfig.kind}))
    if settings.tiny:
        enc = replace(enc, dim=16, depth=1, heads=2, patch_width=16, conv_stem=False)
        dec = replace(dec, n_layer=1, n_embd=16, n_head=2)
        conn = replace(conn, options={**conn.options, "num_queries": 4, "layers": 1, "heads": 2})
    enc = replace(enc, patch_height=min(enc.patch_height, settings.height), max_width=max(enc.max_width,
                                                                                           max(settings.widths)))
    dec = replace(dec, n_positions=max(dec.n_positions, settings.text_len + settings.new_tokens + 1))
    return ModelConfig(encoder=enc, connector=conn, decoder=dec)


# ----------------------------------------------------------------------------------------- measuring


class _Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, warmup: int, repeats: int) -> float:
        """Median seconds of `fn()` over `repeats` calls after `warmup` calls."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(max(1, repeats)):
            if self.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if self.cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


class _PeakMemory:
    """Peak memory growth of one phase above a fixed baseline (MB)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.base = self._current()

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def _current(self) -> int:
        if self.cuda:
            return torch.cuda.memory_allocated()
        rss = self._status("VmRSS")
        return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:  # resets VmHWM to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def peak_mb(self) -> float:
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = self._status("VmHWM")
            if peak is None:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0.0, (peak - self.base) / 2**20)


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def measure_cell(settings: BenchSettings, size: str, connector: str, width: int) -> dict:
    """One row of the table (see the module docstring for what each number is)."""
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    cfg = model_config(settings, size, connector)
    Bd, N = settings.decode_batch, settings.new_tokens
    baseline = connector == BASELINE
    model, connector_params = _bench_model(settings, cfg, baseline, device)
    x = _random_inputs(settings, width, device)
    visual_tokens, encoded = _encode_once(model, baseline, x)

    clock = _Clock(device)
    mem = _PeakMemory(device)

    # ---- decoding (eval, no grad)
    model.eval()
    decoders = _baseline_decoders if baseline else _decoder_only_decoders
    decode_e2e, decode_dec = decoders(model, cfg, x, encoded, N)
    mem.reset()
    with torch.no_grad():
        decode_e2e_s = clock(decode_e2e, settings.warmup, settings.repeats)
        decode_dec_s = clock(decode_dec, settings.warmup, settings.repeats)
    peak_decode = mem.peak_mb()

    # ---- training step
    model.train()
    train_step = _train_step(model, baseline, x)
    mem.reset()
    train_step_s = clock(train_step, settings.warmup, settings.repeats)
    peak_train = mem.peak_mb()

    return {"size": size, "connector": connector, "width": width, "height": settings.height,
            "params": _n_params(model), "connector_params": connector_params,
            "visual_tokens": int(visual_tokens),
            "train_step_s": train_step_s, "decode_e2e_s": decode_e2e_s, "lines_per_s": Bd / decode_e2e_s,
            "decode_dec_s": decode_dec_s, "dec_lines_per_s": Bd / decode_dec_s,
            "peak_train_mb": round(peak_train, 1), "peak_decode_mb": round(peak_decode, 1)}


def _bench_model(settings: BenchSettings, cfg: ModelConfig, baseline: bool, device: torch.device):
    """The cell's model on random weights -> (model, connector parameters); a decoder-only model never
    stops early (EOS disabled)."""
    V, H = settings.vocab_size, settings.height
    if baseline:
        return build_baseline(cfg, V, H).to(device), 0
    model = OCRModel(cfg, V, image_height=H).to(device)
    model.eos_id = -1  # no token is -1: every line decodes exactly `new_tokens` tokens
    return model, _n_params(model.connector)


@dataclass
class _Inputs:
    """Random full-width lines: `decode_batch` of them to decode, the first `train_batch` with text to
    train on."""
    images_d: torch.Tensor
    mask_d: torch.Tensor
    images_t: torch.Tensor
    ids: torch.Tensor
    batch: Batch


def _random_inputs(settings: BenchSettings, width: int, device: torch.device) -> _Inputs:
    """The cell's inputs from its own seeded generator (every column real, text starting with BOS)."""
    H, V, Bt, Bd, T = (settings.height, settings.vocab_size, settings.train_batch, settings.decode_batch,
                       settings.text_len)
    g = torch.Generator().manual_seed(settings.seed)
    images_d = torch.rand(Bd, 1, H, width, generator=g).to(device)
    mask_d = torch.ones(Bd, width, dtype=torch.bool, device=device)
    images_t, mask_t = images_d[:Bt].contiguous(), mask_d[:Bt].contiguous()
    ids = torch.randint(3, V, (Bt, T), generator=g).to(device)
    ids[:, 0] = 1
    batch = Batch(images_t, mask_t, ids, torch.ones_like(ids, dtype=torch.bool))
    return _Inputs(images_d, mask_d, images_t, ids, batch)


def _encode_once(model, baseline: bool, x: _Inputs):
    """The encoder output the decoder-side timing shares -> (visual tokens the decoder reads, encoded):
    the encoder's outputs for the encoder-decoder, (tokens, mask) before the connector otherwise."""
    with torch.no_grad():
        if baseline:
            enc_out = model.encoder(pixel_values=x.images_d)
            return enc_out.last_hidden_state.shape[1], enc_out
        enc_tokens, enc_mask = model.encoder(x.images_d, x.mask_d)
        return model.connector(enc_tokens, enc_mask)[0].shape[1], (enc_tokens, enc_mask)


def _baseline_decoders(model, cfg: ModelConfig, x: _Inputs, enc_out, N: int):
    """(end-to-end, decoder-side) greedy decoding of exactly N tokens per line through HF `generate`."""
    gen_kw = dict(max_new_tokens=N, min_new_tokens=N, do_sample=False, num_beams=1)

    def decode_e2e():
        out = model.generate(pixel_values=x.images_d, **gen_kw)
        assert out.shape[1] == N + 1, out.shape

    def decode_dec():
        model.generate(encoder_outputs=enc_out, **gen_kw)

    return decode_e2e, decode_dec


def _decoder_only_decoders(model, cfg: ModelConfig, x: _Inputs, encoded, N: int):
    """(end-to-end, decoder-side) greedy decoding of exactly N tokens per line: `OCRModel.generate`, and
    connector + `greedy_search` from the shared encoder tokens."""
    enc_tokens, enc_mask = encoded
    suppress = (0, 1)  # PAD, BOS (as OCRModel.generate does)

    def decode_e2e():
        hyps = model.generate(x.images_d, x.mask_d, max_new_tokens=N)
        assert len(hyps[0].ids) == N, len(hyps[0].ids)

    @torch.no_grad()
    def decode_dec():
        visual, vmask = model.connector(enc_tokens, enc_mask)
        greedy_search(model.decoder, visual, vmask, cfg.attach_layer, model.bos_id, -1, N, suppress=suppress)

    return decode_e2e, decode_dec


def _train_step(model, baseline: bool, x: _Inputs):
    """One training step as a function: forward + CE loss + backward + AdamW step (+ zero_grad)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = x.ids

    def train_step():
        if baseline:
            logits = model(pixel_values=x.images_t, decoder_input_ids=ids[:, :-1]).logits
        else:
            logits = model(x.batch).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return train_step


def _measure_isolated(settings: BenchSettings, size: str, connector: str, width: int) -> dict:
    """measure_cell in a fresh Python process (its own allocator and peak RSS)."""
    payload = json.dumps({"settings": asdict(settings), "cell": [size, connector, width]})
    proc = subprocess.run([sys.executable, "-m", "bridgeocr.experiments.bench", "--cell", payload], capture_output=True,
                          text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCHCELL "):
            return json.loads(line[len("BENCHCELL "):])
    raise RuntimeError(f"bench cell {size}/{connector}/{width} failed (exit {proc.returncode}):\n"
                       + proc.stderr[-3000:])


# ------------------------------------------------------------------------------------------ the run


def machine_info(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "device": device,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    try:
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        # lazy: transformers is slow to import and only Hugging Face paths need it
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_benchmark(settings: BenchSettings, progress: bool = True) -> dict:
    """Every (size, width, connector) cell -> {"machine", "settings", "rows", "targets", "elapsed_s"}."""

    cells = [(s, c, w) for s in settings.sizes for w in settings.widths for c in settings.connectors]
    info = machine_info(settings.device)
    t0 = time.perf_counter()
    rows = []
    bar = tqdm(cells, desc="bench", unit="cell", disable=not progress, file=sys.stderr)
    for size, conn, width in bar:
        bar.set_postfix_str(f"{size} {conn} {width}px")
        measure = _measure_isolated if settings.isolate else measure_cell
        rows.append(measure(settings, size, conn, width))
    try:
        info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return {"machine": info, "settings": asdict(settings), "rows": rows, "targets": evaluate_targets(rows),
            "elapsed_s": round(time.perf_counter() - t0, 1)}


def _row(rows, size, conn, width):
    for r in rows:
        if (r["size"], r["connector"], r["width"]) == (size, conn, width):
            return r
    return None


def evaluate_targets(rows: list[dict], size: str = TARGET_SIZE, width: int = TARGET_WIDTH) -> list[dict]:
    """The issue's speed targets at `width` px with the `size` decoder: measured ratio and PASS/MISS."""
    ref = "linear_gelu_ln"
    specs = []
    for conn in ("qformer", "pool4+linear_ln", "concat4+linear_ln"):
        specs.append((f"{conn}: decoder-side decode >= 3x faster than {ref}", ref, conn, "decode_dec_s", 3.0))
        specs.append((f"{conn}: training step >= 2x faster than {ref}", ref, conn, "train_step_s", 2.0))
    specs.append((f"qformer end-to-end decode at least as fast as the encoder-decoder ({BASELINE})",
                   BASELINE, "qformer", "decode_e2e_s", 1.0))
    out = []
    for name, slow, fast, key, need in specs:
        a, b = _row(rows, size, slow, width), _row(rows, size, fast, width)
        ratio = None if a is None or b is None else a[key] / b[key]
        out.append({"target": name, "size": size, "width": width, "metric": key, "need": need,
                    "ratio": None if ratio is None else round(ratio, 2),
                    "status": "n/a" if ratio is None else ("PASS" if ratio >= need else "MISS")})
    return out


# ------------------------------------------------------------------------------------------- report


def _fmt_int(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def to_markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    head = ("| size | connector | width | params | conn. params | visual tokens | train step (s) "
            "| decode e2e (s) | lines/s | decoder-side (s) | dec. lines/s | peak train (MB) | peak decode (MB) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in result["rows"]:
        lines.append(f"| {r['size']} | {r['connector']} | {r['width']} | {_fmt_int(r['params'])} "
                     f"| {_fmt_int(r['connector_params']) if r['connector_params'] else '-'} | {r['visual_tokens']} "
                     f"| {r['train_step_s']:.3f} | {r['decode_e2e_s']:.3f} | {r['lines_per_s']:.1f} "
                     f"| {r['decode_dec_s']:.3f} | {r['dec_lines_per_s']:.1f} | {r['peak_train_mb']:.0f} "
                     f"| {r['peak_decode_mb']:.0f} |")
    lines.append("")
    lines.append(f"Targets ({TARGET_SIZE}-sized decoder, {TARGET_WIDTH} px; ratio = slower / faster time):")
    lines.append("")
    for t in result["targets"]:
        ratio = "not measured" if t["ratio"] is None else f"{t['ratio']:.2f}x (need {t['need']:g}x)"
        lines.append(f"- {t['status']}: {t['target']}: {ratio}")
    lines.append("")
    load = f"load average {m.get('loadavg_start')} -> {m.get('loadavg_end')}"
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
                 f"device {m['device']}{', ' + m['gpu'] if m.get('gpu') else ''}; {m['date']}; {load}; "
                 f"{result['elapsed_s']} s.")
    lines.append(f"Settings: train batch {s['train_batch']} x {s['text_len']} text tokens, decode batch "
                 f"{s['decode_batch']} x {s['new_tokens']} new tokens, vocab {s['vocab_size']}, height "
                 f"{s['height']}, median of {s['repeats']} after {s['warmup']} warm-up.")
    return "\n".join(lines) + "\n"


def resolve_device(device: str | None) -> str:
    """The device name the benchmark runs on (models.load.resolve_device)."""
    return str(_resolve_device(device))


QUICK_CONNECTORS = ["linear_gelu_ln", "qformer", "pool4+linear_ln", BASELINE]


def quick_settings(**kw) -> BenchSettings:
    """`--quick` (< 2 minutes on 2 busy CPU cores): the default size only, 512 px only, 4 connectors
    (linear_gelu_ln, qformer, pool4+linear_ln, encdec), train batch 8 x 16 text tokens, decode batch 8 x 16
    new tokens, 1 repeat after 1 warm-up, all cells in this process (peak memory is then only indicative).
    It skips the seed-sized decoder and 1024 px, so the targets are not measured."""
    return BenchSettings(sizes=["default"], widths=[512], connectors=list(QUICK_CONNECTORS), train_batch=8,
                         decode_batch=8, text_len=16, new_tokens=16, warmup=1, repeats=1, isolate=False, **kw)


def bench_cli(quick: bool = False, widths: list[int] | None = None, device: str = "auto",
              out: str = "runs/bench", sizes: list[str] | None = None, connectors: list[str] | None = None,
              repeats: int | None = None, height: int | None = None, vocab_size: int | None = None) -> int:
    dev = resolve_device(device)
    settings = quick_settings(device=dev) if quick else BenchSettings(device=dev)
    if widths:
        settings.widths = list(widths)
    if sizes:
        settings.sizes = list(sizes)
    if connectors:
        unknown = [c for c in connectors if c not in CONNECTOR_SPECS and c != BASELINE]
        if unknown:
            raise ConfigError(f"--connectors: unknown {unknown} (known: {', '.join(CONNECTOR_SPECS)}, {BASELINE})")
        settings.connectors = list(connectors)
    if repeats:
        settings.repeats = repeats
    if height:
        settings.height = height
    if vocab_size:
        settings.vocab_size = vocab_size
    result = run_benchmark(settings)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = to_markdown(result)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    (out_dir / "bench.md").write_text(md)
    print(md)
    print(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/connectors.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="default size, 512 px, 4 connectors, small batches, 1 repeat")
    p.add_argument("--widths", type=int, nargs="+", default=None)
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None)
    p.add_argument("--connectors", nargs="+", default=None, help=f"subset of {list(CONNECTOR_SPECS)} + {BASELINE}")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--height", type=int, default=None, help="line height (default 32; patch height follows)")
    p.add_argument("--vocab-size", type=int, default=None, help="decoder vocabulary (default 100, characters)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: one isolated cell
    args = p.parse_args(argv)
    if args.cell:
        data = json.loads(args.cell)
        row = measure_cell(BenchSettings(**data["settings"]), *data["cell"])
        print("BENCHCELL " + json.dumps(row), flush=True)
        return 0

    try:
        return bench_cli(args.quick, args.widths, args.device, args.out, args.sizes, args.connectors, args.repeats,
                         args.height, args.vocab_size)
    except BridgeOCRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
