"""Joint CTC/GPT decoding: the CTC prefix scorer against brute-force path sums, and the search end to end."""

import itertools
import math

import pytest
import torch

from bridgeocr.models.joint_decoding import CTCPrefixScorer


def collapse(path):
    out, prev = [], None
    for p in path:
        if p != prev and p != 0:
            out.append(p)
        prev = p
    return out


def brute_force(logp, length, labels):
    """(prefix log-prob, full log-prob) of `labels` by summing every frame path."""
    T, V = length, logp.shape[1]
    prefix = full = 0.0
    for path in itertools.product(range(V), repeat=T):
        p = math.exp(sum(logp[t, s].item() for t, s in enumerate(path)))
        out = collapse(path)
        if out[:len(labels)] == labels:
            prefix += p
            if out == labels:
                full += p
    return math.log(prefix) if prefix else float("-inf"), math.log(full) if full else float("-inf")


@pytest.mark.parametrize("labels", [[1], [1, 2], [2, 2], [1, 2, 1], [3, 3, 3]])
def test_prefix_scores_match_path_sums(labels):
    torch.manual_seed(0)
    T, V, eos = 6, 4, 4  # ids 0..3 are CTC classes (0 = blank); 4 plays EOS in a 5-way vocabulary
    logits = torch.randn(2, T, V + 1)
    logits[..., eos] = -30.0
    logp = logits.log_softmax(-1)
    lengths = torch.tensor([T, T - 1])  # item 1 has one padded frame, which must not count
    scorer = CTCPrefixScorer(logp, lengths)
    items = torch.tensor([0, 1])
    r = scorer.initial()
    last = torch.zeros(2, dtype=torch.long)
    for k, label in enumerate(labels):
        psi = scorer.scores(r, items, k, last, eos)
        for b in range(2):
            want_prefix, _ = brute_force(logp[b], int(lengths[b]), labels[:k + 1])
            assert psi[b, label].item() == pytest.approx(want_prefix, abs=1e-6)
        lab = torch.full((2,), label)
        r = scorer.extend(r, items, k, last, lab)
        last = lab
    psi = scorer.scores(r, items, len(labels), last, eos)
    for b in range(2):
        _, want_full = brute_force(logp[b], int(lengths[b]), labels)
        assert psi[b, eos].item() == pytest.approx(want_full, abs=1e-6)


# ------------------------------------------------------------------------------------------ the search

def peaked(labels, frames_per_label=3, vocab=16, blank_gap=True):
    """CTC log-posteriors [T, V] that spell `labels` with near certainty (blank between repeats)."""
    path = []
    for i, lab in enumerate(labels):
        if blank_gap and i and labels[i - 1] == lab:
            path.append(0)
        path += [lab] * frames_per_label
    path += [0, 0]
    logits = torch.full((len(path), vocab), -12.0)
    logits[torch.arange(len(path)), torch.tensor(path)] = 12.0
    return logits.log_softmax(-1)


def make_ocr(ctc_head=True):
    from bridgeocr.config import DecoderConfig, EncoderConfig, ModelConfig
    from bridgeocr.models.ocr import OCRModel

    torch.manual_seed(0)
    cfg = ModelConfig(encoder=EncoderConfig(dim=32, depth=1, heads=2, max_width=256), ctc_head=ctc_head,
                      decoder=DecoderConfig(n_layer=2, n_embd=32, n_head=2, n_positions=32), max_text_tokens=12)
    return OCRModel(cfg, 16, 32).eval()


@pytest.mark.parametrize("beam", [1, 3])
def test_a_confident_ctc_head_overrules_an_untrained_gpt(beam):
    """With a sure CTC reading, joint search writes exactly it (repeats included), whatever the GPT says;
    with CTC weight 0 it is the GPT's own beam search, which writes something else."""
    from bridgeocr.models.joint_decoding import joint_search

    model = make_ocr()
    spellings = [[5, 7, 7, 3], [9, 4], [6, 6, 6, 8, 10]]
    logps = [peaked(s) for s in spellings]
    T = max(lp.shape[0] for lp in logps)
    ctc = torch.zeros(len(logps), T, 16)
    for i, lp in enumerate(logps):
        ctc[i, :lp.shape[0]] = lp
    lengths = torch.tensor([lp.shape[0] for lp in logps])
    prefix = torch.randn(len(logps), 4, 32)
    mask = torch.ones(len(logps), 4, dtype=torch.bool)
    args = (model.decoder, prefix, mask, 0, model.bos_id, model.eos_id, 12)
    out = joint_search(*args, ctc_log_probs=ctc, ctc_lengths=lengths, ctc_weight=0.8, beam=beam, suppress=(0, 1))
    assert [ids for ids, _ in out] == spellings
    assert all(len(lps) == len(ids) + 1 for ids, lps in out)  # GPT log-probs of each token and of EOS
    gpt_only = joint_search(*args, ctc_log_probs=ctc, ctc_lengths=lengths, ctc_weight=0.0, beam=beam,
                            suppress=(0, 1))
    assert [ids for ids, _ in gpt_only] != spellings


def test_read_joint_follows_the_config_and_needs_a_head():
    from bridgeocr.errors import ConfigError

    model = make_ocr()
    imgs, mask = torch.rand(2, 1, 32, 96), torch.ones(2, 96, dtype=torch.bool)
    model.cfg.decoding = "joint"
    joint = model.read(imgs, mask)
    assert joint == model.read(imgs, mask, decoding="joint", beam=model.cfg.joint_beam)
    assert len(joint) == 2 and all(isinstance(h.text, str) for h in joint)
    headless = make_ocr(ctc_head=False)
    headless.cfg.decoding = "joint"
    assert len(headless.read(imgs, mask)) == 2  # a config default it cannot follow falls back to the GPT
    with pytest.raises(ConfigError, match="CTC head"):
        headless.read(imgs, mask, decoding="joint")
    with pytest.raises(ConfigError, match="decoding"):
        model.read(imgs, mask, decoding="sideways")


def _uncertain_case(seed, items=6, frames=14):
    """A GPT with opinions of its own and a CTC head that is unsure: the joint reading often leaves the
    CTC head's own (so joint_greedy's drafts miss, and its later checks and fallback are exercised)."""
    model = make_ocr()
    with torch.no_grad():
        for block in model.decoder.h:
            block.attn.c_proj.weight.mul_(20)
    g = torch.Generator().manual_seed(seed)
    ctc = (torch.randn(items, frames, 16, generator=g) * 3).log_softmax(-1)
    lengths = torch.randint(4, frames + 1, (items,), generator=g)
    prefix = torch.randn(items, 5, 32, generator=g)
    mask = torch.ones(items, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return model, (model.decoder, prefix, mask, 0, model.bos_id, model.eos_id, 12), ctc, lengths


@pytest.mark.parametrize("rounds", [1, 2, 8])
def test_joint_greedy_is_the_stepwise_beam_1_search(rounds):
    """The draft-and-check greedy search returns exactly what the stepwise beam-1 joint search returns
    (ids and the GPT's log-probs), whether the CTC head's draft holds, misses once or keeps missing."""
    from bridgeocr.models.joint_decoding import _collapse, joint_greedy, joint_search

    off_draft = 0
    for seed in range(6):
        model, args, ctc, lengths = _uncertain_case(seed)
        kw = dict(ctc_log_probs=ctc, ctc_lengths=lengths, ctc_weight=0.5, suppress=(0, 1))
        fast = joint_greedy(*args, rounds=rounds, **kw)
        slow = joint_search(*args, beam=1, **kw)
        assert [ids for ids, _ in fast] == [ids for ids, _ in slow]
        for (_, a), (_, b) in zip(fast, slow):
            assert a == pytest.approx(b, abs=1e-4)
        drafts = [_collapse(p[:n], {0, 1, 2}) for p, n in zip(ctc.argmax(-1).tolist(), lengths.tolist())]
        off_draft += sum(ids != d for (ids, _), d in zip(fast, drafts))
    assert off_draft >= 5  # the joint reading really left the drafts


def test_draft_first_search_searches_only_where_the_draft_does_not_hold():
    """Draft first: a line the beam-1 joint reading follows along its CTC draft to the end keeps that reading;
    every other line gets exactly the beam search's hypothesis (ids and GPT log-probs)."""
    from bridgeocr.models.joint_decoding import _collapse, draft_first_search, joint_greedy, joint_search

    kept = searched = 0
    for seed in range(8):
        model, args, ctc, lengths = _uncertain_case(seed)
        kw = dict(ctc_log_probs=ctc, ctc_lengths=lengths, ctc_weight=0.5, suppress=(0, 1))
        out = draft_first_search(*args, beam=3, **kw)
        greedy = joint_greedy(*args, **kw)
        full = joint_search(*args, beam=3, **kw)
        drafts = [_collapse(p[:n], {0, 1, 2}) for p, n in zip(ctc.argmax(-1).tolist(), lengths.tolist())]
        for b, (ids, lps) in enumerate(out):
            if greedy[b][0] == drafts[b]:  # read whole on the first check
                assert ids == greedy[b][0]
                kept += 1
            else:
                assert ids == full[b][0] and lps == pytest.approx(full[b][1], abs=1e-4)
                searched += 1
    assert kept >= 5 and searched >= 5  # both kinds of line were exercised


def test_joint_draft_config_picks_the_search(monkeypatch):
    """model.joint_draft (default true) reads joint beam > 1 draft first; false: every line is beam-searched;
    beam 1 is the draft-and-check greedy search either way."""
    import bridgeocr.models.decoding as decoding

    calls = []
    for name in ("draft_first_search", "joint_search", "joint_greedy"):
        real = getattr(decoding, name)
        monkeypatch.setattr(decoding, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    model = make_ocr()
    imgs, mask = torch.rand(2, 1, 32, 96), torch.ones(2, 96, dtype=torch.bool)
    assert model.cfg.joint_draft
    model.read(imgs, mask, decoding="joint", beam=3)
    assert calls[0] == "draft_first_search"
    calls.clear()
    model.cfg.joint_draft = False
    model.read(imgs, mask, decoding="joint", beam=3)
    assert calls == ["joint_search"]
    calls.clear()
    model.read(imgs, mask, decoding="joint", beam=1)
    assert calls[0] == "joint_greedy"


def test_pre_beam_keeps_the_best_hypothesis_when_it_holds_it():
    """Partial scoring (the GPT's P best ids + EOS per hypothesis) finds the exact search's best
    hypothesis whenever each of its tokens is among the GPT's P best for its prefix; a pre-beam that
    covers the vocabulary is the exact search itself."""
    from bridgeocr.models.joint_decoding import joint_search

    checked, changed = 0, 0
    for seed in range(6):
        model, args, ctc, lengths = _uncertain_case(seed)
        kw = dict(ctc_log_probs=ctc, ctc_lengths=lengths, ctc_weight=0.5, suppress=(0, 1), beam=3)
        full = joint_search(*args, **kw)
        assert joint_search(*args, pre_beam=15, **kw) == full
        gpt, prefix, mask = args[:3]
        for P in (4, 8, 12):
            pruned = joint_search(*args, pre_beam=P, **kw)
            changed += sum(p[0] != f[0] for p, f in zip(pruned, full))
            for b, (ids, _) in enumerate(full):
                seq = torch.tensor([[model.bos_id] + ids])
                with torch.no_grad():
                    logits, _ = gpt(seq, prefix=prefix[b:b + 1], prefix_mask=mask[b:b + 1])
                logits[..., [0, 1]] = float("-inf")
                ranks = [(logits[0, j] > logits[0, j, tok]).sum().item() for j, tok in enumerate(ids)]
                if all(rank < P for rank in ranks):  # the pre-beam holds every token of the best hypothesis
                    assert pruned[b][0] == ids
                    checked += 1
    assert checked >= 12
    assert changed > 0  # where it does not hold them, pruning changes readings: it is really pruning


def test_fast_preset_is_joint_at_beam_1_and_refuses_a_wider_beam(capsys):
    from bridgeocr.cli import main
    from bridgeocr.eval.evaluate import describe_decoding

    model = make_ocr()
    imgs, mask = torch.rand(2, 1, 32, 96), torch.ones(2, 96, dtype=torch.bool)
    assert model.read(imgs, mask, decoding="fast") == model.read(imgs, mask, decoding="joint", beam=1)
    assert model.read(imgs, mask, decoding="fast", beam=4) == model.read(imgs, mask, decoding="joint", beam=1)
    assert describe_decoding(model, "fast", None).startswith("joint CTC/GPT, beam 1")
    headless = make_ocr(ctc_head=False)
    assert headless.read(imgs, mask, decoding="fast") == headless.read(imgs, mask, decoding="gpt", beam=1)
    with pytest.raises(SystemExit) as exc:
        main(["recognize", "x.png", "--fast", "--beam", "3"])
    assert exc.value.code == 2
    assert "--fast reads with beam 1" in capsys.readouterr().err
