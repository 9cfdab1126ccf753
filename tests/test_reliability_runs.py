"""Issue 16, points 1-2: an empty result is an error (never CER 0 or NaN), and a run is never replaced by
accident (train, encoder train, lm train)."""

from __future__ import annotations

import pytest
from PIL import Image

from bridgeocr.cli import main
from bridgeocr.errors import BridgeOCRError
from bridgeocr.train.checkpoint import guard_run_dir
from conftest import TINY_YAML, make_box_dataset


def _config(tmp, src):
    cfg = tmp / f"tiny-{src.parent.name}.yaml"
    cfg.write_text(TINY_YAML.format(src=src, out=tmp / "runs"))
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(run dir, config, overrides) of one finished 2-step run."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = _config(tmp, make_box_dataset(tmp / "data"))
    assert main(["train", "--config", str(cfg)]) == 0
    return tmp / "runs" / "tiny", cfg, []


def _lfs_pointer_dataset(root, n=6):
    """A synth-style dataset whose images are Git LFS pointer files (a clone without `git lfs pull`)."""
    (root / "images").mkdir(parents=True)
    rows, split = [], []
    for i in range(n):
        rel = f"images/{i:03d}.png"
        (root / rel).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1234\n")
        rows.append(f"{rel}\tline {i}")
        split.append(f"{rel}\t{['train', 'val', 'test'][i % 3]}")
    (root / "manifest.tsv").write_text("\n".join(rows) + "\n")
    (root / "split.tsv").write_text("\n".join(split) + "\n")
    return root


def test_guard_refuses_an_existing_run_and_overwrite_removes_only_its_files(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(BridgeOCRError, match="--resume.*--overwrite"):
        guard_run_dir(run, resume=False, overwrite=False)
    guard_run_dir(run, resume=True, overwrite=False)  # continuing is fine
    assert (run / "best").is_dir()
    guard_run_dir(run, resume=False, overwrite=True)
    assert not (run / "best").exists() and not (run / "metrics.json").exists()
    assert (run / "notes.txt").read_text() == "mine"
    guard_run_dir(tmp_path / "new", resume=False, overwrite=False)  # nothing there: nothing to refuse


def test_train_refuses_to_replace_a_finished_run(tiny_run, capsys):
    """`bridgeocr train` with an existing run's name and neither --resume nor --overwrite: one line, exit 2,
    the run's best/ and metrics.json untouched."""
    run_dir, config, overrides = tiny_run
    before = (run_dir / "metrics.json").read_bytes()
    best = sorted(p.name for p in (run_dir / "best").iterdir())
    code = main(["train", "--config", str(config), *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert "holds a run already" in err and str(run_dir) in err and "Traceback" not in err
    assert (run_dir / "metrics.json").read_bytes() == before
    assert sorted(p.name for p in (run_dir / "best").iterdir()) == best


def test_lm_train_refuses_to_replace_an_lm(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "lm"
    args = ["lm", "train", "--corpus", str(corpus), "--out", str(out), "--steps", "2", "--n-layer", "1",
            "--n-embd", "16", "--n-head", "2", "--context", "16", "--batch-size", "2"]
    assert main(args) == 0
    assert main(args) == 2
    assert "holds a run already" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_evaluate_on_unreadable_images_is_an_error_not_cer_zero(tiny_run, tmp_path, capsys):
    run_dir, _, _ = tiny_run
    data = _lfs_pointer_dataset(tmp_path / "lfs")
    code = main(["evaluate", "--checkpoint", str(run_dir / "best"), "--data", str(data), "--split", "test"])
    captured = capsys.readouterr()
    assert code == 1
    assert "CER 0.0000" not in captured.out
    assert "could be read" in captured.err and str(data) in captured.err


def test_evaluate_counts_every_dropped_row_by_reason(tiny_run, tmp_path, capsys):
    """A 5-row manifest scored on 3 lines says so: 1 missing image, 1 row without a TAB; --max-skipped."""
    import json

    run_dir, _, _ = tiny_run
    root = tmp_path / "m"
    root.mkdir()
    for i in range(3):
        Image.new("L", (64, 32), 255).save(root / f"{i}.png")
    (root / "labels.tsv").write_text("0.png\ta\n1.png\tb\n2.png\tc\nmissing.png\td\nno tab here\n")
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(run_dir / "best"), "--data", str(root / "labels.tsv"),
                 "--split", "all", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3
    assert metrics["dropped"] == {"image not found": 1, "bad row": 1}
    assert metrics["rows"] == 5
    assert "dropped 2 of 5 rows" in captured.out + captured.err
    code = main(["evaluate", "--checkpoint", str(run_dir / "best"), "--data", str(root / "labels.tsv"),
                 "--split", "all", "--max-skipped", "0.2"])
    assert code == 1
    assert "--max-skipped" in capsys.readouterr().err


def test_train_on_unreadable_images_stops_with_one_line(tmp_path, capsys):
    """1,000 empty epochs and a NaN CER before; now the first epoch ends the run with one line, exit 1."""
    data = _lfs_pointer_dataset(tmp_path / "lfs", n=9)
    cfg = _config(tmp_path, data / "manifest.tsv")
    code = main(["train", "--config", str(cfg), "optim.max_steps=50", "optim.max_epochs=1000"])
    err = capsys.readouterr().err
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could be read" in errors[0] and str(data) in errors[0]
    assert not (tmp_path / "runs" / "tiny" / "metrics.json").exists()


def test_recognize_out_under_a_file_fails_before_reading(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code = main(["recognize", str(tmp_path / "a.png"), "--checkpoint", str(tmp_path / "no-model"),
                 "--out", str(blocker / "out.txt")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write here" in err and str(blocker) in err


def test_a_sweep_file_syntax_error_names_its_line(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base: x.yaml\ngrid:\n  optim.lr: [1, 2\n")
    assert main(["sweep", "--config", str(sweep), "--dry-run"]) == 2
    assert f"{sweep}:4: YAML syntax error" in capsys.readouterr().err


def test_recognize_into_a_closed_pipe_exits_quietly(tiny_run, tmp_path):
    """`bridgeocr recognize DIR | head -1`: no BrokenPipeError traceback."""
    import subprocess
    import sys

    run_dir, _, _ = tiny_run
    for i in range(40):
        Image.new("L", (40, 16), 255).save(tmp_path / f"{i:02d}.png")
    cmd = (f"{sys.executable} -m bridgeocr.cli recognize {tmp_path} --checkpoint {run_dir / 'best'} "
           "--batch-size 1 | head -1")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert len(proc.stdout.splitlines()) == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr[-500:]


def test_resume_without_a_state_to_resume_from_says_so(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    with pytest.raises(BridgeOCRError, match="without a state to resume from; replace it with --overwrite"):
        guard_run_dir(run, resume=False, overwrite=False, resume_asked=True)


def test_preview_and_loss_gap_take_allow_outside(tmp_path, capsys):
    from bridgeocr.cli import build_parser

    Image.new("L", (40, 16), 255).save(tmp_path / "outside.png")
    ds = tmp_path / "ds"
    ds.mkdir()
    Image.new("L", (40, 16), 255).save(ds / "a.png")
    (ds / "labels.tsv").write_text("a.png\tab\n../outside.png\tcd\n")
    out = tmp_path / "p.png"
    assert main(["data", "preview", str(ds / "labels.tsv"), "--out", str(out)]) == 0
    assert "of 1 lines" in capsys.readouterr().out
    assert main(["data", "preview", str(ds / "labels.tsv"), "--out", str(out), "--allow-outside"]) == 0
    assert "of 2 lines" in capsys.readouterr().out
    args = build_parser().parse_args(["loss-gap", "--checkpoint", "x", "--data", "y", "--allow-outside",
                                      "--split-by", "document"])
    assert args.allow_outside and args.split_by == "document"
