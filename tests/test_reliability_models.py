"""Models that do not match are refused (issue 16, point 6): a model directory broken one way per test gives one
BridgeOCRError naming the file and what does not match; `recognize` / `evaluate` on it print one `error:` line
and exit non-zero, without a traceback. An intact directory (and a legitimately padded one) still loads and
reads the same."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bridgeocr.cli import main
from bridgeocr.data.sample import Batch
from bridgeocr.data.tokenizers import CharTokenizer, load_tokenizer
from bridgeocr.errors import BridgeOCRError
from bridgeocr.eval.evaluate import load_checkpoint
from bridgeocr.models.ctc import CTCHead
from bridgeocr.models.decoder import GPT
from bridgeocr.models.encoder import LineEncoder, load_encoder
from bridgeocr.models.ocr import OCRModel
from conftest import line_image, make_box_dataset, tiny_ocr_model

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"


@pytest.fixture()
def model_dir(tmp_path):
    d = tmp_path / "best"
    tiny_ocr_model(ctc=True).save_pretrained(d)
    return d


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 1, 16, 40, generator=g)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 24:] = False
    ids = torch.tensor([[1, 4, 5, 6], [1, 7, 8, 2]])
    return Batch(images * mask[:, None, None, :], mask, ids, torch.ones_like(ids, dtype=torch.bool))


def rewrite_tensors(d, change):
    tensors = load_file(str(d / WEIGHTS))
    change(tensors)
    save_file(tensors, str(d / WEIGHTS), metadata={"format": "pt"})


def edit_config(d, change):
    meta = json.loads((d / CONFIG).read_text())
    change(meta)
    (d / CONFIG).write_text(json.dumps(meta, indent=2))


def refused(d, *fragments, loader=OCRModel.from_pretrained) -> str:
    """Loading `d` raises one BridgeOCRError whose one-line message holds every fragment."""
    with pytest.raises(BridgeOCRError) as info:
        loader(d)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for frag in fragments:
        assert str(frag) in msg, msg
    return msg


# -------------------------------------------------------------------------------------- intact dirs


def test_intact_dir_loads_and_reads_the_same(model_dir):
    model = tiny_ocr_model(ctc=True).eval()  # same seed: the same weights as the saved one
    meta = json.loads((model_dir / CONFIG).read_text())
    assert meta["tokenizer_vocab_size"] == model.tokenizer.vocab_size == 12
    assert meta["ctc_vocab_size"] == 12
    loaded = OCRModel.from_pretrained(model_dir).eval()
    b = batch()
    a, c = model(b), loaded(b)
    torch.testing.assert_close(c.logits, a.logits, atol=0, rtol=0)
    torch.testing.assert_close(c.ctc_logits, a.ctc_logits, atol=0, rtol=0)
    read_a = [h.text for h in model.read(b.images, b.image_mask, decoding="gpt")]
    read_c = [h.text for h in loaded.read(b.images, b.image_mask, decoding="gpt")]
    assert read_c == read_a
    ckpt, image_cfg, _ = load_checkpoint(model_dir, device="cpu")
    assert image_cfg.height == 16
    torch.testing.assert_close(ckpt(b).logits, a.logits, atol=0, rtol=0)


def test_float16_weights_load_into_float32(model_dir):
    model = tiny_ocr_model(ctc=True).eval()
    rewrite_tensors(model_dir, lambda t: t.update({k: v.half() for k, v in t.items() if v.is_floating_point()}))
    assert load_file(str(model_dir / WEIGHTS))["decoder.ln_f.weight"].dtype == torch.float16
    loaded = OCRModel.from_pretrained(model_dir).eval()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    torch.testing.assert_close(loaded(batch()).logits, model(batch()).logits, atol=2e-2, rtol=0)


def test_a_padded_vocabulary_larger_than_the_tokenizer_loads(tmp_path):
    """The decoder's table may be larger than the tokenizer (padding): recorded, it loads and reads the same."""
    small = tiny_ocr_model(ctc=False)
    torch.manual_seed(0)
    model = OCRModel(small.cfg, 16, image_height=16, tokenizer=small.tokenizer).eval()
    assert model.vocab_size == 16 and model.tokenizer.vocab_size == 12
    model.save_pretrained(tmp_path / "padded")
    loaded = OCRModel.from_pretrained(tmp_path / "padded").eval()
    assert loaded.vocab_size == 16 and loaded.tokenizer.vocab_size == 12
    torch.testing.assert_close(loaded(batch()).logits, model(batch()).logits, atol=0, rtol=0)


def test_a_tokenizer_passed_in_stands_for_a_missing_tokenizer_json(model_dir):
    tok = load_tokenizer(model_dir / TOKENIZER)
    (model_dir / TOKENIZER).unlink()
    loaded = OCRModel.from_pretrained(model_dir, tokenizer=tok)
    assert loaded.tokenizer is tok


def test_every_shipped_model_still_loads():
    """The packaged models (float16 weights, tokenizers as large as their vocabularies) pass every check."""
    from bridgeocr.shipped import resolve_pretrained, shipped_names

    names = shipped_names()
    assert {"ocr_default", "encoder_ctc", "gpt_lm"} <= set(names)
    for name in names:
        d = resolve_pretrained(f"shipped:{name}")
        if json.loads((d / CONFIG).read_text()).get("format") in ("bridgeocr-ocr", "bridgeocr-encoder"):
            model, _, _ = load_checkpoint(d, device="cpu")
            assert model.tokenizer.vocab_size == load_tokenizer(d / TOKENIZER).vocab_size
        else:
            assert GPT.from_hf(d).vocab_size >= load_tokenizer(d / TOKENIZER).vocab_size


# ---------------------------------------------------------------------------------- model.safetensors


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_weights_are_refused(model_dir, keep):
    data = (model_dir / WEIGHTS).read_bytes()
    (model_dir / WEIGHTS).write_bytes(data[: int(len(data) * keep)])
    refused(model_dir, f"{model_dir / WEIGHTS}: not a safetensors file (truncated or corrupt)")


@pytest.mark.parametrize("garbage", [b"", b"not a model at all\n" * 50, bytes(range(256)) * 8,
                                     (10**6).to_bytes(8, "little") + b"{}"])
def test_garbage_weights_are_refused(model_dir, garbage):
    (model_dir / WEIGHTS).write_bytes(garbage)
    refused(model_dir, f"{model_dir / WEIGHTS}: not a safetensors file (truncated or corrupt)")


def test_missing_weights_file_is_refused(model_dir):
    (model_dir / WEIGHTS).unlink()
    refused(model_dir, f"{model_dir / WEIGHTS}: missing")


def test_a_missing_tensor_is_refused(model_dir):
    rewrite_tensors(model_dir, lambda t: t.pop("decoder.ln_f.weight"))
    msg = refused(model_dir, f"{model_dir / WEIGHTS}: missing tensors decoder.ln_f.weight")
    assert "unexpected" not in msg


def test_the_stored_half_of_a_tied_pair_missing_is_refused(model_dir):
    """lm_head and wte are one tensor stored once: without it both are missing."""
    stored = set(load_file(str(model_dir / WEIGHTS)))
    tied = {"decoder.lm_head.weight", "decoder.wte.weight"}
    assert len(stored & tied) == 1
    rewrite_tensors(model_dir, lambda t: [t.pop(k) for k in tied & set(t)])
    refused(model_dir, "missing tensors decoder.lm_head.weight, decoder.wte.weight")


def test_many_missing_tensors_are_counted(model_dir):
    rewrite_tensors(model_dir, lambda t: [t.pop(k) for k in list(t) if k.startswith("decoder.h.0.")])
    refused(model_dir, "missing tensors decoder.h.0.", "more)")


def test_an_extra_tensor_is_refused(model_dir):
    rewrite_tensors(model_dir, lambda t: t.update({"decoder.extra.weight": torch.zeros(3)}))
    msg = refused(model_dir, f"{model_dir / WEIGHTS}: unexpected tensors decoder.extra.weight")
    assert "missing" not in msg


def test_missing_and_extra_are_reported_together(model_dir):
    rewrite_tensors(model_dir, lambda t: t.update({"connector.renamed": t.pop("decoder.ln_f.bias")}))
    refused(model_dir, "missing tensors decoder.ln_f.bias", "unexpected tensors connector.renamed")


def test_a_wrong_shape_tensor_is_refused(model_dir):
    rewrite_tensors(model_dir, lambda t: t.update({"decoder.ln_f.weight": torch.ones(33)}))
    refused(model_dir, f"{model_dir / WEIGHTS}: wrong shape: decoder.ln_f.weight is [33] in the file, "
                       "[32] in the model")


def test_an_integer_tensor_for_a_float_one_is_refused(model_dir):
    rewrite_tensors(model_dir, lambda t: t.update({"decoder.ln_f.weight": torch.ones(32, dtype=torch.int64)}))
    refused(model_dir, f"{model_dir / WEIGHTS}:", "float / integer", "decoder.ln_f.weight")


# -------------------------------------------------------------------------------------- config.json


def test_invalid_json_config_is_refused_with_its_line(model_dir):
    text = (model_dir / CONFIG).read_text()
    (model_dir / CONFIG).write_text(text.replace('"vocab_size": 12,', '"vocab_size": 12,,', 1))
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if '"vocab_size": 12,' in ln)
    refused(model_dir, f"{model_dir / CONFIG}:{line}: not valid JSON")


def test_empty_config_is_refused(model_dir):
    (model_dir / CONFIG).write_text("")
    refused(model_dir, f"{model_dir / CONFIG}:1: not valid JSON")


@pytest.mark.parametrize("key", ["vocab_size", "image_height", "model", "encoder"])
def test_a_missing_config_key_is_refused(model_dir, key):
    edit_config(model_dir, lambda m: m.pop(key))
    refused(model_dir, f"{model_dir / CONFIG}: missing key '{key}'")


@pytest.mark.parametrize("key,value", [("vocab_size", "12"), ("vocab_size", 0), ("image_height", None),
                                       ("model", [1])])
def test_a_wrong_config_value_is_refused(model_dir, key, value):
    edit_config(model_dir, lambda m: m.update({key: value}))
    refused(model_dir, f"{model_dir / CONFIG}: key '{key}'")


def test_a_wrong_vocab_size_in_config_is_refused(model_dir):
    """config.json says 20, the weights hold 12 rows: the tokenizer (12) and the tensors both disagree."""
    edit_config(model_dir, lambda m: m.update(vocab_size=20, tokenizer_vocab_size=20))
    refused(model_dir, f"{model_dir / TOKENIZER}: 12 tokens, but the model's vocabulary is 20")
    (model_dir / TOKENIZER).unlink()
    refused(model_dir, f"{model_dir / WEIGHTS}: wrong shape: decoder.lm_head.weight is [12, 32] in the file, "
                       "[20, 32] in the model")


def test_an_unknown_model_key_is_refused(model_dir):
    edit_config(model_dir, lambda m: m["model"].update(no_such_key=1))
    refused(model_dir, f"{model_dir / CONFIG}: key 'model':", "no_such_key")


def test_a_wrong_model_value_is_refused(model_dir):
    edit_config(model_dir, lambda m: m["model"]["decoder"].update(n_head=5))  # 32 is not a multiple of 5
    refused(model_dir, f"{model_dir / CONFIG}:")


def test_a_wrong_encoder_description_is_refused(model_dir):
    edit_config(model_dir, lambda m: m["encoder"].pop("image_height"))
    refused(model_dir, f"{model_dir / CONFIG}: cannot build the model it describes")


def test_a_broken_training_json_is_refused(model_dir):
    (model_dir / "training.json").write_text('{"epoch": 3, "image": {"height": 16')
    refused(model_dir, f"{model_dir / 'training.json'}:1: not valid JSON", loader=load_checkpoint)


# ------------------------------------------------------------------------------------------ tokenizer


def test_a_missing_tokenizer_is_refused_for_reading(model_dir):
    (model_dir / TOKENIZER).unlink()
    refused(model_dir, f"{model_dir}: no tokenizer.json", loader=load_checkpoint)


def test_a_smaller_tokenizer_is_refused(model_dir):
    """The bug this fixes: a tokenizer without 'c' read "ab cab" as "ab ab"."""
    CharTokenizer.build(["abd xyz"]).save(model_dir / TOKENIZER)
    refused(model_dir, f"{model_dir / TOKENIZER}: 11 tokens, but the model's vocabulary is 12")
    refused(model_dir, f"{model_dir / TOKENIZER}: 11 tokens", loader=load_checkpoint)


def test_a_larger_tokenizer_is_refused(model_dir):
    CharTokenizer.build(["abcd xyz!?"]).save(model_dir / TOKENIZER)
    refused(model_dir, f"{model_dir / TOKENIZER}: 14 tokens, but the model's vocabulary is 12")


def test_a_larger_tokenizer_passed_in_is_refused(model_dir):
    refused(model_dir, "the tokenizer passed in: 14 tokens, but the model's vocabulary is 12",
            loader=lambda d: OCRModel.from_pretrained(d, tokenizer=CharTokenizer.build(["abcd xyz!?"])))


def test_a_tokenizer_of_another_size_than_recorded_is_refused(tmp_path):
    """A padded model (vocabulary 16) trained with a 12-token tokenizer: an 11-token one is refused."""
    small = tiny_ocr_model(ctc=False)
    OCRModel(small.cfg, 16, image_height=16, tokenizer=small.tokenizer).save_pretrained(tmp_path / "m")
    CharTokenizer.build(["abd xyz"]).save(tmp_path / "m" / TOKENIZER)
    refused(tmp_path / "m", f"{tmp_path / 'm' / TOKENIZER}: 11 tokens, but the model was trained with a "
                            "tokenizer of 12 (config.json: tokenizer_vocab_size)")


def test_old_dirs_without_the_recorded_size(model_dir):
    """Saved before config.json recorded the tokenizer's size: a model not built on a pretrained LM must match
    its vocabulary exactly; on a pretrained LM a smaller tokenizer is padding, unless the CTC head says no."""
    edit_config(model_dir, lambda m: [m.pop("tokenizer_vocab_size"), m.pop("ctc_vocab_size")])
    assert OCRModel.from_pretrained(model_dir).tokenizer.vocab_size == 12  # the right one still loads
    CharTokenizer.build(["abd xyz"]).save(model_dir / TOKENIZER)
    refused(model_dir, f"{model_dir / TOKENIZER}: 11 tokens, but the model's vocabulary is 12")
    edit_config(model_dir, lambda m: m["model"]["decoder"].update(pretrained="shipped:gpt_lm"))
    refused(model_dir, f"{model_dir / TOKENIZER}: 11 tokens, but the model's CTC head has 12 classes")
    edit_config(model_dir, lambda m: m["model"].update(ctc_head=False))
    rewrite_tensors(model_dir, lambda t: [t.pop(k) for k in list(t) if k.startswith("ctc_head.")])
    assert OCRModel.from_pretrained(model_dir).tokenizer.vocab_size == 11  # padded pretrained LM: accepted


def test_invalid_json_tokenizer_is_refused_with_its_line(model_dir):
    (model_dir / TOKENIZER).write_text('{"format": "bridgeocr-tokenizer",\n "kind": "char",\n "vocab": [}')
    refused(model_dir, f"{model_dir / TOKENIZER}:3: not valid JSON")


def test_a_tokenizer_with_duplicates_is_refused(model_dir):
    data = json.loads((model_dir / TOKENIZER).read_text())  # the Hugging Face format: token -> id
    data["model"]["vocab"]["zz"] = 5  # a second token for id 5
    (model_dir / TOKENIZER).write_text(json.dumps(data))
    refused(model_dir, f"{model_dir / TOKENIZER}: char tokenizer: duplicate entries")


def test_a_bpe_tokenizer_with_a_broken_body_is_refused(model_dir):
    (model_dir / TOKENIZER).write_text(json.dumps({"format": "bridgeocr-tokenizer", "kind": "bpe",
                                                   "tokenizer": {"model": {"type": "nonsense"}}}))
    refused(model_dir, f"{model_dir / TOKENIZER}: bpe tokenizer: not a valid 'tokenizer'")


# ---------------------------------------------------------------------------- encoder and LM dirs


@pytest.fixture()
def encoder_dir(tmp_path):
    torch.manual_seed(0)
    tok = CharTokenizer.build(["abcd xyz"])
    enc = LineEncoder(tiny_ocr_model().cfg.encoder, 16)
    d = tmp_path / "enc"
    enc.save_pretrained(d, ctc_head=CTCHead(enc.d_out, tok.vocab_size))
    tok.save(d / TOKENIZER)
    return d


def test_intact_encoder_dir_loads(encoder_dir):
    encoder, head = load_encoder(encoder_dir)
    assert head.vocab_size == 12
    reader, image_cfg, _ = load_checkpoint(encoder_dir, device="cpu")
    assert image_cfg.height == 16 and reader.ctc_head.vocab_size == 12


def test_encoder_dir_truncated_weights_are_refused(encoder_dir):
    data = (encoder_dir / WEIGHTS).read_bytes()
    (encoder_dir / WEIGHTS).write_bytes(data[:-10])
    refused(encoder_dir, f"{encoder_dir / WEIGHTS}: not a safetensors file (truncated or corrupt)",
            loader=load_encoder)


def test_encoder_dir_missing_and_extra_tensors_are_refused(encoder_dir):
    rewrite_tensors(encoder_dir, lambda t: t.update({"ctc_head.extra": t.pop("ctc_head.proj.bias")}))
    refused(encoder_dir, f"{encoder_dir / WEIGHTS}: missing tensors ctc_head.proj.bias",
            "unexpected tensors ctc_head.extra", loader=load_encoder)


def test_encoder_dir_invalid_config_is_refused(encoder_dir):
    (encoder_dir / CONFIG).write_text("{\n  \"format\": \"bridgeocr-encoder\"\n  \"kind\": 1}")
    refused(encoder_dir, f"{encoder_dir / CONFIG}:3: not valid JSON", loader=load_encoder)
    refused(encoder_dir, f"{encoder_dir / CONFIG}:3: not valid JSON", loader=load_checkpoint)


def test_encoder_dir_tokenizer_of_another_size_is_refused(encoder_dir):
    CharTokenizer.build(["abd xyz"]).save(encoder_dir / TOKENIZER)
    refused(encoder_dir, f"{encoder_dir / TOKENIZER}: 11 tokens, but the encoder's CTC head has 12 classes",
            loader=load_checkpoint)


@pytest.fixture()
def lm_dir(tmp_path):
    torch.manual_seed(0)
    d = tmp_path / "lm"
    GPT(tiny_ocr_model().cfg.decoder, 12).save_hf(d)
    return d


def test_intact_lm_dir_loads(lm_dir):
    assert GPT.from_hf(lm_dir).vocab_size == 12


def test_lm_dir_truncated_weights_are_refused(lm_dir):
    data = (lm_dir / WEIGHTS).read_bytes()
    (lm_dir / WEIGHTS).write_bytes(data[: len(data) // 2])
    refused(lm_dir, f"{lm_dir / WEIGHTS}: not a safetensors file (truncated or corrupt)", loader=GPT.from_hf)


def test_lm_dir_missing_tensor_is_refused(lm_dir):
    """transformers would fill it with random numbers and only warn."""
    rewrite_tensors(lm_dir, lambda t: t.pop("transformer.h.0.mlp.c_fc.weight"))
    refused(lm_dir, f"{lm_dir / WEIGHTS}: missing tensors", "h.0.mlp.c_fc.weight", loader=GPT.from_hf)


def test_lm_dir_invalid_config_is_refused(lm_dir):
    (lm_dir / CONFIG).write_text("{oops")
    refused(lm_dir, f"{lm_dir / CONFIG}:1: not valid JSON", loader=GPT.from_hf)


# --------------------------------------------------------------------------------- the command line


def _break_truncate(d):
    (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:100])
    return WEIGHTS


def _break_garbage(d):
    (d / WEIGHTS).write_bytes(b"garbage" * 100)
    return WEIGHTS


def _break_drop(d):
    rewrite_tensors(d, lambda t: t.pop("connector.proj.weight" if "connector.proj.weight" in t
                                       else sorted(k for k in t if k.startswith("connector."))[0]))
    return WEIGHTS


def _break_extra(d):
    rewrite_tensors(d, lambda t: t.update({"extra.tensor": torch.zeros(2)}))
    return WEIGHTS


def _break_shape(d):
    rewrite_tensors(d, lambda t: t.update({"decoder.wpe.weight": torch.zeros(65, 32)}))
    return WEIGHTS


def _break_json(d):
    (d / CONFIG).write_text((d / CONFIG).read_text()[:-20])
    return CONFIG


def _break_key(d):
    edit_config(d, lambda m: m.pop("vocab_size"))
    return CONFIG


def _break_no_tokenizer(d):
    (d / TOKENIZER).unlink()
    return d.name


def _break_tokenizer_size(d):
    CharTokenizer.build(["abd xyz"]).save(d / TOKENIZER)
    return TOKENIZER


BREAKS = [_break_truncate, _break_garbage, _break_drop, _break_extra, _break_shape, _break_json, _break_key,
          _break_no_tokenizer, _break_tokenizer_size]


def one_error_line(capsys, names: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert names in lines[0], err
    return lines[0]


@pytest.mark.parametrize("breaks", BREAKS, ids=lambda f: f.__name__[7:])
def test_recognize_on_a_broken_dir_prints_one_error(model_dir, tmp_path, capsys, breaks):
    img = tmp_path / "line.png"
    line_image(60, 16).save(img)
    assert main(["recognize", "--checkpoint", str(model_dir), str(img)]) == 0  # intact: reads
    capsys.readouterr()
    name = breaks(model_dir)
    assert main(["recognize", "--checkpoint", str(model_dir), str(img)]) != 0
    one_error_line(capsys, name)


@pytest.mark.parametrize("breaks", BREAKS, ids=lambda f: f.__name__[7:])
def test_evaluate_on_a_broken_dir_prints_one_error(model_dir, tmp_path, capsys, breaks):
    data = make_box_dataset(tmp_path / "data", n=4)
    args = ["evaluate", "--checkpoint", str(model_dir), "--data", str(data), "--split", "all"]
    assert main(args) == 0  # intact: scores
    capsys.readouterr()
    name = breaks(model_dir)
    assert main(args) != 0
    one_error_line(capsys, name)
