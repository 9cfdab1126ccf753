"""benchmarks/trocr_baseline.py: a tiny TrOCR-style baseline trained `--like` a hand-made run dir (its own
pretrained encoder and GPT LM), saved, reloaded, evaluated, and scored by benchmarks/peers.py --trocr."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import load_script, make_box_dataset


def _script(name: str):
    return load_script(f"benchmarks/{name}.py")


def _dataset(root: Path, n: int = 12) -> Path:
    return make_box_dataset(root, n=n, splits=("train", "train", "val"))


@pytest.fixture(scope="module")
def like_run(tmp_path_factory):
    """A finished-run dir made by hand: config.yaml (pretrained encoder + 2-block LM, 1 block used),
    metrics.json (step 2) and tokenizer.json."""
    from bridgeocr.config import DecoderConfig, ExperimentConfig, save_config
    from bridgeocr.data.tokenizers import CharTokenizer
    from bridgeocr.models.decoder import GPT
    from bridgeocr.models.encoder import LineEncoder

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
    from bridgeocr.data.preprocess import make_loader
    from bridgeocr.data.sources import open_source
    from bridgeocr.models.decoder import GPT
    from bridgeocr.models.encdec import CARD, decode_batch, load_baseline
    from bridgeocr.models.encoder import load_encoder
    from bridgeocr.train.encdec import build_like, read_like

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
