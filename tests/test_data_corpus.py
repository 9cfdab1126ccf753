"""The built-in corpus: big enough that a decoder cannot memorise it, the same on every run."""

import random

from bridgeocr.data.corpus import builtin_corpus_text, cut_lines, read_corpus


def test_builtin_corpus_is_large_and_deterministic():
    text = builtin_corpus_text()
    assert len(text) > 150_000  # the standard library's documentation prose joins the shipped text
    assert builtin_corpus_text() == text
    lines = cut_lines(read_corpus(None), random.Random(0))
    assert len(set(lines)) > 4000
    assert all(15 <= len(line) <= 80 for line in lines)
    assert not any(">>>" in line for line in lines)
