"""Typed configs (YAML + base: chains + dotted overrides) and the CLI's shape and error handling."""

import glob
from pathlib import Path

import pytest

from bridgeocr.cli import build_parser, main
from bridgeocr.config import ExperimentConfig, config_from_dict, load_config, save_config
from bridgeocr.errors import ConfigError
from bridgeocr.models import connectors  # noqa: F401  (adds the connector's config check)

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_dotted_overrides():
    cfg = load_config(None, ["model.connector.kind=qformer", "optim.max_steps=7", "loss.kd_alpha=0.5"])
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.model.connector.kind == "qformer"
    assert cfg.optim.max_steps == 7 and isinstance(cfg.optim.max_steps, int)
    assert cfg.loss.kd_alpha == 0.5
    assert cfg.model.decoder.n_layer == 3  # the seed's 3-layer GPT is the default


def test_base_chain_merges_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("model:\n  connector:\n    kind: mlp\noptim:\n  max_steps: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\noptim:\n  max_steps: 5\n")
    cfg = load_config(tmp_path / "b.yaml", ["train.name=x"])
    assert (cfg.model.connector.kind, cfg.optim.max_steps, cfg.train.name) == ("mlp", 5, "x")


def test_round_trip_through_yaml_and_dict(tmp_path):
    cfg = load_config(None, ["model.attach_layer=2"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("overrides, needle", [
    (["model.connector.nope=1"], "nope"),
    (["optim.max_steps=many"], "max_steps"),
    (["no_equals_sign"], "no_equals_sign"),
])
def test_bad_overrides_are_one_line_errors(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(loop)
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "configs" / "*.yaml"))), ids=lambda p: Path(p).name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.model.decoder.n_layer >= 1


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ["data", "lm", "encoder", "train", "evaluate", "recognize", "loss-gap", "compare",
                    "sweep", "bench", "demo"]:
        assert command in out


def test_each_command_has_help():
    parser = build_parser()
    for argv in (["data", "synth"], ["data", "check"], ["data", "preview"], ["lm", "train"],
                 ["encoder", "train"], ["train"], ["evaluate"], ["recognize"], ["loss-gap"],
                 ["compare"], ["sweep"], ["bench"], ["demo"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv + ["--help"])
        assert exit_info.value.code == 0


def test_user_error_is_one_line_and_nonzero(tmp_path, capsys):
    pytest.importorskip("bridgeocr.train.run")
    code = main(["train", "--config", str(tmp_path / "nothing.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "nothing.yaml" in err and err.count("\n") == 1
