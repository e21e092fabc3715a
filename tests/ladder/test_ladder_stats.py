"""Honest statistics in the ladder's decision: paired comparisons and ties on hand-made answers.

Every rung here answers 40 two-label items; its correctness per item is written out, so the
expected differences and intervals follow by hand (noted at each assert).
"""

from __future__ import annotations

import pytest

from oficina.ladder.recommend import compare, recommend
from oficina.ladder.result import Cost, InferenceCost, RungResult

N = 40
GOLDS = ["a" if i % 2 else "b" for i in range(N)]


def rung(name, correct, train_usd=0.0, usd_1k=0.0, metric="accuracy") -> RungResult:
    """A measured rung whose answer to item i is right iff correct[i]."""
    preds = [g if ok else ("b" if g == "a" else "a") for g, ok in zip(GOLDS, correct, strict=True)]
    q = sum(correct) / N
    return RungResult(
        name=name,
        quality=q,
        ci=(q - 0.1, q + 0.1),
        metric=metric,
        item_ids=list(range(N)),
        predictions=preds,
        golds=list(GOLDS),
        per_item=[float(ok) for ok in correct],
        training=Cost(usd=train_usd),
        inference=InferenceCost(usd_per_1k_requests=usd_1k),
    )


def right_on(k: int) -> list[bool]:
    """Right on the first k items, wrong on the rest."""
    return [i < k for i in range(N)]


def test_identical_answers_are_tied_with_a_zero_width_interval():
    a = rung("a", right_on(25))
    c = compare(a, rung("b", right_on(25)))
    # Same items resampled for both: every resample's difference is exactly 0.
    assert c["diff"] == 0.0 and c["ci"] == [0.0, 0.0] and c["tied"] and c["n"] == N


def test_opposite_answers_differ_by_one_on_every_resample():
    c = compare(rung("a", [True] * N), rung("b", [False] * N))
    assert c["diff"] == 1.0 and c["ci"] == [1.0, 1.0] and not c["tied"]


def test_one_item_of_forty_is_a_tie():
    # A is right on item 0 only where B is wrong: the difference is (copies of item 0) / 40.
    # Copies ~ Binomial(40, 1/40): P(0) = (39/40)^40 = 0.36 > 2.5% -> lower bound 0 (tied);
    # P(<= 2) = 0.92, P(<= 3) = 0.98 -> upper bound 3/40.
    c = compare(rung("a", right_on(21)), rung("b", [False] + right_on(21)[1:]))
    assert c["diff"] == pytest.approx(1 / 40)
    assert c["ci"] == pytest.approx([0.0, 3 / 40]) and c["tied"]


def test_twenty_items_of_forty_are_a_real_difference():
    # A right on 20 more items: difference = share of those items in the resample, ~0.5 ± 0.16.
    c = compare(rung("a", [True] * N), rung("b", right_on(20)))
    assert c["diff"] == 0.5 and 0.3 < c["ci"][0] < 0.5 < c["ci"][1] < 0.7 and not c["tied"]


def test_macro_f1_comparison_resamples_prediction_gold_pairs():
    a = rung("a", [True] * N, metric="macro_f1")
    # Answers 'a' for every item: F1(a) = 2*20/(2*20+20) = 2/3, F1(b) = 0 -> macro 1/3.
    b = a.model_copy(update={"predictions": ["a"] * N})
    c = compare(a, b, "macro_f1")
    assert c["diff"] == pytest.approx(1 - 1 / 3) and not c["tied"]


def test_rungs_scored_on_other_items_are_not_compared():
    a = rung("a", right_on(20))
    other = a.model_copy(update={"item_ids": list(reversed(range(N)))})
    assert compare(a, other) is None and compare(a, RungResult(name="x", quality=0.5)) is None


def test_cheapest_meeting_target_names_its_statistical_ties():
    # target 0.6. few_shot 27/40 = 0.675 and lora 28/40 = 0.70 differ on one item: tied.
    # Total at 100k requests: few_shot 0 + 0.05*100 = $5.00, lora 0.5 + 0.01*100 = $1.50.
    rs = [
        rung("zero_shot", right_on(8), usd_1k=0.01),  # 0.2: misses, clearly worse
        rung("few_shot", right_on(27), usd_1k=0.05),
        rung("lora", right_on(28), train_usd=0.5, usd_1k=0.01),
    ]
    rec = recommend(rs, target=0.6, requests=100_000)
    assert rec["rung"] == "lora" and rec["met_target"]
    assert rec["tied_with"] == ["few_shot"]
    assert rec["comparisons"]["few_shot"]["tied"] and not rec["comparisons"]["zero_shot"]["tied"]
    assert rec["comparisons"]["few_shot"]["diff"] == pytest.approx(-1 / 40)
    assert "Statistically tied with it on these 40 items" in rec["reasoning"]
    assert (
        "few_shot 0.675" in rec["reasoning"] and "Cheaper rungs miss the target" in rec["reasoning"]
    )
    # At 1k requests few_shot is cheaper ($0.05 vs $0.51): it wins, lora is its tie.
    low = recommend(rs, target=0.6, requests=1_000)
    assert low["rung"] == "few_shot" and low["tied_with"] == ["lora"]


def test_a_cheaper_tie_below_the_target_is_named_not_picked():
    rs = [
        rung("zero_shot", right_on(23)),  # 0.575 < 0.6, free, one item from few_shot's 0.6
        rung("few_shot", right_on(24), usd_1k=0.05),
    ]
    rec = recommend(rs, target=0.6, requests=1000)
    assert rec["rung"] == "few_shot" and rec["tied_with"] == ["zero_shot"]
    assert "zero_shot 0.575" in rec["reasoning"] and "misses the target" in rec["reasoning"]


def test_no_rung_meets_the_target_the_cheapest_tie_of_the_best_is_named():
    # Best: full 0.55 ($3 to train). lora 0.525 differs from it on one item (tied) and costs $0.5.
    # zero_shot 0.2 is far below: not a candidate.
    rs = [
        rung("zero_shot", right_on(8)),
        rung("lora", right_on(21), train_usd=0.5),
        rung("full", right_on(22), train_usd=3.0),
    ]
    rec = recommend(rs, target=0.9, requests=0)
    assert rec["rung"] == "lora" and not rec["met_target"]
    assert rec["tied_with"] == ["full"]
    assert "The best was 'full' at 0.550" in rec["reasoning"]
    assert "'lora' (0.525) cannot be told apart from it on these 40 items" in rec["reasoning"]
    # A cheaper tie that learned nothing (one label for everything) is passed over.
    rs[1].flags = ["collapsed"]
    assert recommend(rs, target=0.9, requests=0)["rung"] == "full"
    # Without a cheaper tie the best itself is named.
    rs[1] = rung("lora", right_on(8), train_usd=0.5)
    assert recommend(rs, target=0.9, requests=0)["rung"] == "full"


def test_a_clearly_better_rung_is_reported_as_a_real_difference():
    rs = [rung("few_shot", right_on(25), usd_1k=0.01), rung("full", [True] * N, train_usd=5.0)]
    rec = recommend(rs, target=0.6, requests=1000)
    assert rec["rung"] == "few_shot" and rec["tied_with"] == []
    assert "'full' is more accurate (1.000; difference +0.375" in rec["reasoning"]


def test_generation_baselines_by_hand():
    from oficina.evals.metrics import generation_baselines

    b = generation_baselines(["yes", "no", "yes", "maybe"], ["yes", "no", "yes it is", "maybe"])
    top = b["most_frequent"]  # 'yes', twice in training
    # exact match: [1, 0, 0, 0]; token F1: [1, 0, 2*1*(1/3)/(1+1/3) = 0.5, 0]
    assert top["label"] == "yes" and top["exact_match"] == 0.25 and top["token_f1"] == 0.375
    assert b["empty"]["exact_match"] == b["empty"]["token_f1"] == 0.0
    assert top["ci"]["token_f1"][0] <= 0.375 <= top["ci"]["token_f1"][1]
