"""Shared fixtures for the data tests: tiny line images and the location of ../shared/data."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


def load_script(relpath: str, name: str | None = None):
    """A file of the repository outside the package (benchmarks/, scripts/), imported by its path."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# A training command that SIGKILLs itself once the LightningModule TARGET has made KILL_AT optimizer steps: a
# kill at any moment, for the resume tests. ENTRY is the code that runs the command on sys.argv.
_KILLER = """
import importlib, os, signal, sys
sys.path.insert(0, {tests!r})
module_name, class_name = {target!r}.split(":")
cls = getattr(importlib.import_module(module_name), class_name)
original = cls.on_train_batch_end
def on_train_batch_end(self, outputs, batch, batch_idx):
    original(self, outputs, batch, batch_idx)
    if self.global_step >= {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
cls.on_train_batch_end = on_train_batch_end
{entry}
"""
CLI_ENTRY = "from bridgeocr.cli import main\nsys.exit(main(sys.argv[1:]))"


def run_killed(target: str, kill_at: int, args: list[str], cwd: Path, entry: str = CLI_ENTRY) -> None:
    """Run `entry` with `args` in a subprocess (one thread) that is SIGKILLed after `kill_at` steps of
    `target` ("package.module:LightningModuleClass"); fails unless it died of the kill."""
    code = _KILLER.format(tests=str(REPO / "tests"), target=target, kill_at=int(kill_at), entry=entry)
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=cwd)
    assert proc.returncode == -9, proc.stderr[-2000:]


def line_image(width: int = 60, height: int = 20, text: str = "ab") -> Image.Image:
    """A white line image with dark ink (grayscale)."""
    img = Image.new("L", (width, height), 255)
    ImageDraw.Draw(img).text((2, 2), text, fill=0)
    return img


@pytest.fixture
def make_line_png():
    def make(path: Path, width: int = 60, height: int = 20, text: str = "ab") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        line_image(width, height, text).save(path)
        return path

    return make


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent")
    return SHARED_DATA


def tiny_ocr_model(ctc: bool = False):
    """A tiny untrained OCRModel (16 px lines, char vocabulary "abcd xyz") for API and evaluation tests."""
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
    m.ctc_head = ctc
    tok = CharTokenizer.build(["abcd xyz"])
    return OCRModel(m, tok.vocab_size, image_height=16, tokenizer=tok)


BOX_WORDS = ["ab", "cd", "abc", "dab", "cab", "bad"]

# A config for a tiny OCR run on make_box_dataset's lines (format with src=, out=): seconds on a CPU.
TINY_YAML = """
data:
  source: {src}
  image: {{height: 16, width_policy: pad, max_width: 256, width_multiple: 4}}
model:
  encoder: {{dim: 32, depth: 1, heads: 2, patch_height: 16, patch_width: 4, conv_stem: false, max_width: 512}}
  connector: {{kind: linear}}
  decoder: {{n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}}
  max_text_tokens: 20
optim: {{batch_size: 4, max_steps: 3, warmup_steps: 1}}
train: {{name: tiny, out_dir: {out}, accelerator: cpu, log_every_steps: 1}}
"""


def make_box_dataset(root: Path, n: int = 16, splits=("train", "train", "val", "test"), bad: int = 0,
                     seed: int = 0) -> Path:
    """n tiny lines of box glyphs (one box per letter, no fonts needed) of different widths, written as
    manifest.tsv + split.tsv (line i gets splits[i % len(splits)]); `bad` corrupt images join train."""
    import random

    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows, split = [], []
    for i in range(n):
        text = " ".join(rng.choice(BOX_WORDS) for _ in range(rng.randint(1, 3)))
        img = Image.new("L", (8 + 12 * len(text), 16), 255)
        d = ImageDraw.Draw(img)
        for j, ch in enumerate(text):
            if ch != " ":
                d.rectangle([4 + 12 * j, 2 + (ord(ch) % 4) * 2, 12 + 12 * j, 14 - (ord(ch) % 3) * 2], fill=0)
        rel = f"img/{i:03d}.png"
        img.save(root / rel)
        rows.append(f"{rel}\t{text}")
        split.append(f"{rel}\t{splits[i % len(splits)]}")
    for k in range(bad):  # a corrupt image in train: skipped and counted, never fatal
        rel = f"img/bad{k}.png"
        (root / rel).write_bytes(b"not a png")
        rows.append(f"{rel}\tab")
        split.append(f"{rel}\ttrain")
    (root / "manifest.tsv").write_text("\n".join(rows) + "\n")
    (root / "split.tsv").write_text("\n".join(split) + "\n")
    return root / "manifest.tsv"
