"""train/encdec.py through benchmarks/trocr_baseline.py: a tiny TrOCR-style baseline trained `--like` a
hand-made run dir (its own pretrained encoder and GPT LM), saved, reloaded, evaluated, and scored by
benchmarks/peers.py --trocr; on the Lightning engine: a run killed mid-epoch and resumed ends with the
uninterrupted run's weights, a run in --out is refused or replaced, CSV + TensorBoard logs and the card."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bridgeocr.config import DecoderConfig, ExperimentConfig, load_config, save_config
from bridgeocr.data.preprocess import make_loader
from bridgeocr.data.sources import open_source
from bridgeocr.data.tokenizers import CharTokenizer
from bridgeocr.models.decoder import GPT
from bridgeocr.models.encdec import CARD, decode_batch, load_baseline
from bridgeocr.models.encoder import LineEncoder, load_encoder
from bridgeocr.train.encdec import build_like, read_like
from bridgeocr.train.resume import SafeCheckpointIO
from conftest import load_script, make_box_dataset, run_killed


def _script(name: str):
    return load_script(f"benchmarks/{name}.py")


def _dataset(root: Path, n: int = 12) -> Path:
    return make_box_dataset(root, n=n, splits=("train", "train", "val"))


@pytest.fixture(scope="module")
def like_run(tmp_path_factory):
    """A finished-run dir made by hand: config.yaml (pretrained encoder + 2-block LM, 1 block used),
    metrics.json (step 2) and tokenizer.json."""
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("like")
    cfg = ExperimentConfig()
    cfg.data.source = str(_dataset(tmp / "data"))
    cfg.data.image.height, cfg.data.image.max_width, cfg.data.image.width_multiple = 16, 256, 4
    e = cfg.model.encoder
    e.dim, e.depth, e.heads, e.patch_height, e.patch_width, e.conv_stem = 32, 1, 2, 16, 4, False
    tok = CharTokenizer.build(["abcd "])
    LineEncoder(e, 16).save_pretrained(tmp / "enc")
    GPT(DecoderConfig(n_layer=2, n_embd=32, n_head=2, n_positions=64), tok.vocab_size).save_hf(tmp / "lm")
    tok.save(tmp / "lm" / "tokenizer.json")
    e.pretrained, cfg.model.decoder.pretrained = str(tmp / "enc"), str(tmp / "lm")
    cfg.model.decoder.n_layer, cfg.model.decoder.n_embd, cfg.model.decoder.n_head = 1, 32, 2
    cfg.model.max_text_tokens = 20
    cfg.optim.batch_size, cfg.optim.max_steps, cfg.optim.warmup_steps = 4, 5, 1
    cfg.optim.freeze_schedule = [{"until_step": 1, "train": ["connector"]}]
    run = tmp / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    tok.save(run / "tokenizer.json")
    (run / "metrics.json").write_text(json.dumps({"name": "tiny", "step": 2, "wall_time_s": 3.0,
                                                  "train_lines_per_s": 10.0, "val_cer": 0.9}))
    return tmp, run


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_train_like_save_reload_evaluate_and_peers(like_run, tmp_path, capsys):
    tmp, run = like_run
    cfg, _, tok = read_like(run)

    # initialised from the run's pretrained parts; the cross-attention is new
    model = build_like(cfg, tok)
    enc = load_encoder(tmp / "enc")[0]
    lm = GPT.from_hf(tmp / "lm", n_layer=1)
    assert torch.equal(model.encoder.line.blocks[0].attn.qkv.weight, enc.blocks[0].attn.qkv.weight)
    dec = model.decoder
    assert dec.config.n_layer == 1 and dec.config.add_cross_attention and dec.config.vocab_size == tok.vocab_size
    assert torch.equal(dec.transformer.wte.weight, lm.wte.weight)
    assert torch.equal(dec.transformer.h[0].mlp.c_fc.weight, lm.state_dict()["h.0.mlp.c_fc.weight"].t())
    assert any("crossattention" in n for n, _ in dec.named_parameters())
    assert model.config.decoder_start_token_id == tok.bos_id and model.config.pad_token_id == tok.pad_id

    # train 2 steps like the run (its metrics.json step), save
    out = tmp_path / "trocr"
    tb = _script("trocr_baseline")
    assert tb.main(["train", "--like", str(run), "--out", str(out), "--device", "cpu", "--no-progress",
                    "--val-every", "1"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    card = json.loads((out / CARD).read_text())
    assert card["steps"] == 2 and card["stopped_by"] == "steps" and card["run"]["step"] == 2
    assert card["val_n"] == 4 and 0 <= card["val_cer"] and card["train_lines_per_s"] > 0
    assert card["image"]["height"] == 16 and card["special_ids"]["bos_id"] == tok.bos_id
    assert [h["step"] for h in card["val_history"]] == [1, 2] and card["best_step"] in (1, 2)

    # reload; the padding mask is honoured: a line decodes the same alone and in a padded batch
    model, tok2, image_cfg, _ = load_baseline(out)
    assert image_cfg.height == 16 and tok2.vocab_size == tok.vocab_size
    source = list(open_source(cfg.data.source, "val"))
    batch = next(iter(make_loader(source, image_cfg, tok2, batch_size=len(source), shuffle=False)))
    assert not bool(batch.image_mask.all())  # widths differ: some lines are padded
    i = min(range(len(batch)), key=lambda k: int(batch.image_mask[k].sum()))  # the most padded line
    single = next(iter(make_loader([s for s in source if s.id == batch.ids[i]], image_cfg, tok2, 1, shuffle=False)))
    assert single.images.shape[-1] < batch.images.shape[-1]
    ids = single.input_ids
    with torch.no_grad():
        alone = model(pixel_values=single.images, image_mask=single.image_mask, decoder_input_ids=ids).logits[0]
        padded = model(pixel_values=batch.images, image_mask=batch.image_mask,
                       decoder_input_ids=ids.expand(len(batch), -1)).logits[i]
        unmasked = model(pixel_values=batch.images, decoder_input_ids=ids.expand(len(batch), -1)).logits[i]
    assert torch.allclose(alone, padded, atol=1e-5) and not torch.allclose(alone, unmasked, atol=1e-5)
    together = decode_batch(model, batch, tok2, 12)
    assert together[i] == decode_batch(model, single, tok2, 12)[0]

    # freeze_schedule: step 0 trains the connector only (here: the cross-attention)
    assert tb.main(["train", "--like", str(run), "--out", str(tmp_path / "one"), "--steps", "1", "--minutes", "5",
                    "--no-progress"]) == 0
    one = load_baseline(tmp_path / "one")[0]
    torch.manual_seed(cfg.train.seed)  # as train_like: the same random cross-attention to start from
    fresh = build_like(cfg, tok)
    assert torch.equal(one.encoder.line.blocks[0].attn.qkv.weight, enc.blocks[0].attn.qkv.weight)
    assert torch.equal(one.decoder.transformer.h[0].mlp.c_fc.weight, fresh.decoder.transformer.h[0].mlp.c_fc.weight)
    assert not torch.equal(one.decoder.transformer.h[0].crossattention.c_attn.weight,
                           fresh.decoder.transformer.h[0].crossattention.c_attn.weight)

    # eval sub-command
    assert tb.main(["eval", "--model", str(out), "--data", f"{cfg.data.source}@val", "--out",
                    str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["n"] == 4 and math.isfinite(ev["cer"]) and ev["lines_per_s"] > 0

    # the peers' table: trocr beside the others
    peers = _script("peers")
    assert peers.main(["--data", f"{cfg.data.source}@val", "--peers", "", "--trocr", str(out),
                       "--threads", "1", "--out", str(tmp_path / "peers")]) == 0
    rows = json.loads((tmp_path / "peers" / "peers.json").read_text())
    assert [r["system"] for r in rows] == ["trocr"] and rows[0]["lines"] == 4
    assert rows[0]["cer"] == pytest.approx(ev["cer"])
    assert "| trocr | 4 |" in capsys.readouterr().out


# --------------------------------------------------------------------------- the engine: resume, guard, logs

# The keys the card had when the baseline was trained by a loop of its own (benchmarks and notes read them).
CARD_KEYS = {"kind", "like", "data", "splits", "steps", "target_steps", "stopped_by", "epochs", "batch_size",
             "accumulate", "minutes", "train_seconds", "wall_time_s", "train_lines_per_s", "val_cer",
             "val_wer", "best_step", "val_n", "val_history", "params", "image", "max_new_tokens", "init",
             "optim", "device", "precision", "special_ids", "run"}

# The baseline's `train` (benchmarks/trocr_baseline.py), for run_killed.
BASELINE_ENTRY = "from conftest import load_script\nsys.exit(load_script('benchmarks/trocr_baseline.py').main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def noisy_run(like_run, tmp_path_factory):
    """The like-run with decoder dropout 0.1, 2 batches per optimizer step and 4 batches an epoch (16 train
    lines): what a resume must get right (dropout masks, the place in the epoch and in the accumulation)."""
    _, run = like_run
    tmp = tmp_path_factory.mktemp("noisy")
    cfg = load_config(run / "config.yaml")
    cfg.data.source = str(_dataset(tmp / "data", n=24))
    cfg.model.decoder.dropout, cfg.optim.accumulate = 0.1, 2
    noisy = tmp / "run"
    noisy.mkdir()
    save_config(cfg, noisy / "config.yaml")
    for f in ("tokenizer.json", "metrics.json"):
        shutil.copy(run / f, noisy / f)
    return tmp, noisy


def _train(run: Path, out: Path, *extra: str) -> int:
    return _script("trocr_baseline").main(["train", "--like", str(run), "--out", str(out), "--steps", "6",
                                           "--val-every", "3", "--device", "cpu", "--no-progress", *extra])


@pytest.fixture(scope="module")
def straight(noisy_run):
    """The uninterrupted run: 6 steps, validated (and checkpointed) at step 3 and at the end."""
    tmp, run = noisy_run
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _train(run, tmp / "straight") == 0
    finally:
        torch.set_num_threads(n)
    return tmp / "straight"


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def test_killed_mid_epoch_resumes_to_the_uninterrupted_weights(noisy_run, straight):
    tmp, run = noisy_run
    out = tmp / "killed"
    run_killed("bridgeocr.train.encdec:_BaselineModule", 5,
               ["train", "--like", str(run), "--out", str(out), "--steps", "6", "--val-every", "3", "--device",
                "cpu", "--no-progress", "--threads", "1"], cwd=tmp, entry=BASELINE_ENTRY)
    state = SafeCheckpointIO().load_checkpoint(out / "last.ckpt")
    assert state["global_step"] == 3  # the kill came after the step-3 checkpoint: mid-epoch 1
    interim = json.loads((out / CARD).read_text())  # the step-3 best, loadable; no results yet
    assert (out / "model.safetensors").is_file() and "steps" not in interim and interim["image"]["height"] == 16

    assert _train(run, out, "--resume") == 0
    assert _max_diff(straight, out) <= 1e-6  # the best model, in OUT
    assert _max_diff(straight / "last", out / "last") <= 1e-6
    a, b = (json.loads((d / CARD).read_text()) for d in (straight, out))
    assert b["resumed"] and not a["resumed"] and b["steps"] == a["steps"] == 6 and b["stopped_by"] == "steps"
    assert [h["step"] for h in b["val_history"]] == [h["step"] for h in a["val_history"]] == [3, 6]
    for x, y in zip(a["val_history"], b["val_history"]):
        assert x["cer"] == pytest.approx(y["cer"]) and x["wer"] == pytest.approx(y["wer"])
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    seen = [(r["step"], frozenset(k for k, v in r.items() if v)) for r in rows]
    assert len(seen) == len(set(seen)), "metrics.csv holds replayed rows"
    straight_rows = list(csv.DictReader((straight / "metrics.csv").open()))
    assert sorted(seen) == sorted((r["step"], frozenset(k for k, v in r.items() if v)) for r in straight_rows)


def test_a_run_in_out_is_refused_or_replaced(noisy_run, straight, tmp_path, capsys):
    _, run = noisy_run
    capsys.readouterr()
    assert _train(run, straight) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and "--resume" in err[0] and "--overwrite" in err[0]

    out = tmp_path / "copy"
    shutil.copytree(straight, out)
    before = json.loads((out / CARD).read_text())
    assert _train(run, out, "--resume") == 0  # a finished run: nothing to train, the same result
    again = json.loads((out / CARD).read_text())
    assert again["val_history"] == before["val_history"] and again["steps"] == 6
    assert _train(run, out, "--overwrite", "--steps", "1") == 0
    card = json.loads((out / CARD).read_text())
    assert card["steps"] == 1 and not card["resumed"]
    assert sorted(p.name for p in (out / "csv").iterdir()) == ["part0"]  # the old run's logs went with it
    assert {r["step"] for r in csv.DictReader((out / "metrics.csv").open())} <= {"0", "1"}


def test_logs_checkpoints_and_card(straight):
    card = json.loads((straight / CARD).read_text())
    assert CARD_KEYS <= card.keys() and {"devices", "resumed", "time_s"} <= card.keys()
    assert card["devices"] == 1 and card["precision"] == "32-true" and card["device"] == "cpu"
    assert card["accumulate"] == 2 and card["target_steps"] == 6 and card["val_n"] == 8
    assert card["best_step"] in (3, 6) and card["train_lines_per_s"] > 0 and card["epochs"] == 3
    rows = list(csv.DictReader((straight / "metrics.csv").open()))
    loss = sorted(int(r["step"]) for r in rows if r.get("train/loss"))
    assert loss == sorted(set(loss)) and len(loss) >= 5  # a loss row per optimizer step (logged from step 0)
    assert sorted(int(r["step"]) for r in rows if r.get("val/cer")) == [3, 6]
    assert list((straight / "tb").glob("events.out.tfevents.*"))
    assert (straight / "last.ckpt" / "state.json").is_file()
    state = json.loads((straight / "last" / "train_state.json").read_text())
    assert state["step"] == 6 and [h["step"] for h in state["history"]] == [3, 6]
    model, tok, image_cfg, last_card = load_baseline(straight / "last")  # the latest state, a baseline dir
    assert image_cfg.height == 16 and last_card["special_ids"]["bos_id"] == tok.bos_id


@pytest.mark.parametrize("spec", ["all", "top:1", "none"])
def test_the_baseline_freezes_its_decoder_by_the_decoders_rule(like_run, spec):
    """`decoder.freeze` means on the baseline's GPT-2 what it means on ours (models/decoder.freeze_blocks);
    the new cross-attention, the bridge, trains whatever it says."""
    from bridgeocr.models.encdec import CROSS_KEYS
    from bridgeocr.train.encdec import build_like, read_like

    cfg, _, tok = read_like(like_run[1])
    cfg.model.decoder.freeze = spec
    model = build_like(cfg, tok)
    trains = {n for n, p in model.decoder.named_parameters() if p.requires_grad}
    cross = {n for n, _ in model.decoder.named_parameters() if any(k in n for k in CROSS_KEYS)}
    assert cross and cross <= trains
    block0 = {n for n in trains - cross if ".h.0." in n}
    embeddings = {n for n in trains if "wte" in n or "wpe" in n}
    assert bool(block0) == (spec != "all") and bool(embeddings) == (spec == "none")
    assert any("ln_f" in n for n in trains) == (spec != "all")
