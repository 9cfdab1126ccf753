"""Issue 16 (7): settings are checked before work starts, and so is the output directory.

A value that cannot be meant (a zero height, a negative learning rate, an unknown connector) is refused when
the config or flag is read, naming the dotted key (or flag) and the value, before any run directory is
written; a YAML syntax error names its file and line; an unwritable or full output directory fails before a
long decode or training, not after it.
"""

import errno
import glob
import json
import os
from pathlib import Path

import pytest

from bridgeocr.cli import build_parser, main
from bridgeocr.config import (
    ENCODER_KINDS,
    ExperimentConfig,
    config_from_dict,
    load_config,
    save_config,
    validate,
)
from bridgeocr.errors import BridgeOCRError, ConfigError
from bridgeocr.models.connectors import connector_names  # also adds the connector's config check
from bridgeocr.preflight import ensure_writable

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "src" / "bridgeocr" / "resources" / "models"

# (override, dotted key, the value as the message shows it)
BAD = [
    ("data.image.height=0", "data.image.height", "0"),
    ("model.encoder.patch_width=-1", "model.encoder.patch_width", "-1"),
    ("optim.batch_size=0", "optim.batch_size", "0"),
    ("optim.lr_decoder=-1e-3", "optim.lr_decoder", "-0.001"),
    ("optim.lr_encoder=0", "optim.lr_encoder", "0.0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps", "-1"),
    ("optim.max_steps=0", "optim.max_steps", "0"),
    ("optim.max_epochs=0", "optim.max_epochs", "0"),
    ("optim.max_minutes=-5", "optim.max_minutes", "-5.0"),
    ("train.eval_beam=0", "train.eval_beam", "0"),
    ("model.joint_beam=0", "model.joint_beam", "0"),
    ("model.decoder.n_positions=0", "model.decoder.n_positions", "0"),
    ("model.max_text_tokens=-3", "model.max_text_tokens", "-3"),
    ("loss.kd_tau=0", "loss.kd_tau", "0.0"),
    ("loss.kd_alpha=-0.5", "loss.kd_alpha", "-0.5"),
    ("loss.kd_start_step=-1", "loss.kd_start_step", "-1"),
    ("loss.input_dropout=1.5", "loss.input_dropout", "1.5"),
    ("model.decoder.dropout=-0.1", "model.decoder.dropout", "-0.1"),
    ("model.connector.kind=transformer", "model.connector.kind", "'transformer'"),
    ("data.image.width_policy=stretch", "data.image.width_policy", "'stretch'"),
    ("loss.kd_form=mean", "loss.kd_form", "'mean'"),
    ("tokenizer.kind=word", "tokenizer.kind", "'word'"),
    ("model.decoding=greedy", "model.decoding", "'greedy'"),
    ("model.decoder.freeze=top:two", "model.decoder.freeze", "'top:two'"),
    ("loss.kd_alpha=nan", "loss.kd_alpha", "nan"),
]

# the limits themselves are fine (and what the code reads them as: 0 minutes, -1 epochs = no limit)
GOOD = ["data.image.height=1", "optim.warmup_steps=0", "loss.input_dropout=1", "loss.kd_start_step=0",
        "optim.max_minutes=0", "optim.max_minutes=null", "optim.max_epochs=-1", "train.eval_beam=null",
        "model.decoder.freeze=top:2", "model.connector.reduce=none", "loss.kd_alpha=3", "train.precision=32"]


@pytest.mark.parametrize("override, key, shown", BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_refused_naming_key_and_value(override, key, shown):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert message.startswith(f"config: {key} must be ") and message.endswith(f", got {shown}")
    assert "\n" not in message


@pytest.mark.parametrize("override", GOOD)
def test_values_at_the_limits_load(override):
    assert isinstance(load_config(None, [override]), ExperimentConfig)


def test_values_that_only_fail_together():
    with pytest.raises(ConfigError, match=r"^config: loss\.kd_alpha must be <= 1 with loss\.kd_form=interpolate"):
        load_config(None, ["loss.kd_form=interpolate", "loss.kd_alpha=1.5"])
    with pytest.raises(ConfigError, match=r"^config: model\.attach_layer must be < model\.decoder\.n_layer"):
        load_config(None, ["model.decoder.n_layer=2", "model.attach_layer=2"])
    assert load_config(None, ["model.decoder.n_layer=2", "model.attach_layer=1"]).model.attach_layer == 1


def test_a_bad_value_in_a_file_is_refused(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("optim:\n  batch_size: -4\n")
    with pytest.raises(ConfigError, match=r"^config: optim\.batch_size must be >= 1, got -4$"):
        load_config(path)


def test_the_kind_lists_match_the_code():
    from bridgeocr.models.encoder import ENCODER_KINDS as BUILT

    assert set(BUILT) <= set(ENCODER_KINDS)
    with pytest.raises(ConfigError) as err:  # the connector kinds are the registry's, nowhere else
        load_config(None, ["model.connector.kind=nope"])
    assert str(err.value).endswith(f"one of {' | '.join(connector_names())}, got 'nope'")


@pytest.mark.parametrize("overrides, message", [
    (["model.connector.kind=qformer", "model.connector.num_queries=0"],
     "config: model.connector.num_queries must be >= 1, got 0"),
    (["model.connector.kind=qformer", "model.connector.locality=-1"],
     "config: model.connector.locality must be >= 0, got -1.0"),
    (["model.connector.kind=qformer", "model.connector.dropout=2"],
     "config: model.connector.dropout must be in [0, 1], got 2.0"),
    (["model.connector.kind=cabstractor", "model.connector.layers=0"],
     "config: model.connector.layers must be >= 1, got 0"),
    (["model.connector.kind=qformer", "model.connector.num_queries=many"],
     "config: model.connector.num_queries: Value 'many' of type 'str' could not be converted to Integer"),
    (["model.connector.querys=64"], "config: model.connector.querys: no connector kind has this setting"),
])
def test_a_kinds_own_settings_are_checked_by_the_kind(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_kinds_settings_are_written_flat_and_recorded_in_full(tmp_path):
    """YAML and overrides write a kind's settings flat; the config keeps them as the kind's options, filled in
    with its defaults, without another kind's (a sweep over kinds shares them), and they round-trip."""
    cfg = load_config(None, ["model.connector.kind=qformer", "model.connector.num_queries=64"])
    assert cfg.model.connector.options == {"num_queries": 64, "layers": 2, "heads": 4, "locality": 0.0,
                                           "dropout": 0.0}
    assert load_config(None, ["model.connector.kind=linear", "model.connector.num_queries=64"]
                       ).model.connector.options == {}
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    old = cfg.to_dict()  # a model directory written before options: the settings beside `kind`
    old["model"]["connector"] = {"kind": "qformer", "num_queries": 64, "layers": 2, "heads": 4,
                                 "locality": 0.0, "dropout": 0.0, "reduce": None, "reduce_k": 1, "init": "random"}
    assert config_from_dict(old) == cfg


@pytest.mark.parametrize("override, key", [("data.image.height=0", "data.image.height"),
                                           ("optim.lr_connector=-1e-3", "optim.lr_connector"),
                                           ("model.connector.kind=nope", "model.connector.kind"),
                                           ("loss.kd_tau=0", "loss.kd_tau")])
def test_train_refuses_before_a_run_directory_exists(tmp_path, capsys, override, key):
    out = tmp_path / "runs"
    code = main(["train", "--config", str(REPO / "configs" / "base.yaml"), override, f"train.out_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: config: {key} must be ") and err.count("\n") == 1
    assert not out.exists()


# ------------------------------------------------------------------------------------------ shipped configs


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "configs" / "*.yaml"))), ids=lambda p: Path(p).name)
def test_every_config_passes_the_checks(path):
    cfg = load_config(path)
    assert validate(cfg) is cfg


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "configs" / "sweeps" / "*.yaml"))),
                         ids=lambda p: Path(p).name)
def test_every_sweep_cell_passes_the_checks(path, tmp_path):
    from bridgeocr.experiments.sweep import plan_sweep

    _, cells, _, _ = plan_sweep(path, None, None, str(tmp_path / "sweep"))  # loads every cell's config
    assert cells and not (tmp_path / "sweep").exists()


def test_the_shipped_models_configs_pass_the_checks():
    meta = json.loads((MODELS / "ocr_default" / "config.json").read_text())
    validate(ExperimentConfig(model=config_from_dict(meta["model"], type(ExperimentConfig().model))))
    for d in ("encoder_ctc", "encoder_vit"):
        enc = json.loads((MODELS / d / "config.json").read_text())["encoder"]
        cfg = ExperimentConfig()
        cfg.model.encoder = config_from_dict(enc, type(cfg.model.encoder))
        validate(cfg)


# ------------------------------------------------------------------------------------------------ YAML


@pytest.mark.parametrize("text, line, needle", [
    ("model:\n  connector:\n    kind: linear\noptim: [unclosed\ntrain:\n  name: x\n", 5, "expected ','"),
    ("optim:\n  batch_size: 4\n   lr_decoder: 1\n", 3, "mapping values are not allowed"),
    ("optim:\n  batch_size: 4\n  batch_size: 8\n", 3, "duplicate key batch_size"),
    ("optim:\n\tbatch_size: 4\n", 2, "cannot start any token"),
])
def test_a_yaml_syntax_error_names_file_and_line(tmp_path, text, line, needle):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: YAML syntax error: ") and needle in message
    assert "\n" not in message


def test_a_syntax_error_in_a_base_names_the_base(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("optim:\n  batch_size: [4\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  name: b\n")
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'a.yaml'}:3: YAML syntax error: "):
        load_config(tmp_path / "b.yaml")
    assert main(["train", "--config", str(tmp_path / "b.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'a.yaml'}:3: YAML syntax error: ") and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------- flags


def _parse_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert sum("error:" in line for line in err.splitlines()) == 1
    return next(line for line in err.splitlines() if "error:" in line)


@pytest.mark.parametrize("argv, flag", [
    (["evaluate", "--checkpoint", "c", "--data", "d", "--beam", "0"], "--beam"),
    (["evaluate", "--checkpoint", "c", "--data", "d", "--batch-size", "0"], "--batch-size"),
    (["recognize", "x.png", "--beam", "0"], "--beam"),
    (["recognize", "x.png", "--batch-size", "-2"], "--batch-size"),
    (["lm", "train", "--out", "o", "--steps", "0"], "--steps"),
    (["lm", "train", "--out", "o", "--lr=-1e-3"], "--lr"),  # argparse reads a bare -1e-3 as a flag
    (["lm", "train", "--out", "o", "--minutes", "0"], "--minutes"),
    (["encoder", "train", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["encoder", "train", "--data", "d", "--out", "o", "--lr", "nan"], "--lr"),
    (["evaluate", "--checkpoint", "c", "--data", "d", "--max-skipped", "-0.1"], "--max-skipped"),
])
def test_a_bad_flag_is_refused_at_parse_time(argv, flag, capsys):
    line = _parse_error(argv, capsys)
    assert f"argument {flag}: must be " in line and line.endswith(f", got {argv[-1].partition('=')[2] or argv[-1]}")


def test_a_flag_that_is_no_number_is_refused(capsys):
    line = _parse_error(["evaluate", "--checkpoint", "c", "--data", "d", "--beam", "two"], capsys)
    assert "argument --beam: expected an integer, got 'two'" in line


def test_main_exits_2_on_a_bad_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["recognize", "x.png", "--beam", "0"])
    assert exit_info.value.code == 2


def test_good_flags_parse_to_numbers():
    args = build_parser().parse_args(["evaluate", "--checkpoint", "c", "--data", "d", "--beam", "3",
                                      "--batch-size", "1", "--max-skipped", "0"])
    assert (args.beam, args.batch_size, args.max_skipped) == (3, 1, 0.0) and isinstance(args.beam, int)
    args = build_parser().parse_args(["lm", "train", "--out", "o", "--lr", "2e-4", "--minutes", "0.5"])
    assert (args.lr, args.minutes, args.beam if hasattr(args, "beam") else None) == (2e-4, 0.5, None)
    assert build_parser().parse_args(["recognize", "x.png"]).beam is None  # default: the model's


# -------------------------------------------------------------------------------------- output directories


def _unwritable(tmp_path: Path) -> Path:
    """A directory no one can write in: read-only, or (root ignores permissions) a path under a file."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    probe = ro / "probe"
    try:
        probe.write_text("x")
    except OSError:
        return ro / "out"
    probe.unlink()  # root: the permission did not hold
    assert os.geteuid() == 0
    (tmp_path / "file.txt").write_text("a file, not a directory\n")
    return tmp_path / "file.txt" / "sub"


def test_ensure_writable_refuses_an_unwritable_directory(tmp_path):
    target = _unwritable(tmp_path)
    try:
        with pytest.raises(BridgeOCRError) as err:
            ensure_writable(target)
        assert str(err.value).startswith(f"{target}: cannot write here (")
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_ensure_writable_refuses_a_file_and_a_full_disk(tmp_path, monkeypatch):
    import bridgeocr.preflight as preflight

    (tmp_path / "f").write_text("x")
    with pytest.raises(BridgeOCRError, match=r"f: cannot write here \(a file, not a directory\)$"):
        ensure_writable(tmp_path / "f")

    full = tmp_path / "full"
    real_usage = preflight.shutil.disk_usage
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1000))
    with pytest.raises(BridgeOCRError, match=r"full: cannot write here \(only 1000 bytes free, need 4 MiB\)$"):
        ensure_writable(full)
    assert list(full.iterdir()) == []  # the probe is gone
    monkeypatch.setattr(preflight.shutil, "disk_usage", real_usage)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(preflight.os, "fsync", no_space)
    with pytest.raises(BridgeOCRError, match=r"full: cannot write here \(No space left on device\)$"):
        ensure_writable(full)
    assert list(full.iterdir()) == []


def test_ensure_writable_makes_the_directory_and_leaves_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    assert ensure_writable(target, need_bytes=1) == target
    assert target.is_dir() and list(target.iterdir()) == []


def test_train_into_an_unwritable_directory_fails_before_training(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  name: t\n")
    target = _unwritable(tmp_path)
    # data.source does not exist: had train read the data (or trained), the error would name it instead
    code = main(["train", "--config", str(cfg), f"train.out_dir={target}", f"data.source={tmp_path / 'none'}"])
    err = capsys.readouterr().err
    (tmp_path / "ro").chmod(0o700)
    assert code == 2
    assert err.startswith(f"error: {target / 't'}: cannot write here (") and err.count("\n") == 1


def test_lm_and_encoder_train_check_their_out_first(tmp_path):
    from bridgeocr.train.encoder_pretrain import train_encoder
    from bridgeocr.train.lm import train_lm

    target = _unwritable(tmp_path)
    try:
        with pytest.raises(BridgeOCRError, match=r"cannot write here"):
            train_lm(docs=["a line of text"] * 30, val_docs=None, out=target, steps=1, progress=False)
        with pytest.raises(BridgeOCRError, match=r"cannot write here"):  # before the (missing) data is read
            train_encoder(ExperimentConfig(), [str(tmp_path / "none")], None, target, steps=1, minutes=None,
                          batch_size=2, lr=1e-3, seed=0, resume=False, progress=False)
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_evaluate_checks_out_before_decoding(tmp_path, capsys, monkeypatch):
    import bridgeocr.eval.evaluate as evaluate
    from conftest import make_box_dataset, tiny_ocr_model

    ckpt = tmp_path / "ckpt"
    tiny_ocr_model().save_pretrained(ckpt)
    data = make_box_dataset(tmp_path / "data", n=4)

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded before the output directory was checked")

    monkeypatch.setattr(evaluate, "evaluate_model", no_decode)
    target = _unwritable(tmp_path)
    code = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--split", "all", "--out", str(target)])
    err = capsys.readouterr().err
    (tmp_path / "ro").chmod(0o700)
    assert code == 2 and err.startswith(f"error: {target}: cannot write here (")
