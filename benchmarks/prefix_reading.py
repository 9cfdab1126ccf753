"""How well a GPT reads a prefix (docs/reading.md): next-token loss of held-out lines, in nats per character,
with the line in its prefix in several forms (train/prefix_reading.py's noise model) and with no prefix.

    python benchmarks/prefix_reading.py [--lm shipped:gpt_lm] [--corpus ../shared/data/gutenberg_en/val.txt]

A lossless reader scores ~0 on the clean forms; a plain LM scores the same with and without a prefix.
"""

from __future__ import annotations

import argparse
import random

import torch

from bridgeocr.data.corpus import cut_lines, read_corpus
from bridgeocr.data.preprocess import text_batch
from bridgeocr.data.tokenizers import load_tokenizer
from bridgeocr.models.decoder import GPT
from bridgeocr.shipped import resolve_pretrained
from bridgeocr.train.losses import ce_loss
from bridgeocr.train.prefix_reading import PrefixNoise, prefix_reading_loss

FORMS = {
    "collapsed, clean": PrefixNoise(collapsed_prob=1, swap_prob=0, delete_prob=0, insert_prob=0, noise_std=0),
    "collapsed, 10% swaps": PrefixNoise(collapsed_prob=1, swap_prob=0.1, delete_prob=0, insert_prob=0,
                                        noise_std=0),
    "collapsed, default noise": PrefixNoise(collapsed_prob=1),
    "stretched, clean, no blanks": PrefixNoise(collapsed_prob=0, swap_prob=0, noise_std=0, max_blank_prob=0),
    "stretched, default noise": PrefixNoise(collapsed_prob=0),
    "no prefix (plain LM)": None,
}


@torch.no_grad()
def nats_per_char(gpt, tok, lines: list[list[int]], noise: PrefixNoise | None, batch: int = 32) -> float:
    chars = [i for i in range(tok.vocab_size) if i not in tok.special_ids]
    total, count = 0.0, 0
    for i in range(0, len(lines), batch):
        chunk = lines[i: i + batch]
        if noise is None:
            ids, am = text_batch(chunk, tok.bos_id, tok.eos_id, tok.pad_id)
            loss, n = ce_loss(gpt(ids, am)[0], ids, am, reduction="sum"), int(am[:, 1:].sum())
        else:
            loss, n = prefix_reading_loss(gpt, chunk, tok, chars, random.Random(i), noise, reduction="sum")
        total, count = total + float(loss), count + n
    return total / max(1, count)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lm", default="shipped:gpt_lm", help="an LM dir from `bridgeocr lm train` (or shipped:NAME)")
    ap.add_argument("--corpus", nargs="+", default=["../shared/data/gutenberg_en/val.txt"],
                    help="held-out text (default: the Gutenberg val books)")
    ap.add_argument("--lines", type=int, default=256)
    args = ap.parse_args()
    path = resolve_pretrained(args.lm)
    gpt, tok = GPT.from_hf(path).eval(), load_tokenizer(path / "tokenizer.json")
    texts = cut_lines(read_corpus(args.corpus), random.Random(1), max_lines=max(3000, args.lines))
    lines = [tok.encode(t) for t in random.Random(2).sample(texts, min(args.lines, len(texts)))]
    print(f"{args.lm}: {len(lines)} held-out lines, prefix positions {gpt.cfg.prefix_positions}")
    print("| prefix | nats/char |\n|---|---:|")
    for name, noise in FORMS.items():
        print(f"| {name} | {nats_per_char(gpt, tok, lines, noise):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
