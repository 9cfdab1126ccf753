"""KD teacher readings (train/teacher.py): lm (plain LM) vs prefix (the text's embeddings as the prefix)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from bridgeocr.config import DecoderConfig, load_config
from bridgeocr.data.preprocess import text_batch
from bridgeocr.data.tokenizers import CharTokenizer
from bridgeocr.errors import ConfigError
from bridgeocr.models.decoder import GPT
from bridgeocr.train.losses import ce_loss
from bridgeocr.train.run import load_teacher
from bridgeocr.train.teacher import KDTeacher, kd_teacher_spec, teacher_logits, text_prefix

ALPHABET = "abcdefgh"


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer.build([ALPHABET + " "])


def _specials(tok):
    return (tok.pad_id, tok.bos_id, tok.eos_id)


def _gpt(tok, n_layer=2, prefix_positions=True, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(DecoderConfig(n_layer=n_layer, n_embd=32, n_head=2, n_positions=64,
                             prefix_positions=prefix_positions), tok.vocab_size).eval()


def _batch(tok, texts):
    return text_batch([tok.encode(t) for t in texts], tok.bos_id, tok.eos_id, tok.pad_id)


def test_text_prefix_is_the_text_embeddings_without_specials(tok):
    gpt = _gpt(tok)
    ids, am = _batch(tok, ["abc", "h"])
    prefix, pmask = text_prefix(gpt.wte, ids, am, _specials(tok))
    assert pmask.tolist() == [[True, True, True], [True, False, False]]
    assert torch.equal(prefix[0], gpt.wte(torch.tensor(tok.encode("abc"))))
    assert torch.equal(prefix[1, 0], gpt.wte.weight[tok.encode("h")[0]])


def test_prefix_reading_differs_from_lm_and_sees_the_whole_text(tok):
    gpt = _gpt(tok)
    lm, pre = KDTeacher(gpt, "lm", _specials(tok)), KDTeacher(gpt, "prefix", _specials(tok))
    ids, am = _batch(tok, ["abcd", "ef"])
    with torch.no_grad():
        q_lm, q_pre = lm.logits(ids, am), pre.logits(ids, am)
    assert q_lm.shape == q_pre.shape == (2, ids.shape[1], tok.vocab_size)  # the same text positions
    assert not torch.allclose(q_lm, q_pre, atol=1e-4)
    assert torch.equal(q_lm, gpt(ids, am)[0])  # lm = the plain LM, as the teacher was before
    # change only the last letter: a causal LM's earlier positions cannot know, the prefix reading can
    ids2, am2 = _batch(tok, ["abch", "ef"])
    with torch.no_grad():
        q_lm2, q_pre2 = lm.logits(ids2, am2), pre.logits(ids2, am2)
    assert torch.allclose(q_lm[0, :4], q_lm2[0, :4], atol=1e-6)
    assert not torch.allclose(q_pre[0, :4], q_pre2[0, :4], atol=1e-4)
    assert torch.allclose(q_pre[1], q_pre2[1], atol=1e-5)  # the other line's prefix is its own
    # padding the batch does not change a line's reading (prefix and text masks are exact)
    alone = KDTeacher(gpt, "prefix", _specials(tok)).logits(*_batch(tok, ["ef"]))
    assert torch.allclose(q_pre[1, :alone.shape[1]], alone[0], atol=1e-5)
    # teacher_logits also takes a bare GPT (read as a plain LM)
    assert torch.equal(teacher_logits(gpt, ids, am), q_lm)


def test_prefix_attach_layer_is_used_and_checked(tok):
    gpt = _gpt(tok, n_layer=2)
    ids, am = _batch(tok, ["abc"])
    at0 = KDTeacher(gpt, "prefix", _specials(tok), attach_layer=0).logits(ids, am)
    at1 = KDTeacher(gpt, "prefix", _specials(tok), attach_layer=1).logits(ids, am)
    assert not torch.allclose(at0, at1, atol=1e-4)
    with pytest.raises(ConfigError, match="model.attach_layer"):
        KDTeacher(gpt, "prefix", _specials(tok), attach_layer=2)
    with pytest.raises(ConfigError, match="loss.kd_teacher"):
        KDTeacher(gpt, "image", _specials(tok))


def test_prefix_reading_beats_the_lm_on_a_copy_task(tok):
    """Random letters: no reader of the text alone gets below their entropy (log 8 nats per letter); a GPT
    taught a few steps to read the text-embedding prefix (as train/prefix_reading.py does) copies them."""
    gpt = _gpt(tok, n_layer=2).train()
    lm, pre = KDTeacher(gpt, "lm", _specials(tok)), KDTeacher(gpt, "prefix", _specials(tok))
    rng = random.Random(0)

    def lines(n):
        return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(3, 8))) for _ in range(n)]

    opt = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    for _ in range(200):
        ids, am = _batch(tok, lines(16))
        loss = ce_loss(pre.logits(ids, am), ids, am)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gpt.eval()
    ids, am = _batch(tok, lines(64))
    with torch.no_grad():
        ce_lm, ce_pre = float(ce_loss(lm.logits(ids, am), ids, am)), float(ce_loss(pre.logits(ids, am), ids, am))
    assert ce_pre < 1.0 < math.log(len(ALPHABET)) and ce_pre < ce_lm - 0.5, (ce_pre, ce_lm)


# ------------------------------------------------------------------------------------------ config


def _lm_dir(tok, path, n_layer=2):
    _gpt(tok, n_layer=n_layer, prefix_positions=True, seed=1).save_hf(path)
    return path


def test_kd_teacher_spec_readings_dirs_and_junk(tmp_path):
    lm_dir = tmp_path / "lm"
    lm_dir.mkdir()
    assert kd_teacher_spec(None, None, str(lm_dir)) == ("lm", lm_dir)  # the old default
    assert kd_teacher_spec(None, None, None) == ("lm", None)
    assert kd_teacher_spec("lm", None, str(lm_dir)) == ("lm", lm_dir)
    assert kd_teacher_spec("prefix", None, str(lm_dir)) == ("prefix", lm_dir)
    other = tmp_path / "other"
    other.mkdir()
    assert kd_teacher_spec("prefix", str(other), str(lm_dir)) == ("prefix", other)
    assert kd_teacher_spec(str(other), None, str(lm_dir)) == ("lm", other)  # a dir: as before
    assert kd_teacher_spec("shipped:gpt_lm", None, None)[0] == "lm"
    for junk in ("prefx", str(tmp_path / "missing"), "shipped:nope"):
        with pytest.raises(ConfigError, match=r"^loss\.kd_teacher: ") as err:
            kd_teacher_spec(junk, None, str(lm_dir))
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="loss.kd_teacher_dir"):
        kd_teacher_spec("prefix", str(tmp_path / "missing"), None)
    with pytest.raises(ConfigError, match="kd_teacher_dir is set too"):
        kd_teacher_spec(str(other), str(lm_dir), None)


def test_load_teacher_from_config(tok, tmp_path):
    lm_dir = _lm_dir(tok, tmp_path / "lm")
    cfg = load_config(None, ["loss.kd_alpha=0.5", f"model.decoder.pretrained={lm_dir}", "model.attach_layer=1"])
    assert cfg.loss.kd_teacher is None and cfg.loss.kd_teacher_dir is None
    old = load_teacher(cfg, tok)  # default: exactly the old teacher (the decoder's LM as a plain LM)
    assert isinstance(old, KDTeacher) and old.reading == "lm" and not old.training
    assert not any(p.requires_grad for p in old.parameters())
    ids, am = _batch(tok, ["abc", "de"])
    with torch.no_grad():  # at the text positions (past a line's end the memo leaves zeros)
        m = am.bool()
        assert torch.allclose(old.logits(ids, am)[m], GPT.from_hf(lm_dir)(ids, am)[0][m], atol=1e-6)

    cfg = load_config(None, ["loss.kd_alpha=0.5", "loss.kd_teacher=prefix", f"loss.kd_teacher_dir={lm_dir}",
                             "model.attach_layer=1"])
    pre = load_teacher(cfg, tok)
    assert pre.reading == "prefix" and pre.attach_layer == 1
    assert pre.special_ids == (tok.pad_id, tok.bos_id, tok.eos_id)
    assert pre.lm.cfg.prefix_positions  # as the LM learnt to read a prefix
    assert pre.to("cpu") is pre and pre.eval() is pre

    cfg = load_config(None, ["loss.kd_alpha=0.5", f"loss.kd_teacher={lm_dir}"])
    assert load_teacher(cfg, tok).reading == "lm"
    cfg = load_config(None, ["loss.kd_alpha=0.5", "loss.kd_teacher=junk"])
    with pytest.raises(ConfigError, match=r"^loss\.kd_teacher: expected lm \| prefix or an LM directory"):
        load_teacher(cfg, tok)
    cfg = load_config(None, ["loss.kd_alpha=0.5", "loss.kd_teacher=prefix"])
    with pytest.raises(ConfigError, match="needs a teacher LM"):
        load_teacher(cfg, tok)
    cfg = load_config(None, ["loss.kd_teacher=junk"])  # KD off: no teacher, nothing to check
    assert load_teacher(cfg, tok) is None


def test_kd_with_the_prefix_teacher_trains_the_connector(tok, tmp_path):
    from bridgeocr.models.ocr import OCRModel
    from bridgeocr.train.module import OCRLightningModule, param_group_name
    from test_train_module import tiny_batch, tiny_cfg

    cfg = tiny_cfg(warmup_steps=0)
    cfg.model.decoder.n_layer = 2
    cfg.model.attach_layer = 1
    cfg.loss.kd_alpha, cfg.loss.kd_teacher = 1.0, "prefix"
    cfg.loss.kd_teacher_dir = str(_lm_dir(tok, tmp_path / "lm"))
    teacher = load_teacher(cfg, tok)
    torch.manual_seed(0)
    model = OCRModel(cfg.model, tok.vocab_size, image_height=16, tokenizer=tok)
    module = OCRLightningModule(model, cfg, tok, teacher=teacher)
    assert "_teacher" not in dict(module.named_children()) and module.teacher is teacher
    teacher_params = {id(p) for p in teacher.parameters()}
    assert not teacher_params & {id(p) for p in module.parameters()}  # not in the optimizer / checkpoint
    assert not any(k.startswith("_teacher") for k in module.state_dict())
    opt = module.configure_optimizers()["optimizer"]
    assert not teacher_params & {id(p) for g in opt.param_groups for p in g["params"]}
    t_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    batch = tiny_batch(tok)
    with torch.no_grad():  # the same LM read as a plain LM gives another Q, so another KD term
        kd_pre = module._loss(batch)[1]["kd"]
        object.__setattr__(module, "_teacher", KDTeacher(teacher.lm, "lm", teacher.special_ids))
        kd_lm = module._loss(batch)[1]["kd"]
        object.__setattr__(module, "_teacher", teacher)
    assert float(kd_pre) != pytest.approx(float(kd_lm), abs=1e-4)
    kds = []
    for _ in range(3):
        loss, parts = module._loss(batch)
        assert set(parts) == {"ce", "kd"} and torch.isfinite(loss)
        assert torch.allclose(loss, parts["ce"] + parts["kd"], atol=1e-5)
        kds.append(float(parts["kd"]))
        opt.zero_grad()
        loss.backward()
        grads = {param_group_name(n) for n, p in model.named_parameters()
                 if p.grad is not None and p.grad.abs().sum() > 0}
        assert "connector" in grads
        assert all(p.grad is None for p in teacher.parameters())
        opt.step()
    assert kds[-1] < kds[0]  # the student moves toward Q
    assert all(torch.equal(p, t_before[n]) for n, p in teacher.named_parameters())


@pytest.mark.parametrize("reading", ["lm", "prefix"])
def test_memo_gives_the_logits_computed_fresh_in_any_batch(tok, reading):
    """A line's teacher logits are kept once computed and reused in later epochs (`loss.kd_memo_mb`): the
    same values as reading afresh, whatever the batch's other rows and padding, and no LM call on a hit."""
    gpt = _gpt(tok)
    plain = KDTeacher(gpt, reading, special_ids=_specials(tok))
    memo = KDTeacher(gpt, reading, special_ids=_specials(tok), memo_mb=16)
    first = ["abc", "hgfedcba", "h"]
    ids, am = _batch(tok, first)
    got = memo.logits(ids, am)
    assert memo.memo_misses == 3 and memo.memo_hits == 0
    mask = am.bool()
    assert torch.allclose(got[mask], plain.logits(ids, am)[mask], atol=1e-5)
    calls = []
    real = memo._read
    memo._read = lambda *a: calls.append(a[0].shape[0]) or real(*a)
    ids2, am2 = _batch(tok, ["h", "abc"])  # other company, other padding
    again = memo.logits(ids2, am2)
    assert calls == [] and memo.memo_hits == 2
    mask2 = am2.bool()
    assert torch.allclose(again[mask2], plain.logits(ids2, am2)[mask2], atol=1e-5)
    assert torch.equal(again[0][~mask2[0]], torch.zeros_like(again[0][~mask2[0]]))
    ids3, am3 = _batch(tok, ["abc", "bad"])  # one hit, one miss: only the miss is read
    memo.logits(ids3, am3)
    assert calls == [1]


def test_memo_stays_under_its_size(tok):
    gpt = _gpt(tok)
    memo = KDTeacher(gpt, "lm", special_ids=_specials(tok), memo_mb=300 / 2**20)  # a line is 4 x 13 floats
    ids, am = _batch(tok, ["ab", "cd", "ef"])
    memo.logits(ids, am)
    assert 0 < memo._memo_used <= 300 and len(memo._memo) == 1
