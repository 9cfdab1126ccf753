import pytest

from bridgeocr.eval.metrics import (
    cer,
    format_seed_metrics,
    group_scores,
    line_cer,
    line_cers,
    print_seed_metrics,
    wer,
)


def test_corpus_level_not_mean_of_lines():
    refs = ["abcd", "ab"]
    hyps = ["abcd", "xy"]
    assert cer(refs, hyps) == pytest.approx(2 / 6)
    assert sum(line_cers(refs, hyps)) / 2 == pytest.approx(0.5)


def test_case_sensitive_and_wer():
    assert cer(["Abc"], ["abc"]) == pytest.approx(1 / 3)
    assert wer(["the Cat sat"], ["the cat sat"]) == pytest.approx(1 / 3)
    assert wer(["a b c", "d"], ["a c", "d"]) == pytest.approx(1 / 4)


def test_empty_strings_do_not_crash():
    assert cer(["abc"], [""]) == pytest.approx(1.0)
    assert wer(["abc def"], [""]) == pytest.approx(1.0)
    assert cer(["", "ab"], ["x", "ab"]) == pytest.approx(0.5)
    assert cer([""], [""]) == 0.0
    assert cer([""], ["x"]) == 1.0
    assert wer([""], [""]) == 0.0
    assert cer([], []) == 0.0
    assert line_cer("", "") == 0.0
    with pytest.raises(ValueError):
        cer(["a"], [])


def test_seed_format(capsys):
    assert format_seed_metrics("val", 0, 0.03333, 0.11944) == (
        "[val] CER at epoch 0: 0.0333\n[val] WER at epoch 0: 0.1194")
    print_seed_metrics("test", 3, 0.0468, 0.1596)
    assert capsys.readouterr().out == "[test] CER at epoch 3: 0.0468\n[test] WER at epoch 3: 0.1596\n"


def test_group_scores_are_corpus_level_within_each_group_worst_first():
    rows = group_scores(["a", "b", "a", ""], ["abcd", "xy", "ab", "q"], ["abcd", "xz", "a", "q"])
    assert [r["group"] for r in rows] == ["b", "a", ""]
    a = rows[1]
    assert a["lines"] == 2 and a["chars"] == 6 and a["cer"] == pytest.approx(1 / 6)  # not the mean of 0 and 1/2
    assert rows[0]["cer"] == 0.5 and rows[0]["wer"] == 1.0 and rows[2]["cer"] == 0.0
    with pytest.raises(ValueError, match="2 groups"):
        group_scores(["a", "b"], ["x"], ["x"])
