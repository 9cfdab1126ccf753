"""`bridgeocr recognize` under load (issue 16, points 9 and 5): it streams (a bounded window of images is
read at a time, each line written and flushed as its batch finishes), the output is in input order whatever
the widths, `--recursive` descends into subfolders only when asked, a Ctrl-C or a kill leaves only whole
lines, and a broken image is one stderr line, skipped, the rest in order."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import bridgeocr.api as api
from bridgeocr import BridgeOCR
from bridgeocr.cli import main
from bridgeocr.data.preprocess import preprocess_image
from conftest import tiny_ocr_model

SRC = Path(__file__).resolve().parents[1] / "src"


def box_line(width: int, seed: int = 0, height: int = 16) -> Image.Image:
    """A line of random dark boxes on white, `width` px wide (no fonts needed)."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (width, height), 255)
    d = ImageDraw.Draw(img)
    for x in range(2, width - 6, 7):
        d.rectangle([x, int(rng.integers(1, 5)), x + int(rng.integers(2, 6)), int(rng.integers(9, 15))], fill=0)
    return img


def write_lines(folder: Path, widths, prefix: str = "l") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, w in enumerate(widths):
        p = folder / f"{prefix}{i:03d}.png"
        box_line(int(w), seed=i).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("recognize_model") / "model"
    tiny_ocr_model(ctc=True).save_pretrained(d)
    return d


def run(capsys, args):
    code = main(["recognize", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def read_jsonl(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "the last line is not complete"
    return [json.loads(x) for x in text.splitlines()]


def widths_seen_by_decode(monkeypatch, stop_after: int | None = None) -> list[list[int]]:
    """Record the real widths of every decoded batch (and raise KeyboardInterrupt on call stop_after + 1)."""
    calls: list[list[int]] = []
    real = BridgeOCR.decode

    def decode(self, images, image_mask, **kw):
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt
        out = real(self, images, image_mask, **kw)
        calls.append([int(w) for w in image_mask.sum(dim=1)])
        return out

    monkeypatch.setattr(BridgeOCR, "decode", decode)
    return calls


def tensor_widths(paths, model_dir: Path) -> list[int]:
    """The width each image has once preprocessed (what the decode's image_mask marks)."""
    cfg = BridgeOCR.from_pretrained(model_dir, device="cpu").image_cfg
    return [preprocess_image(Image.open(p), cfg).shape[-1] for p in paths]


# -- order -----------------------------------------------------------------------------------------------

def test_output_order_is_input_order_across_batches_with_mixed_widths(model_dir, tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(1)
    widths = rng.permutation(np.arange(24, 24 + 5 * 37, 5))  # 37 distinct widths, shuffled
    paths = write_lines(tmp_path / "lines", widths)
    extra = write_lines(tmp_path / "more", [150, 30], prefix="x")
    calls = widths_seen_by_decode(monkeypatch)
    out = tmp_path / "out.jsonl"
    # a single file first, then a folder (sorted), then a glob: given order, folders expanded sorted
    code, stdout, err = run(capsys, [extra[0], tmp_path / "lines", tmp_path / "more" / "x00[1]*.png",
                                     "--checkpoint", model_dir, "--ctc", "--batch-size", 3, "--format", "jsonl",
                                     "--out", out])
    assert code == 0 and err == "" and stdout == ""
    recs = read_jsonl(out)
    calls = list(calls)  # the CLI's batches (the single reads below decode too)
    expected = [extra[0], *paths, extra[1]]
    assert [r["path"] for r in recs] == [str(p) for p in expected]
    # every line is its own image's reading (compared one image at a time, no batching)
    ocr = BridgeOCR.from_pretrained(model_dir, device="cpu")
    singles = [ocr.recognize(p, decoding="ctc")[0] for p in expected]
    assert [r["text"] for r in recs] == [s.text for s in singles]
    assert [r["confidence"] for r in recs] == pytest.approx([s.confidence for s in singles], abs=1e-5)
    assert len({r["text"] for r in recs}) > 5  # the texts differ, so a mix-up would show
    # it did batch (3 at a time) and bucket by width: some batch is not a run of consecutive inputs
    assert sum(len(c) for c in calls) == len(expected) and max(len(c) for c in calls) == 3
    pos = {w: i for i, w in enumerate(tensor_widths(expected, model_dir))}
    assert len(pos) == len(expected)  # distinct widths: each batch's widths name its lines
    assert any(sorted(pos[w] for w in c) != list(range(min(pos[w] for w in c), min(pos[w] for w in c) + len(c)))
               for c in calls)


@pytest.mark.parametrize("fmt", ["text", "tsv", "jsonl"])
def test_every_format_streams_in_order_to_stdout_and_out(model_dir, tmp_path, capsys, fmt):
    paths = write_lines(tmp_path / "lines", [90, 20, 160, 45, 120, 33, 70])
    code, stdout, err = run(capsys, [tmp_path / "lines", "--checkpoint", model_dir, "--batch-size", 2,
                                     "--format", fmt])
    assert code == 0 and err == ""
    rows = stdout.splitlines()
    if fmt == "tsv":
        assert rows.pop(0) == "path\ttext\tconfidence"
    firsts = {"text": lambda r: r.split(": ", 1)[0], "tsv": lambda r: r.split("\t")[0],
              "jsonl": lambda r: json.loads(r)["path"]}[fmt]
    assert [firsts(r) for r in rows] == [str(p) for p in paths]
    out = tmp_path / f"out.{fmt}"
    code, again, err = run(capsys, [tmp_path / "lines", "--checkpoint", model_dir, "--batch-size", 2,
                                    "--format", fmt, "--out", out])
    assert code == 0 and again == "" and out.read_text() == stdout  # --out holds exactly what stdout had


def test_a_reading_with_a_newline_stays_one_line(model_dir, tmp_path, capsys, monkeypatch):
    write_lines(tmp_path / "lines", [40, 80, 60])
    monkeypatch.setattr(BridgeOCR, "decode", lambda self, images, mask, **kw: [("a\nb\rc\td", -0.5)] * len(images))
    for fmt in ("text", "tsv", "jsonl"):
        code, out, err = run(capsys, [tmp_path / "lines", "--checkpoint", model_dir, "--format", fmt])
        assert code == 0 and len(out.splitlines()) == 3 + (fmt == "tsv")
    assert json.loads(out.splitlines()[0])["text"] == "a\nb\rc\td"  # jsonl keeps the text as it is


# -- --recursive -----------------------------------------------------------------------------------------

def test_recursive_descends_sorted_and_without_it_subfolders_are_not_read(model_dir, tmp_path, capsys,
                                                                          monkeypatch):
    root = tmp_path / "scans"
    a = write_lines(root, [40], prefix="a")[0]
    z = write_lines(root, [50], prefix="z")[0]
    b = write_lines(root / "m_sub", [60], prefix="b")[0]
    c = write_lines(root / "m_sub" / "deeper", [70], prefix="c")[0]
    d = write_lines(root / "n_sub", [80], prefix="d")[0]
    (root / "m_sub" / "notes.txt").write_text("not an image")
    opened: list[str] = []
    real = api._to_pil
    monkeypatch.setattr(api, "_to_pil", lambda im: (opened.append(str(im)), real(im))[1])

    code, out, err = run(capsys, [root, "--checkpoint", model_dir, "--format", "tsv", "--recursive"])
    assert code == 0 and err == ""
    assert [r.split("\t")[0] for r in out.splitlines()[1:]] == [str(p) for p in (a, b, c, d, z)]

    opened.clear()
    code, out, err = run(capsys, [root, "--checkpoint", model_dir, "--format", "tsv"])
    assert code == 0 and err == ""
    assert [r.split("\t")[0] for r in out.splitlines()[1:]] == [str(a), str(z)]
    assert opened == [str(a), str(z)]  # the subfolders' images are not even opened

    # a folder with images only below it: without --recursive nothing is read, and it says so
    nested = tmp_path / "nested"
    e = write_lines(nested / "inner", [45], prefix="e")[0]
    code, out, err = run(capsys, [nested, "--checkpoint", model_dir])
    assert code == 1 and out == "" and "nested: no images in this folder" in err
    code, out, err = run(capsys, [nested, "--checkpoint", model_dir, "--recursive"])
    assert code == 0 and err == "" and [r.split(": ")[0] for r in out.splitlines()] == [str(e)]


def test_recursive_expansion_skips_a_symlink_loop(tmp_path):
    write_lines(tmp_path / "r" / "s", [30])
    try:
        os.symlink(tmp_path / "r", tmp_path / "r" / "s" / "loop")
    except OSError:
        pytest.skip("no symlinks here")
    paths, problems = api.expand_inputs([str(tmp_path / "r")], recursive=True)
    assert paths == [tmp_path / "r" / "s" / "l000.png"] and problems == []


# -- streaming -------------------------------------------------------------------------------------------

def test_first_line_is_written_before_more_than_a_window_of_images_is_read(model_dir, tmp_path, capsys,
                                                                           monkeypatch):
    n, batch = 80, 2
    write_lines(tmp_path / "lines", (np.arange(n) * 13) % 150 + 20)
    opened = []
    real_open = api._to_pil
    monkeypatch.setattr(api, "_to_pil", lambda im: (opened.append(im), real_open(im))[1])
    opened_at_write = []
    real_write = api._write_line
    monkeypatch.setattr(api, "_write_line", lambda s, line: (opened_at_write.append(len(opened)),
                                                              real_write(s, line))[1])
    code, out, err = run(capsys, [tmp_path / "lines", "--checkpoint", model_dir, "--batch-size", batch,
                                  "--format", "jsonl"])
    assert code == 0 and len(out.splitlines()) == n and len(opened) == n
    window = api.WINDOW_BATCHES * batch
    assert opened_at_write[0] <= window < n  # the first line came out after one window, not after all n
    # and it goes on like that: line k is written before image k + 2 windows is read
    assert all(o <= k + 2 * window for k, o in enumerate(opened_at_write))


def test_iter_recognize_reads_its_input_lazily(model_dir):
    ocr = BridgeOCR.from_pretrained(model_dir, device="cpu")
    pulled = []

    def endless():
        for i in itertools.count():
            pulled.append(i)
            if i >= 50 * api.WINDOW_BATCHES * 3:
                raise AssertionError("the whole input is being read before the first result")
            yield box_line(20 + (i * 17) % 90, seed=i)

    got = list(itertools.islice(ocr.iter_recognize(endless(), batch_size=3, decoding="ctc"), 5))
    assert len(got) == 5 and all(isinstance(r, api.Recognition) for r in got)
    assert len(pulled) <= api.WINDOW_BATCHES * 3  # one window, not the (endless) input


# -- Ctrl-C and kill -------------------------------------------------------------------------------------

def test_ctrl_c_after_k_batches_leaves_exactly_their_lines(model_dir, tmp_path, capsys, monkeypatch):
    paths = write_lines(tmp_path / "lines", range(20, 20 + 4 * 30, 4))  # widening: batches run in input order
    widths_seen_by_decode(monkeypatch, stop_after=5)
    out = tmp_path / "out.jsonl"
    code, stdout, err = run(capsys, [tmp_path / "lines", "--checkpoint", model_dir, "--batch-size", 3,
                                     "--format", "jsonl", "--out", out])
    assert code == 130
    recs = read_jsonl(out)  # every line whole JSON, the file ends with a newline
    assert [r["path"] for r in recs] == [str(p) for p in paths[:15]]  # 5 batches of 3
    assert "interrupted: 15 lines written" in err and str(out) in err


def test_each_batch_is_on_disk_before_the_next_is_decoded(model_dir, tmp_path, capsys, monkeypatch):
    paths = write_lines(tmp_path / "lines", range(20, 20 + 4 * 20, 4))  # widening: batches in input order
    out = tmp_path / "out.jsonl"
    on_disk = []  # lines in the file (read through its own handle) when each batch is decoded
    real = BridgeOCR.decode

    def decode(self, images, image_mask, **kw):
        on_disk.append(out.read_text().count("\n") if out.is_file() else 0)
        return real(self, images, image_mask, **kw)

    monkeypatch.setattr(BridgeOCR, "decode", decode)
    code, _, err = run(capsys, [tmp_path / "lines", "--checkpoint", model_dir, "--batch-size", 3,
                                "--format", "jsonl", "--out", out])
    assert code == 0 and err == ""
    assert on_disk == [3 * j for j in range(7)]  # written and flushed batch by batch, not window by window
    assert len(read_jsonl(out)) == len(paths) == 20


def test_ctrl_c_with_mixed_widths_leaves_a_whole_prefix_of_finished_lines(model_dir, tmp_path, capsys,
                                                                          monkeypatch):
    rng = np.random.default_rng(7)
    paths = write_lines(tmp_path / "lines", rng.permutation(np.arange(20, 20 + 3 * 30, 3)))
    calls = widths_seen_by_decode(monkeypatch, stop_after=6)
    out = tmp_path / "out.tsv"
    code, stdout, err = run(capsys, [tmp_path / "lines", "--checkpoint", model_dir, "--batch-size", 3,
                                     "--format", "tsv", "--out", out])
    assert code == 130 and len(calls) == 6
    text = out.read_text()
    assert text.endswith("\n")
    rows = text.splitlines()
    assert rows.pop(0) == "path\ttext\tconfidence" and all(len(r.split("\t")) == 3 for r in rows)
    # exactly the finished lines that have every earlier line finished too (output stays in input order)
    done = {w for c in calls for w in c}
    finished = [w in done for w in tensor_widths(paths, model_dir)]
    prefix = next((i for i, f in enumerate(finished) if not f), len(paths))
    assert 0 < prefix < len(paths)
    assert [r.split("\t")[0] for r in rows] == [str(p) for p in paths[:prefix]]
    assert f"interrupted: {prefix} lines written" in err


def _start_recognize(model_dir: Path, folder: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bridgeocr.cli", "recognize", str(folder), "--checkpoint",
                             str(model_dir), "--batch-size", "1", "--gpt", "--beam", "3", "--format", "jsonl",
                             "--out", str(out)], env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_on)


def _ctrl_c_on() -> None:
    """The child takes Ctrl-C even when the suite runs as a background job (which starts with SIGINT ignored,
    and Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_lines(proc: subprocess.Popen, out: Path, k: int, timeout: float = 120.0) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if out.is_file() and out.read_text().count("\n") >= k:
            return
        if proc.poll() is not None:
            pytest.fail(f"recognize ended before writing {k} lines: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {k} lines in {out} after {timeout} s")


@pytest.fixture(scope="module")
def many_lines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    write_lines(folder, [60 + (i * 37) % 400 for i in range(1500)])
    return folder


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_a_real_sigint_and_a_kill_leave_only_whole_lines(model_dir, many_lines, tmp_path):
    # Ctrl-C: exit 130, the count on stderr is the file's line count, every line whole
    out = tmp_path / "int.jsonl"
    proc = _start_recognize(model_dir, many_lines, out)
    _wait_for_lines(proc, out, 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    recs = read_jsonl(out)
    assert 3 <= len(recs) < 1500 and f"interrupted: {len(recs)} lines written" in err
    assert [r["path"] for r in recs] == [str(p) for p in sorted(many_lines.iterdir())[:len(recs)]]
    # a kill (no handler runs): what is in the file still ends at a line end
    out = tmp_path / "kill.jsonl"
    proc = _start_recognize(model_dir, many_lines, out)
    _wait_for_lines(proc, out, 3)
    proc.kill()
    proc.communicate(timeout=60)
    recs = read_jsonl(out)
    assert 3 <= len(recs) < 1500


# -- broken images ---------------------------------------------------------------------------------------

def test_a_broken_image_in_the_middle_is_reported_once_skipped_and_the_rest_in_order(model_dir, tmp_path,
                                                                                     capsys):
    folder = tmp_path / "lines"
    paths = write_lines(folder, [30, 80, 55, 120, 40, 95, 62, 25, 140, 70, 50])
    broken = folder / "l004b.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    truncated = folder / "l008b.png"
    data = (folder / "l008.png").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    code, out, err = run(capsys, [folder, "--checkpoint", model_dir, "--batch-size", 2, "--format", "jsonl"])
    assert code == 1
    assert [json.loads(r)["path"] for r in out.splitlines()] == [str(p) for p in paths]
    errs = err.splitlines()
    assert sum(str(broken) in e for e in errs) == 1 and sum(str(truncated) in e for e in errs) == 1
    assert all(e.startswith("error: ") for e in errs if "l004b" in e or "l008b" in e)
    assert errs[-1] == f"{len(paths)} lines written, 2 unreadable images skipped"
    assert len(errs) == 3
