"""Decoding: the KV cache gives exactly full recomputation (greedy, beam); padding never changes an item."""

import pytest
import torch

from bridgeocr.config import ConnectorConfig, DecoderConfig, EncoderConfig, ModelConfig
from bridgeocr.models.decoding import generate
from bridgeocr.models.ocr import OCRModel

V = 16


def make_model(kind="linear_gelu_ln", attach=0, **conn):
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=EncoderConfig(dim=32, depth=1, heads=2, max_width=256),
                      connector=ConnectorConfig.of(kind, **conn),
                      decoder=DecoderConfig(n_layer=2, n_embd=32, n_head=2, n_positions=32),
                      attach_layer=attach, max_text_tokens=8)
    model = OCRModel(cfg, V, 32).eval()
    with torch.no_grad():  # let attention dominate the residual stream, so lines differ and stop at EOS
        for block in model.decoder.h:
            block.attn.c_proj.weight.mul_(50)
            block.attn.c_attn.weight.mul_(3)
    return model


def lines(widths, total):
    g = torch.Generator().manual_seed(1)
    imgs = torch.zeros(len(widths), 1, 32, total)
    mask = torch.zeros(len(widths), total, dtype=torch.bool)
    for i, w in enumerate(widths):
        imgs[i, :, :, :w] = torch.rand(1, 32, w, generator=g)
        mask[i, :w] = True
    return imgs, mask


@pytest.mark.parametrize("attach", [0, 1])
@pytest.mark.parametrize("beam", [1, 3])
def test_cache_equals_full_recomputation(attach, beam):
    model = make_model(attach=attach)
    imgs, mask = lines([40, 64, 17], 64)
    cached = generate(model, imgs, mask, beam=beam, length_penalty=0.8)
    full = generate(model, imgs, mask, beam=beam, length_penalty=0.8, use_cache=False)
    assert [h.ids for h in cached] == [h.ids for h in full]
    for a, b in zip(cached, full):
        assert abs(a.confidence - b.confidence) < 1e-4
    assert len({round(h.confidence, 4) for h in cached}) == 3  # the lines are really read differently


SETTINGS = [dict(kind="linear_gelu_ln"), dict(kind="mlp", reduce="pool", reduce_k=2),
            dict(kind="linear_ln", reduce="concat", reduce_k=4),
            dict(kind="qformer", num_queries=4, layers=1), dict(kind="cabstractor", num_queries=4, layers=1)]


@pytest.mark.parametrize("conn", SETTINGS, ids=lambda s: s["kind"] + str(s.get("reduce", "")))
def test_padding_a_batch_never_changes_an_item(conn):
    model = make_model(**conn)
    imgs, mask = lines([40, 17], 40)
    alone = [model.generate(imgs[i:i + 1, :, :, :w], mask[i:i + 1, :w], beam=2) for i, w in enumerate([40, 17])]
    wide, wmask = lines([40, 17, 200], 200)
    batch = model.generate(wide, wmask, beam=2)
    for i in range(2):
        assert batch[i].ids == alone[i][0].ids
        assert abs(batch[i].confidence - alone[i][0].confidence) < 1e-4


def test_max_new_tokens_and_length():
    model = make_model()
    imgs, mask = lines([40, 30], 40)
    for beam in (1, 2):
        hyps = model.generate(imgs, mask, beam=beam, max_new_tokens=3)
        assert all(len(h.ids) <= 3 for h in hyps)


def test_repeat_tail_finds_a_loop_and_spares_runs_of_one_token():
    from bridgeocr.models.decoding import repeat_tail

    look = [7, 8, 9, 1]  # " look"
    assert repeat_tail([3, 4] + look * 4, 4) == 12  # four copies: drop three
    assert repeat_tail([3, 4] + look * 3, 4) == 0  # three copies are still text ("ha ha ha")
    assert repeat_tail([5] * 20, 4) == 0  # "....", "xxxx": one token repeated is real text
    assert repeat_tail([3, 4] + look * 4, 0) == 0  # off
    assert repeat_tail([1, 2] * 4 + [3], 4) == 0  # the loop must reach the end


class _ScriptedGPT:
    """Stands in for the GPT: row r's next token is script[r][t] (then EOS), whatever it reads."""

    def __init__(self, script, vocab, eos):
        self.script, self.vocab, self.eos = script, vocab, eos

    def _logits(self, seqs, rows):
        out = torch.full((len(rows), 1, self.vocab), -10.0)
        for i, r in enumerate(rows):
            t = seqs.shape[1] - 1
            out[i, 0, self.script[r][t] if t < len(self.script[r]) else self.eos] = 10.0
        return out


def test_greedy_and_beam_stop_a_loop_after_its_first_copy(monkeypatch):
    from bridgeocr.models import decoding

    eos, vocab = 2, 12
    loop = [3, 4] + [7, 8, 9, 1] * 10  # a decoder caught repeating " look"
    plain = [3, 4, 5, 6, 5, 6, 5]  # "5 6" three times: not a loop at 4
    gpt = _ScriptedGPT([loop, plain], vocab, eos)

    class ScriptedStepper(decoding.Stepper):
        def start(self):
            self.rows = torch.arange(self.prefix.shape[0])
            self.seqs = torch.full((len(self.rows), 1), self.bos)
            return gpt._logits(self.seqs, self.rows.tolist())[:, -1]

        def step(self, parents, tokens, same_rows=False):
            self.seqs = torch.cat([self.seqs[parents], tokens[:, None]], dim=1)
            self.rows = self.rows[parents]
            return gpt._logits(self.seqs, self.rows.tolist())[:, -1]

    monkeypatch.setattr(decoding, "Stepper", ScriptedStepper)
    prefix, mask = torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool)
    args = (None, prefix, mask, 0, 1, eos, 60)
    off = decoding.greedy_search(*args)
    assert off[0][0] == loop and off[1][0] == plain
    on = decoding.greedy_search(*args, stop_repeats=4)
    assert on[0][0] == [3, 4, 7, 8, 9, 1] and len(on[0][1]) == 6
    assert on[1][0] == plain
    beam = decoding.beam_search(*args, beam=2, stop_repeats=4)
    assert beam[0][0] == [3, 4, 7, 8, 9, 1] and beam[1][0] == plain
