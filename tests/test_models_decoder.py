"""GPT decoder: HF parity, truncation, save/load, prefix attach points, masks, KV cache, freezing."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bridgeocr.config import DecoderConfig
from bridgeocr.errors import ConfigError
from bridgeocr.models.decoder import GPT, apply_freeze

V = 40


def tiny_cfg(n_layer=3):
    return DecoderConfig(n_layer=n_layer, n_embd=32, n_head=2, n_positions=64)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=3, n_head=2,
                     bos_token_id=1, eos_token_id=2)
    d = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(cfg).save_pretrained(d)
    return d


def test_logits_match_transformers(hf_dir):
    gpt = GPT.from_hf(hf_dir).eval()
    hf = GPT2LMHeadModel.from_pretrained(hf_dir, local_files_only=True).eval()
    ids = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        ours, _ = gpt(ids)
        ref = hf(ids).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_truncation_keeps_first_blocks(hf_dir):
    full = GPT.from_hf(hf_dir)
    cut = GPT.from_hf(hf_dir, n_layer=2)
    assert len(cut.h) == 2 and cut.cfg.n_layer == 2 and cut.cfg.n_embd == 32
    for k, v in cut.state_dict().items():
        torch.testing.assert_close(v, full.state_dict()[k], atol=0, rtol=0)
    with pytest.raises(ConfigError):
        GPT.from_hf(hf_dir, n_layer=4)


def test_save_hf_roundtrip_loads_in_transformers(tmp_path):
    torch.manual_seed(1)
    gpt = GPT(tiny_cfg(2), V).eval()
    gpt.save_hf(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    hf = GPT2LMHeadModel.from_pretrained(tmp_path, local_files_only=True).eval()
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(gpt(ids)[0], hf(ids).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(GPT.from_hf(tmp_path).eval()(ids)[0], gpt(ids)[0], atol=0, rtol=0)


def _inputs(B=2, M=5, T=6, d=32):
    g = torch.Generator().manual_seed(3)
    prefix = torch.randn(B, M, d, generator=g)
    ids = torch.randint(0, V, (B, T), generator=g)
    return prefix, ids


@pytest.mark.parametrize("attach", [0, 1, 2])
def test_prefix_padding_and_text_padding_are_ignored(attach):
    torch.manual_seed(0)
    gpt = GPT(tiny_cfg(), V).eval()
    prefix, ids = _inputs()
    pm = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        ref, _ = gpt(ids[:1, :4], prefix=prefix[:1, :3], attach_layer=attach)
        # item 0 padded: 2 junk prefix tokens (masked) and 2 junk text tokens (masked, right padding)
        pm[0, 3:] = False
        am = torch.ones(2, 6, dtype=torch.bool)
        am[0, 4:] = False
        out, _ = gpt(ids, am, prefix=prefix, prefix_mask=pm, attach_layer=attach)
    torch.testing.assert_close(out[:1, :4], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attach", [0, 1, 2])
def test_text_logits_depend_on_image(attach):
    torch.manual_seed(0)
    gpt = GPT(tiny_cfg(), V).eval()
    prefix, ids = _inputs()
    with torch.no_grad():
        a, _ = gpt(ids, prefix=prefix, attach_layer=attach)
        b, _ = gpt(ids, prefix=torch.randn_like(prefix), attach_layer=attach)
    assert (a - b).abs().amax() > 1e-4


@pytest.mark.parametrize("attach", [1, 2])
def test_blocks_below_attach_equal_text_only_path(attach):
    torch.manual_seed(0)
    gpt = GPT(tiny_cfg(), V).eval()
    prefix, ids = _inputs()
    seen = {}
    hooks = [b.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, []).append(o[0]))
             for n, b in enumerate(gpt.h)]
    with torch.no_grad():
        gpt(ids)  # text only
        gpt(ids, prefix=prefix, attach_layer=attach)
    for h in hooks:
        h.remove()
    for n in range(attach):
        torch.testing.assert_close(seen[n][0], seen[n][1], atol=0, rtol=0)
    # from the attach block on, the sequence carries the prefix and the text states change
    assert seen[attach][1].shape[1] == 5 + 6
    assert (seen[attach][1][:, 5:] - seen[attach][0]).abs().amax() > 1e-4


def test_text_positions_shared_with_lm_path():
    """At attach 0 with an empty-effect prefix the first text position is still position 0."""
    torch.manual_seed(0)
    gpt = GPT(tiny_cfg(), V).eval()
    prefix, ids = _inputs()
    pm = torch.zeros(2, 5, dtype=torch.bool)  # every prefix token masked: must equal the plain LM
    with torch.no_grad():
        torch.testing.assert_close(gpt(ids, prefix=prefix, prefix_mask=pm)[0], gpt(ids)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("attach", [0, 2])
def test_kv_cache_matches_full_forward(attach):
    torch.manual_seed(0)
    gpt = GPT(tiny_cfg(), V).eval()
    prefix, ids = _inputs()
    pm = torch.ones(2, 5, dtype=torch.bool)
    pm[1, 2:] = False
    with torch.no_grad():
        full, _ = gpt(ids, prefix=prefix, prefix_mask=pm, attach_layer=attach)
        out, past = gpt(ids[:, :2], prefix=prefix, prefix_mask=pm, attach_layer=attach)
        steps = [out]
        for t in range(2, 6):
            out, past = gpt(ids[:, t:t + 1], past=past)
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    with torch.no_grad():  # text-only LM cache too
        lm_full, _ = gpt(ids)
        _, p = gpt(ids[:, :3])
        torch.testing.assert_close(gpt(ids[:, 3:], past=p)[0], lm_full[:, 3:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("attach", [0, 2])
def test_step_cache_matches_full_forward_through_growth_and_reordering(attach):
    """GPT.step over a StepCache (per-line prefix, growing text buffers) gives the logits of a full forward
    pass, also after beams are reordered, repeated and dropped and once its buffers had to grow."""
    from bridgeocr.models.decoder import StepCache

    torch.manual_seed(0)
    gpt = GPT(tiny_cfg(), V).eval()
    prefix, ids = _inputs()
    pm = torch.ones(2, 5, dtype=torch.bool)
    pm[1, 2:] = False
    rows = [torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 3, 3]), torch.tensor([2, 3]), torch.tensor([1, 0])]
    with torch.no_grad():
        _, past = gpt(ids[:, :1], prefix=prefix, prefix_mask=pm, attach_layer=attach)
        cache = StepCache.from_prefill(past, room=1)  # room for one token: the buffers grow twice below
        seqs, items = ids[:, :1], torch.arange(2)
        for t, parents in enumerate(rows, start=1):
            seqs, items = seqs[parents], items[parents]
            cache = cache.reorder(parents)
            tokens = ids[items, t] if t % 2 else (ids[items, t] + 1) % V  # rows of a line may differ
            logits = gpt.step(tokens, cache)
            seqs = torch.cat([seqs, tokens[:, None]], 1)
            full, _ = gpt(seqs, prefix=prefix[items], prefix_mask=pm[items], attach_layer=attach)
            torch.testing.assert_close(logits, full[:, -1], atol=1e-5, rtol=0)
    assert cache.text_kv[-1][0].shape[2] > 2  # it did grow


def test_freeze():
    gpt = GPT(tiny_cfg(), V)
    apply_freeze(gpt, "all")
    assert not any(p.requires_grad for p in gpt.parameters())
    apply_freeze(gpt, "top:1")
    assert all(p.requires_grad for p in gpt.h[2].parameters())
    assert not any(p.requires_grad for p in gpt.h[1].parameters())
    assert not gpt.wte.weight.requires_grad and not gpt.wpe.weight.requires_grad
    assert gpt.ln_f.weight.requires_grad
    apply_freeze(gpt, "none")
    assert all(p.requires_grad for p in gpt.parameters())
    with pytest.raises(ConfigError, match="top:N"):
        apply_freeze(gpt, "top:x")


def test_prefix_positions_give_visual_token_i_position_i():
    torch.manual_seed(0)
    gpt = GPT(tiny_cfg(n_layer=1), 20).eval()
    gpt.cfg.prefix_positions = True
    prefix = torch.zeros(1, 4, gpt.cfg.n_embd)
    placed = gpt._place_prefix(prefix)
    assert torch.equal(placed[0], gpt.wpe.weight[:4])  # token i carries position embedding i
    ids = torch.tensor([[1, 5, 6]])
    with_pos = gpt(ids, prefix=prefix)[0]
    gpt.cfg.prefix_positions = False
    assert torch.equal(gpt._place_prefix(prefix), prefix)
    assert not torch.allclose(with_pos, gpt(ids, prefix=prefix)[0])  # the positions reach the text
