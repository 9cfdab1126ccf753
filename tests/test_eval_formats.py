"""Issue 13, points 3 and 4: files other tools read (HF tokenizer files, a complete HF decoder directory) and
evaluation as the field does it (all lines of an unsplit source, Unicode normalisation, predictions files
that round-trip any text, the config as TensorBoard hparams)."""

import json
import unicodedata
from pathlib import Path

import pytest
import torch

from bridgeocr.cli import main
from bridgeocr.data.tokenizers import FORMAT, SPECIALS, BPETokenizer, CharTokenizer, load_tokenizer
from bridgeocr.errors import BridgeOCRError, DataError
from conftest import TINY_YAML, make_box_dataset, tiny_ocr_model

SHIPPED = sorted((Path(__file__).resolve().parents[1] / "src" / "bridgeocr" / "resources" / "models")
                 .glob("*/tokenizer.json"))
PROBES = ["A MOVE to stop Mr. Gaitskell from", "  two  spaces, \"quotes\" and 'single' — café 123  ",
          "unknown: ☃ 𝔘 \x00 \t tab", "", " ", "a"]


def _hf_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _same_ids_everywhere(tok, d: Path, texts):
    """`tok` saved in `d` reads the same in bridgeocr, transformers and tokenizers."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    hf = _hf_tokenizer(d)
    assert isinstance(hf, PreTrainedTokenizerFast)
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    again = load_tokenizer(d)
    assert type(again) is type(tok) and again.vocab_size == tok.vocab_size == len(hf)
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == \
        (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id)
    for s in texts:
        ids = tok.encode(s)
        assert hf.encode(s) == ids, s
        assert raw.encode(s, add_special_tokens=False).ids == ids, s
        assert again.encode(s) == ids, s
        assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids) == again.decode(ids), s
    return hf


# ------------------------------------------------------------------------------------------ tokenizers


@pytest.mark.parametrize("path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_shipped_tokenizer_reads_the_same_in_bridgeocr_transformers_and_tokenizers(path, tmp_path):
    assert len(SHIPPED) >= 4
    assert json.loads(path.read_text())["format"] == FORMAT  # the shipped files are the old format
    tok = load_tokenizer(path)
    assert isinstance(tok, CharTokenizer)
    unknown = tok.encode(PROBES[2])
    assert unknown.count(tok.unk_id) >= 3  # the probes do hold unknown characters
    tok.save(tmp_path / "tokenizer.json")
    assert {p.name for p in tmp_path.iterdir()} == {"tokenizer.json", "tokenizer_config.json",
                                                     "special_tokens_map.json"}
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    assert data["model"]["type"] == "WordLevel" and "format" not in data
    assert [(t["id"], t["content"], t["special"]) for t in data["added_tokens"]] == \
        [(i, s, True) for i, s in enumerate(SPECIALS)]
    assert load_tokenizer(tmp_path / "tokenizer.json").itos == tok.itos  # every id as in the shipped file
    hf = _same_ids_everywhere(tok, tmp_path, PROBES + [tok.decode(range(tok.vocab_size))])
    assert hf.decode(unknown) != tok.decode(unknown)  # without skip_special_tokens the <unk>s show


def test_char_tokenizer_hf_files_round_trip_every_character_and_space(tmp_path):
    texts = ["ab  c", "\ttab\nnew line", 'say "hi" \\ back', " lead", "trail ", ". , ; !"]
    tok = CharTokenizer.build(texts)
    tok.save(tmp_path / "tokenizer.json")
    hf = _same_ids_everywhere(tok, tmp_path, texts + ["   ", "a b", "ab . c ,d", "zz? qq"])
    for s in texts + ["  ab  ", "a . b", "a , b", "ab"]:  # no spaces put between characters, none cleaned up
        assert tok.covers(s) and hf.decode(tok.encode(s)) == s


def test_bpe_tokenizer_hf_files(tmp_path):
    texts = ["the cat sat on the mat", "a dog ran in the fog", "\"quoted\" text — café"]
    tok = BPETokenizer.train(texts * 5, vocab_size=300)
    tok.save(tmp_path / "tokenizer.json")
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    assert data["model"]["type"] == "BPE" and "format" not in data
    assert {t["content"]: t["id"] for t in data["added_tokens"]} == {s: i for i, s in enumerate(SPECIALS)}
    _same_ids_everywhere(tok, tmp_path, texts + ["  spaces  \t tab", "☃ unseen 𝔘", ""])
    assert load_tokenizer(tmp_path).special_ids == tok.special_ids


def test_gpt2_style_vocabulary_gets_its_end_of_text_as_the_special_token(tmp_path):
    """vocab.json + merges.txt (no added tokens): saved, <|endoftext|> becomes a special added token at its id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    from tokenizers import trainers

    tk.train_from_iterator(["hello world"] * 5, trainers.BpeTrainer(
        vocab_size=270, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tk.model.save(str(tmp_path))  # vocab.json + merges.txt: <|endoftext|> in the vocabulary, not added
    tok = load_tokenizer(tmp_path)
    eot = tok.tk.token_to_id("<|endoftext|>")
    assert tok.pad_id == tok.bos_id == tok.eos_id == tok.unk_id == eot
    out = tmp_path / "hf"
    tok.save(out / "tokenizer.json")
    data = json.loads((out / "tokenizer.json").read_text())
    assert [(t["id"], t["content"], t["special"]) for t in data["added_tokens"]] == [(eot, "<|endoftext|>", True)]
    hf = _same_ids_everywhere(tok, out, ["hello world", " hello  wörld "])
    assert hf.eos_token == "<|endoftext|>"


def test_old_format_files_still_load_with_the_same_ids(tmp_path):
    char = CharTokenizer.build(["abc d"])
    (tmp_path / "c.json").write_text(json.dumps({"format": FORMAT, "kind": "char", "vocab": char.itos}))
    old = load_tokenizer(tmp_path / "c.json")
    assert isinstance(old, CharTokenizer) and old.itos == char.itos
    bpe = BPETokenizer.train(["hello world"] * 5, vocab_size=280)
    (tmp_path / "b.json").write_text(json.dumps({"format": FORMAT, "kind": "bpe",
                                                 "tokenizer": json.loads(bpe.tk.to_str())}))
    old = load_tokenizer(tmp_path / "b.json")
    assert isinstance(old, BPETokenizer) and old.encode("hello wörld") == bpe.encode("hello wörld")
    old.save(tmp_path / "new" / "tokenizer.json")  # rewritten in the HF format: same ids
    assert load_tokenizer(tmp_path / "new").encode("hello wörld") == bpe.encode("hello wörld")


def test_new_format_char_file_with_duplicate_ids_is_refused(tmp_path):
    CharTokenizer.build(["abc"]).save(tmp_path / "tokenizer.json")
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["model"]["vocab"]["z"] = data["model"]["vocab"]["a"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="duplicate entries"):
        load_tokenizer(tmp_path / "tokenizer.json")
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["model"]["vocab"]["z"] = 99
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="ids are not 0"):
        load_tokenizer(tmp_path)


def test_model_dirs_keep_their_tokenizer_checks_and_read_in_transformers(tmp_path):
    from bridgeocr.models.ocr import OCRModel

    model = tiny_ocr_model()
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "tokenizer_config.json").is_file()
    loaded = OCRModel.from_pretrained(tmp_path / "m")
    assert isinstance(loaded.tokenizer, CharTokenizer) and loaded.tokenizer.itos == model.tokenizer.itos
    assert _hf_tokenizer(tmp_path / "m").encode("abc xyz") == model.tokenizer.encode("abc xyz")
    CharTokenizer.build(["abd xyz"]).save(tmp_path / "m" / "tokenizer.json")  # 11 tokens, the model 12
    with pytest.raises(BridgeOCRError, match="11 tokens"):
        OCRModel.from_pretrained(tmp_path / "m")


def _check_complete_hf_lm(d: Path, tok, gpt=None):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True).eval()
    ht = _hf_tokenizer(d)
    prompt = [tok.bos_id] + tok.encode("ab c")
    assert ht.encode("ab c") == prompt[1:]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, min_new_tokens=3,
                          do_sample=False, pad_token_id=ht.pad_token_id)
        if gpt is not None:
            torch.testing.assert_close(hf(ids).logits, gpt(ids)[0], atol=1e-5, rtol=0)
    assert out.shape == (1, len(prompt) + 3) and out[0, : len(prompt)].tolist() == prompt
    assert isinstance(ht.decode(out[0, len(prompt):], skip_special_tokens=True), str)
    assert (hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id) == \
        (tok.bos_id, tok.eos_id, tok.pad_id)


def test_gpt_save_hf_with_tokenizer_is_a_complete_hf_model(tmp_path):
    from bridgeocr.config import DecoderConfig
    from bridgeocr.models.decoder import GPT

    tok = CharTokenizer.build(["abc de"])
    torch.manual_seed(0)
    gpt = GPT(DecoderConfig(n_layer=1, n_embd=32, n_head=2, n_positions=32), tok.vocab_size).eval()
    gpt.save_hf(tmp_path / "lm", tokenizer=tok)
    assert {p.name for p in (tmp_path / "lm").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                              "tokenizer_config.json", "special_tokens_map.json"}
    _check_complete_hf_lm(tmp_path / "lm", tok, gpt)
    with pytest.raises(BridgeOCRError, match="tokenizer has"):
        GPT(DecoderConfig(n_layer=1, n_embd=32, n_head=2, n_positions=32), 5).save_hf(tmp_path / "x", tokenizer=tok)


def test_lm_train_saves_a_complete_hf_model(tmp_path):
    from bridgeocr.train.lm import train_lm

    out = tmp_path / "lm"
    train_lm(docs=["ab c ab c abc. " * 30], val_docs=None, out=out, n_layer=1, n_embd=32, n_head=2, context=16,
             steps=2, batch_size=2, progress=False)
    tok = load_tokenizer(out / "tokenizer.json")
    _check_complete_hf_lm(out, tok)
    _check_complete_hf_lm(out / "last", tok)


# ------------------------------------------------------------------------------------------ evaluate


@pytest.fixture
def ckpt(tmp_path):
    d = tmp_path / "ckpt"
    tiny_ocr_model().save_pretrained(d)
    return d


def _labels(root: Path, make_line_png, texts=("ab", "cd x", "zy")) -> Path:
    rows = []
    for i, t in enumerate(texts):
        make_line_png(root / f"{i}.png", width=40, height=16, text=t)
        rows.append(f"{i}.png\t{t}")
    (root / "labels.tsv").write_text("\n".join(rows) + "\n")
    return root / "labels.tsv"


def test_evaluate_reads_all_of_a_source_without_splits_and_says_so(ckpt, tmp_path, make_line_png, capsys):
    data = _labels(tmp_path / "plain", make_line_png)
    out = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{data} has no splits: reading all 3 lines" in text
    assert "[all] CER at epoch 0: " in text and "[all] WER at epoch 0: " in text and "[test]" not in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "all" and m["n"] == 3 and "all_cer" in m and "all_wer" in m and "test_cer" not in m
    assert m["all_cer"] == m["cer"]
    # the directory holding it reads the same way
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data.parent)]) == 0
    assert "has no splits: reading all 3 lines" in capsys.readouterr().out


def test_evaluate_on_a_source_with_splits_still_defaults_to_test(ckpt, tmp_path, capsys):
    manifest = make_box_dataset(tmp_path / "box", n=8)  # lines 3 and 7 are test
    out = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(manifest), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "has no splits" not in text and "[test] CER at epoch 0: " in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "test" and m["n"] == 2 and "test_cer" in m and "all_cer" not in m
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(manifest), "--split", "all",
                 "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "all" and m["n"] == 8 and "all_cer" in m
    assert "has no splits" not in capsys.readouterr().out  # asked for: not announced


def test_unicode_normalisation_before_cer_and_wer():
    from bridgeocr.eval.metrics import cer, line_cers, normalize_text, wer

    nfc, nfd = "café déjà", unicodedata.normalize("NFD", "café déjà")
    assert nfc != nfd
    assert cer([nfc], [nfd]) == 0.0 and wer([nfc], [nfd]) == 0.0  # NFC by default
    assert cer([nfc], [nfd], normalize="none") > 0 and wer([nfc], [nfd], normalize="none") == 1.0
    assert line_cers([nfc, "ab"], [nfd, "ab"]) == [0.0, 0.0] and line_cers([nfc], [nfd], normalize="none")[0] > 0
    assert cer(["ﬁne"], ["fine"]) > 0 and cer(["ﬁne"], ["fine"], normalize="nfkc") == 0.0
    assert normalize_text("Ａ", "nfkc") == "A" and normalize_text("Ａ", "none") == "Ａ"
    with pytest.raises(ValueError, match="normalize"):
        cer(["a"], ["a"], normalize="nfd?")


def test_evaluate_normalisation_is_recorded_and_applied(ckpt, tmp_path, make_line_png, monkeypatch):
    from bridgeocr.eval import evaluate as ev
    from bridgeocr.eval.metrics import cer

    nfd = unicodedata.normalize("NFD", "é")
    # the model reads "é" precomposed whatever the image: a reference written decomposed scores 0 only in NFC
    monkeypatch.setattr(ev, "decode_loader", lambda model, loader, **kw: (
        ["0"], [nfd], ["é"], [0.0]))
    data = _labels(tmp_path / "plain", make_line_png, texts=("ab",))
    results = {}
    for form in ("nfc", "nfkc", "none", None):
        out = tmp_path / f"ev_{form}"
        argv = ["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out)]
        assert main(argv + (["--normalize", form] if form else [])) == 0
        results[form] = json.loads((out / "metrics.json").read_text())
    assert results[None]["normalize"] == "nfc" and results["none"]["normalize"] == "none"
    assert results["nfc"]["cer"] == results["nfkc"]["cer"] == 0.0 == results[None]["cer"]
    assert results["none"]["cer"] == cer([nfd], ["é"], normalize="none") > 0
    rows = ev.read_predictions(tmp_path / "ev_nfc" / "predictions.tsv")
    assert rows[0]["reference"] == nfd and rows[0]["cer"] == 0.0  # the text as read, the score normalised
    with pytest.raises(SystemExit):
        main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--normalize", "nfd"])


NASTY = ['say "hi"', '""', '"', "\tleading tab", "trailing tab\t", "  spaces  ", "back\\slash", "\\",
         "a\\tb (a backslash and a t)", "\\n", "new\nline", "cr\rlf\r\n", "", " ", "uni\u2028sep\x0bvt\x1cfs",
         "e\u0301", "tab\t\t\ttabs", "'single'", "end\\"]


def test_predictions_file_round_trips_any_text(tmp_path):
    from bridgeocr.eval.evaluate import read_predictions, write_predictions

    n = len(NASTY)
    hyps = list(reversed(NASTY))
    result = {"ids": [f"id\t{i}\\" for i in range(n)], "refs": NASTY, "hyps": hyps,
              "line_cer": [i / n for i in range(n)], "confidences": [-0.5] * n}
    path = write_predictions(tmp_path / "p.tsv", result)
    raw = path.read_bytes().decode("utf-8")
    lines = raw.split("\n")
    assert lines[0] == "id\treference\thypothesis\tcer\tconfidence" and lines[-1] == ""
    assert len(lines) == n + 2 and all(len(line.split("\t")) == 5 for line in lines[:-1])
    assert '\tsay "hi"\t' in raw and '""""' not in raw  # no csv quoting: a quote is a quote
    rows = read_predictions(path)
    assert [r["cer"] for r in rows] == sorted((r["cer"] for r in rows), reverse=True)  # worst first
    got = {r["id"]: (r["reference"], r["hypothesis"], r["confidence"]) for r in rows}
    assert got == {i: (r, h, -0.5) for i, r, h in zip(result["ids"], NASTY, hyps)}
    (tmp_path / "bad.tsv").write_text("id\tref\n")
    with pytest.raises(BridgeOCRError, match="not a predictions file"):
        read_predictions(tmp_path / "bad.tsv")


def test_predictions_written_by_evaluate_read_back(ckpt, tmp_path, make_line_png):
    from bridgeocr.eval.evaluate import read_predictions

    texts = ('a "b"', " ab ", "x\\y")
    data = _labels(tmp_path / "plain", make_line_png, texts=texts)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp_path / "ev")]) == 0
    rows = read_predictions(tmp_path / "ev" / "predictions.tsv")
    assert sorted(r["reference"] for r in rows) == sorted(texts)


# ------------------------------------------------------------------------------------------ TensorBoard



def _tb_events(tb: Path):
    """(hparams of the session start infos, {scalar tag: [values]}) from a tb directory's event files."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    starts, scalars = [], {}
    for f in sorted(tb.rglob("events.out.tfevents*")):
        for event in LegacyEventFileLoader(str(f)).Load():
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    if data.HasField("session_start_info"):
                        starts.append({k: getattr(h, h.WhichOneof("kind"))
                                       for k, h in data.session_start_info.hparams.items()})
                elif v.HasField("simple_value"):
                    scalars.setdefault(v.tag, []).append(v.simple_value)
    return starts, scalars


def test_training_logs_its_config_as_tensorboard_hparams_with_the_final_metrics(tmp_path, capsys):
    import yaml

    src = make_box_dataset(tmp_path / "data", n=12)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML.format(src=src, out=tmp_path / "runs"))
    assert main(["train", "--config", str(cfg), "optim.lr_decoder=0.00123", "optim.max_steps=2"]) == 0
    capsys.readouterr()
    run = tmp_path / "runs" / "tiny"
    metrics = json.loads((run / "metrics.json").read_text())
    saved = yaml.safe_load((run / "tb" / "hparams.yaml").read_text())
    assert saved["optim.lr_decoder"] == pytest.approx(0.00123) and saved["optim.max_steps"] == 2
    assert saved["model.connector.kind"] == "linear" and saved["train.name"] == "tiny"
    assert all(not isinstance(v, (dict, list)) for v in saved.values())  # flat, scalars only
    starts, scalars = _tb_events(run / "tb")
    assert starts, "no hparams in the TensorBoard events"
    assert starts[-1]["optim.lr_decoder"] == pytest.approx(0.00123) and starts[-1]["model.connector.kind"] == "linear"
    assert scalars["hp/val_cer"][-1] == pytest.approx(metrics["val_cer"])
    assert scalars["hp/test_cer"][-1] == pytest.approx(metrics["test_cer"])
