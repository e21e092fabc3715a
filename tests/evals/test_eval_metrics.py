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


# ---------------------------------------------------------------------------- edges and errors
# Each below kills mutants that survived `make mutate` (README, "Test quality"): a boundary, a
# default, a message the user reads, an argument passed on.


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"^3 predictions for 2 gold labels$"):
        M.accuracy(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match=r"^1 predictions for 2 gold labels$"):
        M.per_label_f1(["a"], ["a", "b"])
    with pytest.raises(ValueError, match=r"^no reference answer$"):
        M.exact_match("x", [])
    with pytest.raises(ValueError, match=r"^perplexity needs at least one scored token$"):
        M.perplexity_from_nll(1.0, 0)
    with pytest.raises(ValueError, match=r"^bits per byte needs at least one byte$"):
        M.bits_per_byte(1.0, 0)
    for alpha in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"^alpha must be between 0 and 1$"):
            M.bootstrap_ci([1.0, 0.0], alpha=alpha)
    with pytest.raises(ValueError, match=r"^paired bootstrap needs the same items: 2 vs 1$"):
        M.paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError, match=r"^no test items$"):
        M.classification_baselines(["a"], [], ["a", "b"])


def test_one_token_and_one_byte_are_enough():
    assert M.perplexity_from_nll(math.log(7), 1) == pytest.approx(7.0)
    assert M.bits_per_byte(math.log(2), 1) == pytest.approx(1.0)


def test_confusion_ignores_labels_outside_the_list():
    # ("z", "a") and ("a", "q") name a label outside [a, b]: neither row nor column, not counted
    assert M.confusion(["a", "z", "a", "b"], ["a", "a", "q", "b"], ["a", "b"]) == [[1, 0], [0, 1]]


def test_label_list_restricts_per_label_f1_and_macro_f1():
    # preds [a, z], golds [a, a], labels [a]: only a counts: tp 1, fp 0, fn 1 -> F1 2/3
    # (with z counted too, z's F1 0 would halve the macro mean to 1/3)
    assert M.per_label_f1(["a", "z"], ["a", "a"], ["a"]) == {"a": pytest.approx(2 / 3)}
    assert M.macro_f1(["a", "z"], ["a", "a"], ["a"]) == pytest.approx(2 / 3)
    stat = M.macro_f1_stat(["a"])
    assert stat([("a", "a"), ("z", "a")]) == pytest.approx(2 / 3)
    assert stat([]) == 0.0
    # labels of mixed types are ordered by their text, not compared with each other
    assert list(M.per_label_f1([1, "a"], [1, "a"])) == [1, "a"]


def test_empty_and_zero_overlap_generation_scores():
    assert M.mean([]) == 0.0
    assert M.rouge_l("", "some words") == 0.0 and M.rouge_l("some words", "") == 0.0
    assert M.rouge_l("red fox", "blue cat") == 0.0  # no common word
    assert M.token_f1("", "x") == 0.0 and M.token_f1("x", "") == 0.0
    assert M.token_f1("", "") == 1.0  # SQuAD: both empty
    # LCS by hand: "ABCBDAB" vs "BDCABA" -> 4 (e.g. B C B A), either order
    assert M.lcs_length("ABCBDAB", "BDCABA") == M.lcs_length("BDCABA", "ABCBDAB") == 4
    assert M.lcs_length("ab", "aba") == 2  # a b: needs the cell above-right, not above-left
    # F-beta: P = 1/2, R = 1/4 (pred "a b" vs ref "a x y z", LCS 1); beta 2 ->
    # (1 + 4) * 1/2 * 1/4 / (1/4 + 4 * 1/2) = 0.625 / 2.25
    assert M.rouge_l("a b", "a x y z", beta=2.0) == pytest.approx(0.625 / 2.25)
    assert M.rouge_l("A B", "a b") == 1.0  # case does not matter


ITEMS = [0.13, 0.92, 0.4, 0.71, 0.05, 0.66, 0.38, 0.99, 0.2, 0.57]


def test_defaults_are_1000_resamples_seed_0_and_arguments_are_passed_on():
    assert M.bootstrap_ci(ITEMS) == M.bootstrap_ci(ITEMS, n=1000, seed=0)
    assert M.bootstrap_ci(ITEMS, n=1000) != M.bootstrap_ci(ITEMS, n=1001)
    assert M.bootstrap_ci(ITEMS, seed=0) != M.bootstrap_ci(ITEMS, seed=1)
    w = M.with_ci(ITEMS, n=300, alpha=0.3, seed=4)
    assert w["value"] == pytest.approx(sum(ITEMS) / 10)
    assert tuple(w["ci"]) == M.bootstrap_ci(ITEMS, n=300, alpha=0.3, seed=4)
    assert M.with_ci(ITEMS) == M.with_ci(ITEMS, n=1000, alpha=0.05, seed=0)
    assert M.with_ci(ITEMS, stat=None) == M.with_ci(ITEMS)  # None means the mean
    assert M.with_ci([])["value"] == 0.0
    other = ITEMS[::-1]
    assert M.paired_bootstrap(ITEMS, other) == M.paired_bootstrap(ITEMS, other, n=1000, seed=0)
    assert M.paired_bootstrap(ITEMS, other, stat=None) == M.paired_bootstrap(ITEMS, other)
    assert M.paired_bootstrap(ITEMS, other, seed=3) != M.paired_bootstrap(ITEMS, other, seed=4)


def test_paired_bootstrap_edges_by_hand():
    empty = M.paired_bootstrap([], [])
    assert empty == {
        "diff": 0.0,
        "ci": (0.0, 0.0),
        "distinguishable": False,
        "p_value": 1.0,
        "n": 0,
    }
    one = M.paired_bootstrap([1.0], [0.0])  # every resample is that one item: d = 1
    assert one == {"diff": 1.0, "ci": (1.0, 1.0), "distinguishable": True, "p_value": 0.0, "n": 1}
    # a = [1, 0], b = [0, 0]: a resample's mean diff is 0, 1/2 or 1 with chances 1/4, 1/2, 1/4;
    # P(d <= 0) = 1/4, P(d >= 0) = 1 -> two-sided p = 2 * 1/4 = 1/2
    assert M.paired_bootstrap([1, 0], [0, 0], n=8000)["p_value"] == pytest.approx(0.5, abs=0.03)


def test_classification_baselines_by_hand():
    golds = ["b", "a", "b", "b"]
    b = M.classification_baselines(["b"], golds, ["a", "b"], n=300, alpha=0.3, seed=2)
    maj = b["majority"]
    assert (maj["label"], maj["train_share"], maj["accuracy"]) == ("b", 1.0, 0.75)
    # macro-F1 of always "b": b's F1 = 2*3/(2*3+1) = 6/7, a's 0 -> 3/7
    assert maj["macro_f1"] == pytest.approx(3 / 7)
    assert maj["ci"] == {
        "accuracy": M.with_ci([1.0, 0.0, 1.0, 1.0], n=300, alpha=0.3, seed=2)["ci"],
        "macro_f1": M.with_ci(
            [("b", g) for g in golds], M.macro_f1_stat(["a", "b"]), n=300, alpha=0.3, seed=2
        )["ci"],
    }
    assert b["uniform"]["accuracy"] == 0.5
    assert b == M.classification_baselines(["b"], golds, ["a", "b"], n=300, alpha=0.3, seed=2)
    # with enough items the intervals show the seed and the level were passed on
    many = (golds * 6)[:23]
    got = M.classification_baselines(["b"], many, ["a", "b"], n=300, alpha=0.3, seed=2)
    correct = [float(g == "b") for g in many]
    pairs = [("b", g) for g in many]
    assert got["majority"]["ci"] == {
        "accuracy": M.with_ci(correct, n=300, alpha=0.3, seed=2)["ci"],
        "macro_f1": M.with_ci(pairs, M.macro_f1_stat(["a", "b"]), n=300, alpha=0.3, seed=2)["ci"],
    }
    for other in ({"seed": 0}, {"alpha": 0.05}):
        kw = {"n": 300, "alpha": 0.3, "seed": 2, **other}
        assert got != M.classification_baselines(["b"], many, ["a", "b"], **kw), other
    assert M.classification_baselines(["b"], golds, ["a", "b"]) == M.classification_baselines(
        ["b"], golds, ["a", "b"], n=1000, alpha=0.05, seed=0
    )
    # no training label among the labels: the first label, a share of 0
    none = M.classification_baselines(["x", "y"], golds, ["a", "b"])["majority"]
    assert (none["label"], none["train_share"], none["accuracy"]) == ("a", 0.0, 0.25)


def test_prediction_flags_at_their_boundaries():
    assert M.prediction_flags([], 0.5, (0.4, 0.6), 0.3) == ([], "")
    # 9 of 10 on one label is exactly the 0.9 share: collapsed
    flags, why = M.prediction_flags(["a"] * 9 + ["b"], 0.8, (0.7, 0.9), 0.3)
    assert (flags, why) == (["collapsed"], "predicts 'a' for 9 of 10 items")
    assert M.prediction_flags(["a"] * 4, 0.3, None, 0.3) == (
        ["collapsed"],
        "predicts 'a' for every item — no better than always answering the majority label (0.300)",
    )
    # the interval's low end equal to the majority's score still reaches it
    assert M.prediction_flags(["a", "b"] * 5, 0.5, (0.3, 0.7), 0.3)[0] == [
        "within_interval_of_majority"
    ]
