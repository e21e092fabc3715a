"""Metrics against values computed by hand (the arithmetic is written out in each test)."""

from __future__ import annotations

import math

import pytest

from oficina.evals import metrics as M

# ---------------------------------------------------------------------------- classification


def test_accuracy_by_hand():
    # 4 items, items 0, 1 and 3 right, item 2 wrong -> 3/4
    assert M.accuracy(["a", "b", "a", "c"], ["a", "b", "b", "c"]) == 0.75
    assert M.accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        M.accuracy(["a"], ["a", "b"])


PREDS = ["a", "a", "b", "b", "c", "a"]
GOLDS = ["a", "b", "b", "b", "c", "c"]


def test_per_label_and_macro_f1_by_hand():
    # item:   0  1  2  3  4  5
    # pred:   a  a  b  b  c  a
    # gold:   a  b  b  b  c  c
    # a: TP=1 (0), FP=2 (1, 5), FN=0        -> F1 = 2*1 / (2*1 + 2 + 0) = 2/4 = 0.5
    # b: TP=2 (2, 3), FP=0, FN=1 (1)        -> F1 = 2*2 / (4 + 0 + 1)   = 4/5 = 0.8
    # c: TP=1 (4), FP=0, FN=1 (5)           -> F1 = 2*1 / (2 + 0 + 1)   = 2/3
    # macro = (0.5 + 0.8 + 2/3) / 3 = 0.655555...
    f1 = M.per_label_f1(PREDS, GOLDS)
    assert f1 == pytest.approx({"a": 0.5, "b": 0.8, "c": 2 / 3})
    assert M.macro_f1(PREDS, GOLDS) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # A label that appears neither in golds nor predictions has no F1: it is left out,
    # not averaged in as 0 (a bootstrap resample missing a rare class is not punished).
    assert M.macro_f1(PREDS, GOLDS, labels=["a", "b", "c", "d"]) == pytest.approx(0.6555555)
    # A label predicted but never gold counts (F1 0): preds [a, x] golds [a, a]
    # a: TP1 FP0 FN1 -> 2/3 ; x: TP0 FP1 FN0 -> 0 ; macro 1/3
    assert M.macro_f1(["a", "x"], ["a", "a"]) == pytest.approx(1 / 3)
    assert M.macro_f1([], []) == 0.0


def test_confusion_by_hand():
    # rows gold, columns predicted, order a b c
    assert M.confusion(PREDS, GOLDS, ["a", "b", "c"]) == [
        [1, 0, 0],  # gold a: predicted a once
        [1, 2, 0],  # gold b: a once, b twice
        [1, 0, 1],  # gold c: a once, c once
    ]


# ---------------------------------------------------------------------------- generation


def test_squad_normalisation():
    # lower case, punctuation out, articles out, spaces squeezed
    assert M.normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert M.normalize_answer("An apple a day") == "apple day"


def test_exact_match_by_hand():
    assert M.exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert M.exact_match("Paris, France", "Paris") == 0.0
    # several references: the best one counts
    assert M.exact_match("paris", ["Lyon", "Paris."]) == 1.0


def test_token_f1_by_hand():
    # "the cat sat" -> [cat, sat];  "a cat sat down" -> [cat, sat, down]
    # common 2; P = 2/2 = 1; R = 2/3; F1 = 2 * 1 * 2/3 / (1 + 2/3) = (4/3) / (5/3) = 0.8
    assert M.token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # [x, y, z, w] vs [y, w, v]: common 2; P = 2/4, R = 2/3; F1 = 2*(1/2)(2/3)/(1/2+2/3) = 4/7
    assert M.token_f1("x y z w", "y w v") == pytest.approx(4 / 7)
    # repeated tokens count as a multiset: [x, x, y] vs [x, y, y]: common x1 + y1 = 2
    # P = 2/3, R = 2/3, F1 = 2/3
    assert M.token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    # SQuAD's empty rule: both empty -> 1, one empty -> 0 ("the" normalises to nothing)
    assert M.token_f1("", "") == 1.0
    assert M.token_f1("the", "cat") == 0.0
    assert M.token_f1("nothing shared", "at all") == 0.0
    # best over references: 0.8 beats 0
    assert M.token_f1("the cat sat", ["dog", "a cat sat down"]) == pytest.approx(0.8)


def test_lcs_by_hand():
    # CLRS's example: LCS(ABCBDAB, BDCABA) = 4 (e.g. BCBA)
    assert M.lcs_length("ABCBDAB", "BDCABA") == 4
    assert M.lcs_length("", "abc") == 0
    assert M.lcs_length("abc", "abc") == 3


def test_rouge_l_by_hand():
    # Lin (2004)'s example, reference "police kill the gunman":
    # "police killed the gunman": LCS = police the gunman = 3; P = R = 3/4; F = 0.75
    assert M.rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(0.75)
    # "the gunman kill police": LCS = the gunman = 2; P = R = 2/4; F = 0.5
    assert M.rouge_l("the gunman kill police", "police kill the gunman") == pytest.approx(0.5)
    # unequal lengths: [a, b, c] vs [a, x, b, y, c, z]: LCS 3, P = 1, R = 1/2, F = 2*0.5/1.5 = 2/3
    assert M.rouge_l("a b c", "a x b y c z") == pytest.approx(2 / 3)
    # punctuation and case do not matter to the tokens
    assert M.rouge_l("Police, KILL the gunman.", "police kill the gunman") == 1.0
    assert M.rouge_l("", "") == 1.0 and M.rouge_l("x", "") == 0.0


# ---------------------------------------------------------------------------- language modelling


def test_perplexity_and_bits_per_byte_by_hand():
    # 3 tokens each with p = 1/2: NLL = 3 ln 2; ppl = exp(ln 2) = 2
    assert M.perplexity_from_nll(3 * math.log(2), 3) == pytest.approx(2.0)
    # NLL 8 ln 2 nats = 8 bits over 8 bytes -> 1 bit per byte
    assert M.bits_per_byte(8 * math.log(2), 8) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.perplexity_from_nll(1.0, 0)


# ---------------------------------------------------------------------------- bootstrap


def test_bootstrap_two_items_by_hand():
    # Items [0, 1]. A resample of 2 draws with replacement has mean
    #   0 with probability 1/4 (0,0), 0.5 with 1/2 ((0,1) or (1,0)), 1 with 1/4 (1,1).
    # 95% interval: the 2.5% quantile is 0, the 97.5% quantile is 1.
    assert M.bootstrap_ci([0, 1], n=4000, alpha=0.05) == (0.0, 1.0)
    # alpha 0.6: quantiles 0.3 and 0.7 both fall in the middle mass (0.25 < q < 0.75) -> 0.5
    assert M.bootstrap_ci([0, 1], n=4000, alpha=0.6) == (0.5, 0.5)


def test_bootstrap_constant_and_empty():
    assert M.bootstrap_ci([0.7] * 20) == pytest.approx((0.7, 0.7))
    assert M.bootstrap_ci([]) == (0.0, 0.0)
    with pytest.raises(ValueError):
        M.bootstrap_ci([1, 0], alpha=1.5)


def test_bootstrap_matches_normal_approximation():
    # 400 items, half right: sd of the mean = sqrt(0.5 * 0.5 / 400) = 0.025,
    # so the 95% interval is about 0.5 -/+ 1.96 * 0.025 = [0.451, 0.549].
    lo, hi = M.bootstrap_ci([1, 0] * 200, n=4000, seed=1)
    assert lo == pytest.approx(0.451, abs=0.008) and hi == pytest.approx(0.549, abs=0.008)


def test_bootstrap_is_seeded_and_contains_the_value():
    scores = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    assert M.bootstrap_ci(scores, seed=3) == M.bootstrap_ci(scores, seed=3)
    lo, hi = M.bootstrap_ci(scores)
    assert lo <= 0.7 <= hi
    # more items -> narrower interval
    lo2, hi2 = M.bootstrap_ci(scores * 10)
    assert hi2 - lo2 < hi - lo


def test_bootstrap_of_macro_f1_over_pairs():
    pairs = list(zip(PREDS, GOLDS, strict=True))
    m = M.with_ci(pairs, M.macro_f1_stat())
    assert m["value"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    lo, hi = m["ci"]
    assert 0.0 <= lo <= m["value"] <= hi <= 1.0
    # all right -> every resample has macro-F1 1
    assert M.bootstrap_ci(list(zip(GOLDS, GOLDS, strict=True)), M.macro_f1_stat()) == (1.0, 1.0)


def test_paired_bootstrap_by_hand():
    # identical variants: every resampled difference is 0
    same = M.paired_bootstrap([1, 0, 1, 0], [1, 0, 1, 0])
    assert same["diff"] == 0.0 and same["ci"] == (0.0, 0.0)
    assert not same["distinguishable"] and same["p_value"] == 1.0
    # A right everywhere, B wrong everywhere: every difference is 1
    apart = M.paired_bootstrap([1] * 10, [0] * 10)
    assert apart["diff"] == 1.0 and apart["ci"] == (1.0, 1.0)
    assert apart["distinguishable"] and apart["p_value"] == 0.0


def test_paired_bootstrap_tells_small_from_real_differences():
    base = [1, 0] * 50  # 100 items, accuracy 0.5
    # B fixes 2 of A's mistakes: +0.02, within noise
    b_small = list(base)
    b_small[1] = b_small[3] = 1
    small = M.paired_bootstrap(b_small, base)
    assert small["diff"] == pytest.approx(0.02)
    assert not small["distinguishable"]
    # C fixes 12 mistakes and breaks none: +0.12. Each resampled difference is (fixed items
    # drawn)/100: mean 0.12, sd sqrt(0.12 * 0.88 / 100) = 0.032 -> interval ~[0.06, 0.19], no 0.
    c = list(base)
    for k in range(1, 24, 2):
        c[k] = 1
    big = M.paired_bootstrap(c, base)
    assert big["diff"] == pytest.approx(0.12) and big["distinguishable"]
    assert big["ci"][0] == pytest.approx(0.06, abs=0.02) and big["p_value"] < 0.01
    # Pairing matters: the *unpaired* 95% intervals of 0.50 and 0.62 on 100 items (each about
    # -/+ 0.1) overlap, yet the paired difference is clearly not 0.
    lo_c, _ = M.bootstrap_ci(c)
    _, hi_base = M.bootstrap_ci(base)
    assert lo_c < hi_base
    with pytest.raises(ValueError):
        M.paired_bootstrap([1], [1, 0])


def test_paired_bootstrap_of_macro_f1():
    golds = ["a", "b", "c"] * 10
    good = list(golds)
    bad = ["a"] * 30
    res = M.paired_bootstrap(
        list(zip(good, golds, strict=True)), list(zip(bad, golds, strict=True)), M.macro_f1_stat()
    )
    # good: macro 1. bad: a: TP10 FP20 FN0 -> 20/40 = 0.5; b, c: F1 0 -> macro 0.5/3 = 1/6
    assert res["diff"] == pytest.approx(1 - 1 / 6)
    assert res["distinguishable"]
