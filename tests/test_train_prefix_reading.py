"""Prefix reading: the synthetic visual prefix is what it claims, and a GPT trained on it learns to read it."""

import random

import torch

from bridgeocr.config import DecoderConfig
from bridgeocr.data.tokenizers import CharTokenizer
from bridgeocr.models.decoder import GPT
from bridgeocr.train.prefix_reading import PrefixNoise, coverage_matrix, noisy_prefix, prefix_reading_loss


def test_coverage_rows_split_tokens_between_characters():
    cover = coverage_matrix(n_chars=4, ratio=2.5, margin_left=2, n_tokens=2 + 10 + 3)
    assert torch.allclose(cover[:2].sum(1), torch.zeros(2))  # left margin: blank
    assert torch.allclose(cover[2:12].sum(1), torch.ones(10))  # text tokens: fully covered
    assert torch.allclose(cover[12:].sum(1), torch.zeros(3))  # right margin
    assert torch.allclose(cover.sum(0), torch.full((4,), 2.5))  # each character spans `ratio` tokens
    # token 3 (text span [0.4, 0.8)) lies over character 0 only; token 4 ([0.8, 1.2)) half over 0, half over 1
    assert torch.allclose(cover[3], torch.tensor([1.0, 0, 0, 0]))
    assert torch.allclose(cover[4], torch.tensor([0.5, 0.5, 0, 0]))


def test_clean_prefix_is_the_mean_embedding_of_covered_characters():
    wte = torch.nn.Embedding(10, 6)
    clean = PrefixNoise(min_ratio=2.0, max_ratio=2.0, max_margin=0, swap_prob=0.0, noise_std=0.0,
                        collapsed_prob=0.0, max_blank_prob=0.0)
    prefix, mask = noisy_prefix(wte, [[4, 5, 6], [7]], blank_id=0, char_ids=list(range(4, 10)),
                                rng=random.Random(0), noise=clean)
    assert prefix.shape == (2, 6, 6) and mask.sum(1).tolist() == [6, 2]
    assert torch.allclose(prefix[0, 0], wte.weight[4]) and torch.allclose(prefix[0, 5], wte.weight[6])
    assert torch.allclose(prefix[1, 1], wte.weight[7]) and not mask[1, 2:].any()
    prefix.sum().backward()  # the GPT's own embeddings are what it learns to read: gradients reach them
    assert wte.weight.grad[4].abs().sum() > 0


def test_a_gpt_trained_on_prefix_reading_reads_random_strings():
    """Random letters have no language prior: only reading the prefix can push the loss below log(26)."""
    tok = CharTokenizer.build(["abcdefghijklmnopqrstuvwxyz"])
    torch.manual_seed(0)
    gpt = GPT(DecoderConfig(n_layer=2, n_embd=64, n_head=4, n_positions=128, prefix_positions=True),
              tok.vocab_size)
    opt = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    rng = random.Random(0)
    chars = [i for i in range(tok.vocab_size) if i not in tok.special_ids]
    noise = PrefixNoise(min_ratio=1.0, max_ratio=2.0, max_margin=2, swap_prob=0.0, noise_std=0.2, max_blank_prob=0.5)

    def batch():
        return [[rng.choice(chars) for _ in range(rng.randint(4, 10))] for _ in range(32)]

    for _ in range(250):
        loss, _ = prefix_reading_loss(gpt, batch(), tok, chars, rng, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gpt.eval()
    with torch.no_grad():
        final, _ = prefix_reading_loss(gpt, batch(), tok, chars, rng, noise)
    assert float(final) < 0.5 * torch.log(torch.tensor(26.0))  # far below guessing: it reads the prefix


def test_prefix_positions_travel_with_the_lm_directory(tmp_path):
    gpt = GPT(DecoderConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64, prefix_positions=True), 12)
    gpt.save_hf(tmp_path / "lm")
    assert GPT.from_hf(tmp_path / "lm").cfg.prefix_positions is True
    gpt.cfg.prefix_positions = False
    gpt.save_hf(tmp_path / "plain")
    assert GPT.from_hf(tmp_path / "plain").cfg.prefix_positions is False


def test_ctc_like_blanks_keep_one_token_per_character():
    wte = torch.nn.Embedding(10, 6)
    sparse = PrefixNoise(min_ratio=3.0, max_ratio=3.0, max_margin=0, swap_prob=0.0, noise_std=0.0,
                         collapsed_prob=0.0, max_blank_prob=1.0)
    prefix, mask = noisy_prefix(wte, [[4, 5, 6, 7]], blank_id=0, char_ids=list(range(4, 10)),
                                rng=random.Random(3), noise=sparse)
    rows = prefix[0, mask[0]]
    for char in (4, 5, 6, 7):  # every character still fires somewhere
        assert any(torch.allclose(r, wte.weight[char]) for r in rows)
    assert any(torch.allclose(r, wte.weight[0]) for r in rows)  # and some tokens are blank


def test_collapsed_lines_are_one_token_per_character():
    wte = torch.nn.Embedding(10, 6)
    exact = PrefixNoise(collapsed_prob=1.0, swap_prob=0.0, delete_prob=0.0, insert_prob=0.0, noise_std=0.0)
    prefix, mask = noisy_prefix(wte, [[4, 5, 6], [7]], blank_id=0, char_ids=list(range(4, 10)),
                                rng=random.Random(0), noise=exact)
    assert mask.sum(1).tolist() == [3, 1]
    assert torch.allclose(prefix[0], wte.weight[[4, 5, 6]]) and torch.allclose(prefix[1, 0], wte.weight[7])
    edits = PrefixNoise(collapsed_prob=1.0, swap_prob=0.0, delete_prob=0.5, insert_prob=0.0, noise_std=0.0)
    _, mask = noisy_prefix(wte, [list(range(4, 10)) * 5], blank_id=0, char_ids=list(range(4, 10)),
                           rng=random.Random(0), noise=edits)
    assert 5 < int(mask.sum()) < 25  # about half of the 30 characters dropped


def test_lm_train_init_and_prefix_read_make_a_reading_lm(tmp_path):
    from bridgeocr.train.lm import train_lm

    docs = ["the cat sat on the mat and looked at the dog", "a dog ran in the fog to find the cat again"] * 10
    train_lm(docs=docs, val_docs=None, out=tmp_path / "plain", n_layer=1, n_embd=32, n_head=2, context=32,
             steps=2, batch_size=4, progress=False)
    assert GPT.from_hf(tmp_path / "plain").cfg.prefix_positions is False
    card = train_lm(docs=docs, val_docs=None, out=tmp_path / "reader", init=tmp_path / "plain", steps=4,
                    batch_size=4, prefix_read=0.5, progress=False)
    assert card["init"] == str(tmp_path / "plain") and card["prefix_read_val_loss"] > 0
    assert GPT.from_hf(tmp_path / "reader").cfg.prefix_positions is True  # an OCR model follows it
    from bridgeocr.config import ModelConfig
    from bridgeocr.models.ocr import OCRModel

    m = ModelConfig()
    m.encoder.dim, m.encoder.depth, m.encoder.heads = 32, 1, 2
    m.decoder.pretrained, m.decoder.n_layer = str(tmp_path / "reader"), 1
    vocab = GPT.from_hf(tmp_path / "reader").vocab_size
    assert OCRModel(m, vocab).decoder.cfg.prefix_positions is True  # null: as the LM learnt
    m.decoder.prefix_positions = False
    assert OCRModel(m, vocab).decoder.cfg.prefix_positions is False  # an explicit choice wins
