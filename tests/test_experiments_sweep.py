"""Sweeps: grid parsing/expansion, cell naming, sweep files, resume/skip logic (fake trainer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridgeocr.errors import ConfigError
from bridgeocr.experiments import sweep as sw
from conftest import make_box_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_parse_grid_cli_and_mapping_forms():
    assert sw.parse_grid(["model.connector.reduce_k=1,2, 4", "loss.kd_alpha=0.3"]) == {
        "model.connector.reduce_k": ["1", "2", "4"], "loss.kd_alpha": ["0.3"]}
    assert sw.parse_grid({"a.b": [0, 0.1, None, True], "c": "x"}) == {
        "a.b": ["0", "0.1", "null", "true"], "c": ["x"]}
    # commas inside brackets stay inside one value
    assert sw.parse_grid(["optim.freeze_schedule=[],[{until_step: 5, train: [connector]}]"]) == {
        "optim.freeze_schedule": ["[]", "[{until_step: 5, train: [connector]}]"]}
    for bad in (["nokey"], ["a=1", "a=2"], ["a="], ["a=1,1"]):
        with pytest.raises(ConfigError):
            sw.parse_grid(bad)


def test_expand_grid_is_cartesian_first_axis_slowest_with_safe_names():
    cells = sw.expand_grid({"model.connector.reduce_k": ["1", "4"], "loss.kd_alpha": ["0", "0.3"]})
    names = [c[0] for c in cells]
    assert names == ["model.connector.reduce_k=1__loss.kd_alpha=0",
                     "model.connector.reduce_k=1__loss.kd_alpha=0.3",
                     "model.connector.reduce_k=4__loss.kd_alpha=0",
                     "model.connector.reduce_k=4__loss.kd_alpha=0.3"]
    assert cells[1][1] == ["model.connector.reduce_k=1", "loss.kd_alpha=0.3"]
    assert sw.expand_grid({}) == [("base", [], {})]
    # unsafe characters and long names
    name = sw.cell_name([("data.source", "/tmp/a b/c.tsv")])
    assert "/" not in name and " " not in name
    long = sw.cell_name([(f"k{i}", "v" * 30) for i in range(10)])
    assert len(long) <= sw.MAX_NAME
    assert long != sw.cell_name([(f"k{i}", "v" * 30) for i in range(9)] + [("k9", "w" * 30)])


def _base(tmp_path: Path) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text("optim:\n  max_steps: 2\ntrain:\n  name: basename\n")
    return base


def test_sweep_file_with_grid_base_and_overrides(tmp_path, monkeypatch):
    _base(tmp_path)
    (tmp_path / "sweeps").mkdir()
    f = tmp_path / "sweeps" / "s.yaml"
    f.write_text("name: mysweep\nbase: base.yaml\noverrides: [optim.batch_size=4]\n"
                 "grid:\n  loss.kd_alpha: [0, 0.3]\n  loss.kd_tau: [1, 2]\n")
    monkeypatch.chdir(tmp_path)  # base found relative to the sweep file's parents
    sweep_dir, cells, base, common = sw.plan_sweep(str(f), grid=[], overrides=["optim.max_steps=3"])
    assert Path(base).resolve() == (tmp_path / "base.yaml").resolve()
    assert common == ["optim.batch_size=4", "optim.max_steps=3"]
    assert sweep_dir == Path("runs/sweep/mysweep")
    assert [c.name for c in cells] == ["loss.kd_alpha=0__loss.kd_tau=1", "loss.kd_alpha=0__loss.kd_tau=2",
                                       "loss.kd_alpha=0.3__loss.kd_tau=1", "loss.kd_alpha=0.3__loss.kd_tau=2"]
    # --grid replaces the file's axis
    _, cells, _, _ = sw.plan_sweep(str(f), grid=["loss.kd_tau=4"], out=str(tmp_path / "o"))
    assert [c.name for c in cells] == ["loss.kd_alpha=0__loss.kd_tau=4", "loss.kd_alpha=0.3__loss.kd_tau=4"]
    # a bad value fails before anything trains
    with pytest.raises(ConfigError):
        sw.plan_sweep(str(f), grid=["optim.max_steps=many"], out=str(tmp_path / "o"))
    with pytest.raises(ConfigError):
        sw.plan_sweep(str(f), overrides=["loss.kd_tau=3"], out=str(tmp_path / "o"))


@pytest.mark.parametrize("name", ["no_gelu", "downsample", "attach", "kd", "kd_alpha0", "kd_qformer",
                                  "kd_qformer_alpha0"])
def test_shipped_sweep_files_expand(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = ROOT / "configs" / "sweeps" / f"{name}.yaml"
    base, grid, overrides, sname = sw.read_sweep_file(path)
    if base is None or not Path(base).is_file():
        pytest.skip(f"base config of {path.name} not written yet")
    _, cells, _, _ = sw.plan_sweep(str(path), out="/tmp/never-written")
    # 3 seeds per setting; KD: 2 teachers x 3 alphas x 2 taus, its alpha=0 baseline in kd_alpha0.yaml
    assert len(cells) == 3 * {"no_gelu": 2, "downsample": 4, "attach": 3, "kd": 12, "kd_alpha0": 1, "kd_qformer": 2,
                            "kd_qformer_alpha0": 1}[name]
    assert sname == name.replace("_alpha0", "")


def _finish(run_dir: Path, test=True):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("train:\n  name: x\n")
    m = {"val_cer": 0.1, "val_wer": 0.2, "step": 2}
    if test:
        m.update(test_cer=0.12, test_wer=0.25)
    (run_dir / "metrics.json").write_text(json.dumps(m))


def test_sweep_skips_done_resumes_partial_trains_new(tmp_path, monkeypatch, capsys):
    base = _base(tmp_path)
    out = tmp_path / "sweep"
    calls = []

    def fake_train(cfg, resume=False):
        calls.append((cfg.train.name, cfg.loss.kd_alpha, resume, cfg.train.out_dir, cfg.optim.max_steps))
        _finish(Path(cfg.train.out_dir) / cfg.train.name)

    monkeypatch.setattr(sw, "_train_function", lambda: fake_train)
    names = ["loss.kd_alpha=0", "loss.kd_alpha=0.1", "loss.kd_alpha=0.3", "loss.kd_alpha=1"]
    _finish(out / names[0])  # finished: skipped
    (out / names[1] / "last").mkdir(parents=True)  # partial with a checkpoint: resumed
    _finish(out / names[2], test=False)  # val only (stopped before test), no checkpoint: retrained

    assert sw.sweep_cli(str(base), ["loss.kd_alpha=0,0.1,0.3,1"], [], str(out), dry_run=True) == 0
    text = capsys.readouterr().out
    assert "4 cell(s)" in text and "done" in text and "partial" in text and not calls

    assert sw.sweep_cli(str(base), ["loss.kd_alpha=0,0.1,0.3,1"], [], str(out), dry_run=False) == 0
    text = capsys.readouterr().out
    assert [c[0] for c in calls] == names[1:]
    assert [c[2] for c in calls] == [True, False, False]
    assert all(c[3] == str(out) and c[4] == 2 for c in calls)
    assert "skipped" in text
    assert (out / "compare" / "compare.md").is_file()
    plan = json.loads((out / "sweep.json").read_text())
    assert [c["name"] for c in plan["cells"]] == names
    # second time round everything is done
    calls.clear()
    assert sw.sweep_cli(str(base), ["loss.kd_alpha=0,0.1,0.3,1"], [], str(out), dry_run=False) == 0
    assert calls == []


def test_failed_cell_does_not_stop_the_sweep(tmp_path, monkeypatch, capsys):
    base = _base(tmp_path)

    def fake_train(cfg, resume=False):
        if cfg.model.attach_layer == 1:
            raise RuntimeError("boom")
        _finish(Path(cfg.train.out_dir) / cfg.train.name)

    monkeypatch.setattr(sw, "_train_function", lambda: fake_train)
    assert sw.sweep_cli(str(base), ["model.attach_layer=0,1,2"], [], str(tmp_path / "s"), False) == 1
    out = capsys.readouterr().out
    assert "1 of 3 cell(s) failed: model.attach_layer=1" in out
    assert (tmp_path / "s" / "model.attach_layer=1" / "sweep_error.txt").is_file()
    assert (tmp_path / "s" / "model.attach_layer=2" / "metrics.json").is_file()


def test_final_metrics_without_a_test_split_counts_as_done(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"val_cer": 0.1, "test_cer": None, "test": None,
                                                "stopped_by": "max_steps"}))
    assert sw.run_status(d) == "done"
    (d / "metrics.json").write_text(json.dumps({"val_cer": 0.1}))  # e.g. an evaluate --out on val
    assert sw.run_status(d) == "partial"
    assert sw.run_status(tmp_path / "nothing") == "new"


# ------------------------------------------------------------------ a real sweep: 2 cells x 2 steps

TINY_YAML = """
data:
  source: {src}
  image: {{height: 16, width_policy: pad, max_width: 128, resize_width: 48, width_multiple: 4}}
model:
  encoder: {{dim: 32, depth: 1, heads: 2, patch_height: 16, patch_width: 4, conv_stem: false, max_width: 256}}
  connector: {{kind: linear}}
  decoder: {{n_layer: 2, n_embd: 32, n_head: 2, n_positions: 64}}
  max_text_tokens: 14
optim: {{batch_size: 4, max_steps: 2, warmup_steps: 1}}
train: {{name: tiny, out_dir: {out}, accelerator: cpu, log_every_steps: 1}}
"""


def _tiny_data(root: Path) -> Path:
    return make_box_dataset(root, n=12)


@pytest.mark.slow
def test_tiny_real_sweep_trains_two_cells_then_skips_them(tmp_path, capsys):
    pytest.importorskip("bridgeocr.train.run")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML.format(src=_tiny_data(tmp_path / "data"), out=tmp_path / "unused"))
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text("base: tiny.yaml\ngrid:\n  model.connector.kind: [linear, linear_ln]\n")
    out = tmp_path / "sweep"
    assert sw.sweep_cli(str(sweep_file), [], [], str(out), False) == 0
    for kind in ("linear", "linear_ln"):
        m = json.loads((out / f"model.connector.kind={kind}" / "metrics.json").read_text())
        assert m["test_cer"] is not None and m["step"] == 2 and m["connector"] == kind
    md = (out / "compare" / "compare.md").read_text()
    assert "model.connector.kind=linear_ln" in md and "linear_ln" in md
    capsys.readouterr()
    assert sw.sweep_cli(str(sweep_file), [], [], str(out), False) == 0
    assert capsys.readouterr().out.count("skipped") == 2


def test_seed_axis_summary_gives_mean_std_and_z(tmp_path):
    cells = []
    values = {("0", "1"): 0.30, ("0", "2"): 0.32, ("0", "3"): 0.31, ("1", "1"): 0.20, ("1", "2"): 0.21,
              ("1", "3"): 0.19}
    for (alpha, seed), cer in values.items():
        run = tmp_path / f"a{alpha}s{seed}"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({"test_cer": cer, "test_wer": 2 * cer, "val_cer": cer,
                                                      "step": 100, "decode_lines_per_s": 50.0}))
        cells.append(sw.Cell(run.name, [], run, "done", {"loss.kd_alpha": alpha, "train.seed": seed}))
    out = sw.summarise_seeds(tmp_path, cells)
    text = out.read_text()
    assert "| loss.kd_alpha=0 | 3 | 0.3100 ± 0.0100" in text
    assert "| loss.kd_alpha=1 | 3 | 0.2000 ± 0.0100" in text and "-0.1100 | -13.5 |" in text
    assert (tmp_path / "seeds.png").is_file() and (tmp_path / "seeds.csv").read_text().count("\n") == 3
    assert sw.summarise_seeds(tmp_path, [sw.Cell("x", [], tmp_path, "done", {"a": "1"})]) is None
