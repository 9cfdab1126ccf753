import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridgeocr.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from bridgeocr.errors import DataError

TEXTS = ["A MOVE to stop Mr. Gaitskell from", "nominating any more Labour life Peers",
         "is to be made at a meeting of Labour M Ps tomorrow.", "\"Quoted\" & 'single' — café 123"]


@pytest.fixture(scope="module")
def char_tok():
    return CharTokenizer.build(TEXTS)


@pytest.fixture(scope="module")
def bpe_tok():
    return BPETokenizer.train(TEXTS * 5, vocab_size=300)


def test_char_specials_and_vocab(char_tok):
    assert (char_tok.pad_id, char_tok.bos_id, char_tok.eos_id, char_tok.unk_id) == (0, 1, 2, 3)
    assert char_tok.vocab_size == 4 + len(set("".join(TEXTS)))


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=sorted(set("".join(TEXTS))), max_size=40))
def test_char_roundtrip(char_tok, s):
    ids = char_tok.encode(s)
    assert len(ids) == len(s) and all(i >= 4 for i in ids)
    assert char_tok.decode(ids) == s


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_bpe_roundtrip_any_string(bpe_tok, s):
    ids = bpe_tok.encode(s)
    assert not set(ids) & bpe_tok.special_ids
    assert bpe_tok.decode(ids) == s


def test_char_unk_counted_and_decode_drops_specials(char_tok):
    tok = CharTokenizer.build(["abc"])
    ids = tok.encode("abzzc")
    assert ids.count(tok.unk_id) == 2 and tok.unk_count == 2
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == "abc"
    assert CharTokenizer.build(["aab"], min_count=2).vocab_size == 5


def test_save_load_char(tmp_path, char_tok):
    char_tok.save(tmp_path / "t.json")
    tok = load_tokenizer(tmp_path / "t.json")
    assert isinstance(tok, CharTokenizer) and tok.itos == char_tok.itos
    char_tok.save(tmp_path / "d" / "tokenizer.json")
    assert load_tokenizer(tmp_path / "d").encode(TEXTS[0]) == char_tok.encode(TEXTS[0])


def test_save_load_bpe_and_hf_dirs(tmp_path, bpe_tok):
    bpe_tok.save(tmp_path / "b.json")
    tok = load_tokenizer(tmp_path / "b.json")
    assert tok.encode(TEXTS[2]) == bpe_tok.encode(TEXTS[2]) and tok.vocab_size == bpe_tok.vocab_size
    # a plain HF tokenizer.json directory
    hf = tmp_path / "hf"
    hf.mkdir()
    bpe_tok.tk.save(str(hf / "tokenizer.json"))
    assert load_tokenizer(hf).encode(TEXTS[1]) == bpe_tok.encode(TEXTS[1])
    # GPT-2 style vocab.json + merges.txt
    g = tmp_path / "gpt2"
    g.mkdir()
    bpe_tok.tk.model.save(str(g))
    tok = load_tokenizer(g)
    assert tok.decode(tok.encode("Hello wörld")) == "Hello wörld"


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{bad")
    with pytest.raises(DataError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "k.json").write_text(json.dumps({"format": "bridgeocr-tokenizer", "kind": "xyz"}))
    with pytest.raises(DataError, match="unknown tokenizer kind"):
        load_tokenizer(tmp_path / "k.json")
