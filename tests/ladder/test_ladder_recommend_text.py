"""The recommendation's whole reasoning, word for word, on hand-made rungs (one per branch).

A reader acts on this text, so a wrong number, a missing sentence or a swapped bound is a
wrong answer even when the picked rung is right. The rungs are test_ladder_stats's: 40
two-label items, right on the first k. Differences and intervals of the paired bootstrap are
read from ``comparisons`` and formatted here, by hand, the way the text must show them.
"""

from __future__ import annotations

import pytest
from test_ladder_stats import GOLDS, N, right_on, rung

from oficina.evals.metrics import macro_f1_stat, paired_bootstrap
from oficina.ladder.recommend import compare, recommend


def diff(c: dict) -> str:
    return f"difference {c['diff']:+.3f}, 95% CI {c['ci'][0]:+.3f} to {c['ci'][1]:+.3f}"


def test_a_pick_that_meets_the_target_with_every_kind_of_neighbour():
    # target 0.65 at 100,000 requests. Totals: zero_shot $1.00, lora 0.5 + 1.0 = $1.50,
    # few_shot $5.00, full $5.00, distill $10.00.
    distill = rung("distill", right_on(20), train_usd=10.0)
    distill.flags, distill.flag_text = ["collapsed"], "answers 'a' to every item"
    rs = [
        rung("zero_shot", right_on(8), usd_1k=0.01),  # 0.200: cheaper, misses the target
        rung("few_shot", right_on(27), usd_1k=0.05),  # 0.675: one item from lora, tied
        rung("lora", right_on(28), train_usd=0.5, usd_1k=0.01),  # 0.700, CI 0.600-0.800
        rung("full", [True] * N, train_usd=5.0),  # 1.000: really better, dearer
        distill,
    ]
    rec = recommend(rs, target=0.65, requests=100_000)
    c = rec["comparisons"]
    assert rec["rung"] == "lora" and rec["met_target"] is True
    assert rec["tied_with"] == ["few_shot"]
    assert set(c) == {"zero_shot", "few_shot", "full", "distill"}
    assert c["few_shot"]["diff"] == pytest.approx(-1 / 40) and c["full"]["diff"] == pytest.approx(
        0.3
    )
    assert c["few_shot"]["ci"][0] == pytest.approx(-3 / 40) and c["few_shot"]["ci"][1] == 0
    assert rec["reasoning"] == (
        "'lora' is the cheapest rung that meets the target 0.65: quality 0.700 "
        "(95% CI 0.600–0.800), $0.5000 to train and $0.0100 per 1k requests "
        "($1.50 for 100,000 requests). "
        "Its confidence interval dips below the target (0.600): measure on more held-out data "
        "before relying on it. "
        "Statistically tied with it on these 40 items (the difference's interval contains 0): "
        f"few_shot 0.675 ({diff(c['few_shot'])}, $5.00 in total); the tie goes to the cheapest "
        "that meets the target. "
        "Cheaper rungs miss the target: zero_shot 0.200. "
        "Learned nothing usable: distill answers 'a' to every item. "
        f"'full' is more accurate (1.000; {diff(c['full'])}) but costs $5.00 in total; raise "
        "the target if that margin matters."
    )


def test_a_plain_pick_says_only_why_it_wins():
    # One rung, its interval above the target: one sentence, nothing else to say.
    r = rung("zero_shot", right_on(36), usd_1k=0.002)  # 0.900, CI 0.800-1.000
    rec = recommend([r], target=0.7, requests=2_500)
    assert rec == {
        "rung": "zero_shot",
        "met_target": True,
        "reasoning": "'zero_shot' is the cheapest rung that meets the target 0.70: quality 0.900 "
        "(95% CI 0.800–1.000), $0.0000 to train and $0.0020 per 1k requests "
        "($0.01 for 2,500 requests).",
        "tied_with": [],
        "comparisons": {},
    }


def test_no_rung_meets_the_target_and_a_cheaper_tie_is_named():
    rs = [
        rung("zero_shot", right_on(8)),  # 0.200, far below
        rung("lora", right_on(21), train_usd=0.5),  # 0.525, one item from full
        rung("full", right_on(22), train_usd=3.0),  # 0.550, the best
    ]
    rec = recommend(rs, target=0.9, requests=1_000)
    c = rec["comparisons"]
    assert rec["rung"] == "lora" and rec["met_target"] is False and rec["tied_with"] == ["full"]
    vs_best = compare(rs[1], rs[2])
    assert rec["reasoning"] == (
        "No rung reached the target 0.90. The best was 'full' at 0.550 (95% CI 0.450–0.650). "
        f"'lora' (0.525) cannot be told apart from it on these 40 items ({diff(vs_best)}) and "
        "costs less ($0.50 vs $3.00 for 1,000 requests): start from it. "
        "Add labelled data, train longer, or start from a larger base model. "
        "Statistically tied with it on these 40 items (the difference's interval contains 0): "
        f"full 0.550 ({diff(c['full'])}, misses the target)."
    )


def test_when_every_candidate_learned_nothing_the_pick_comes_with_a_warning():
    rs = [rung("lora", right_on(21), train_usd=0.5), rung("full", right_on(22), train_usd=3.0)]
    for r in rs:
        r.flags, r.flag_text = ["collapsed"], "answers 'b' to every item"
    rec = recommend(rs, target=0.9, requests=0)
    assert rec["rung"] == "lora"  # the cheaper of the two, though neither learned anything
    assert rec["reasoning"].endswith(
        " Beware: 'lora' answers 'b' to every item; a constant answer scores as much. "
        "Statistically tied with it on these 40 items (the difference's interval contains 0): "
        f"full 0.550 ({diff(rec['comparisons']['full'])}, misses the target). "
        "Learned nothing usable: full answers 'b' to every item."
    )


def test_the_best_alone_below_the_target_is_named_without_a_cheaper_alternative():
    rs = [rung("zero_shot", right_on(4)), rung("full", right_on(22), train_usd=3.0)]
    rec = recommend(rs, target=0.9, requests=10)
    assert rec["reasoning"] == (
        "No rung reached the target 0.90. The best was 'full' at 0.550 (95% CI 0.450–0.650). "
        "Add labelled data, train longer, or start from a larger base model."
    )
    assert rec["rung"] == "full" and rec["tied_with"] == []


def test_nothing_measured():
    unmeasured = rung("lora", right_on(20))
    unmeasured.quality = None
    assert recommend([unmeasured], target=0.5, requests=1) == {
        "rung": None,
        "met_target": False,
        "reasoning": "no rung produced a quality figure",
        "tied_with": [],
        "comparisons": {},
    }


def test_compare_passes_its_resamples_and_seed_to_the_paired_bootstrap():
    a, b = rung("a", right_on(30)), rung("b", right_on(24))
    ref = paired_bootstrap(a.per_item, b.per_item, None, n=57, seed=11)
    got = compare(a, b, n=57, seed=11)
    assert got == {
        "diff": ref["diff"],
        "ci": list(ref["ci"]),
        "tied": not ref["distinguishable"],
        "p_value": ref["p_value"],
        "n": ref["n"],
    }
    assert 0.0 <= got["p_value"] <= 1.0
    # The default is 1000 resamples with seed 0.
    assert compare(a, b) == compare(a, b, n=1000, seed=0)
    ref0 = paired_bootstrap(a.per_item, b.per_item, None, n=1000, seed=0)
    assert compare(a, b)["ci"] == list(ref0["ci"])


def test_macro_f1_needs_the_same_golds_accuracy_only_the_same_items():
    a = rung("a", right_on(30), metric="macro_f1")
    b = rung("b", right_on(24), metric="macro_f1")
    pairs = list(zip(a.predictions, a.golds, strict=True))
    ref = paired_bootstrap(
        pairs, list(zip(b.predictions, b.golds, strict=True)), macro_f1_stat(), n=200, seed=3
    )
    assert compare(a, b, "macro_f1", n=200, seed=3)["ci"] == list(ref["ci"])
    other = rung("b", right_on(24))
    other.golds = ["a"] * N  # the same items, other gold labels
    assert compare(a, other, "macro_f1") is None
    # accuracy resamples per-item scores only: other golds do not matter to it.
    assert compare(a, other, "accuracy") is not None
    assert GOLDS != other.golds


def test_several_neighbours_of_each_kind_are_listed_in_order():
    # target 0.6 at 1,000 requests. Totals: zero_shot $0.10, rag $0.20, few_shot $2.00, lora
    # $1.00 (the pick), cpt_lora $1.05, full $4.00, big $5.00, distill $9.00, quantize $9.50.
    def collapsed(r):
        r.flags, r.flag_text = ["collapsed"], "answers 'a' to every item"
        return r

    rs = [
        rung("zero_shot", right_on(8), usd_1k=0.1),  # 0.200
        rung("rag", right_on(10), usd_1k=0.2),  # 0.250
        rung("few_shot", right_on(27), usd_1k=2.0),  # 0.675, tied
        rung("lora", right_on(28), train_usd=1.0),  # 0.700 (CI from 0.600: no dip), the pick
        rung("cpt_lora", right_on(29), train_usd=1.05),  # 0.725, tied
        rung("full", right_on(38), train_usd=4.0),  # 0.950, better
        rung("big", [True] * N, train_usd=5.0),  # 1.000, better: the one named
        collapsed(rung("distill", right_on(20), train_usd=9.0)),
        collapsed(rung("quantize", right_on(19), train_usd=9.5)),
    ]
    rec = recommend(rs, target=0.6, requests=1_000)
    c = rec["comparisons"]
    assert rec["rung"] == "lora" and rec["tied_with"] == ["few_shot", "cpt_lora"]
    assert rec["reasoning"] == (
        "'lora' is the cheapest rung that meets the target 0.60: quality 0.700 "
        "(95% CI 0.600–0.800), $1.0000 to train and $0.0000 per 1k requests "
        "($1.00 for 1,000 requests). "
        "Statistically tied with it on these 40 items (the difference's interval contains 0): "
        f"few_shot 0.675 ({diff(c['few_shot'])}, $2.00 in total); "
        f"cpt_lora 0.725 ({diff(c['cpt_lora'])}, $1.05 in total); the tie goes to the cheapest "
        "that meets the target. "
        "Cheaper rungs miss the target: zero_shot 0.200, rag 0.250. "
        "Learned nothing usable: distill answers 'a' to every item; quantize answers 'a' to "
        "every item. "
        f"'big' is more accurate (1.000; {diff(c['big'])}) but costs $5.00 in total; raise "
        "the target if that margin matters."
    )


def test_boundaries_of_the_target_and_of_cost():
    # The pick's interval starts exactly at the target: no "dips below" sentence. A tied rung
    # exactly at the target meets it. A rung as dear as the pick is not "cheaper".
    pick = rung("lora", right_on(28), train_usd=1.0)  # 0.700
    pick.ci = (0.6, 0.8)
    at_target = rung("few_shot", right_on(27), usd_1k=2.0)  # 0.675
    same_cost = rung("rag", right_on(8), usd_1k=1.0)  # 0.200, $1.00 like the pick
    rec = recommend([same_cost, at_target, pick], target=0.675, requests=1_000)
    assert rec["rung"] == "lora"  # $1.00 vs few_shot's $2.00
    assert rec["reasoning"] == (
        "'lora' is the cheapest rung that meets the target 0.68: quality 0.700 "
        "(95% CI 0.600–0.800), $1.0000 to train and $0.0000 per 1k requests "
        "($1.00 for 1,000 requests). "
        "Its confidence interval dips below the target (0.600): measure on more held-out data "
        "before relying on it. "
        "Statistically tied with it on these 40 items (the difference's interval contains 0): "
        f"few_shot 0.675 ({diff(rec['comparisons']['few_shot'])}, $2.00 in total); the tie goes "
        "to the cheapest that meets the target."
    )
    exactly = recommend([pick], target=0.6, requests=1_000)["reasoning"]
    assert "dips below" not in exactly and "(95% CI 0.600–0.800)" in exactly
    # No interval known: the quality alone, no interval text, no dip sentence.
    pick.ci = None
    assert recommend([pick], target=0.6, requests=1_000)["reasoning"] == (
        "'lora' is the cheapest rung that meets the target 0.60: quality 0.700, $1.0000 to train "
        "and $0.0000 per 1k requests ($1.00 for 1,000 requests)."
    )


def test_costs_are_compared_to_the_micro_dollar_and_equal_costs_go_to_the_simpler_rung():
    a = rung("few_shot", right_on(30), usd_1k=0.4)  # $0.40 at 1,000 requests
    b = rung("lora", right_on(30), train_usd=0.3)  # $0.30
    assert recommend([a, b], target=0.5, requests=1_000)["rung"] == "lora"
    b.training.usd = 0.4  # equal cost: the earlier (simpler) rung
    assert recommend([a, b], target=0.5, requests=1_000)["rung"] == "few_shot"
    # The best of two equal qualities below the target is the simpler one too.
    rec = recommend([a, b], target=0.9, requests=1_000)
    assert "The best was 'few_shot' at 0.750" in rec["reasoning"]


def test_the_most_accurate_pick_mentions_no_better_rung():
    rs = [rung("zero_shot", right_on(8)), rung("lora", right_on(36), train_usd=1.0)]
    rec = recommend(rs, target=0.7, requests=0)
    assert rec["reasoning"].endswith("Cheaper rungs miss the target: zero_shot 0.200.")


def test_a_better_rung_scored_on_other_items_is_named_without_a_difference():
    pick = rung("lora", right_on(36), train_usd=1.0)
    other = rung("full", [True] * N, train_usd=5.0)
    other.item_ids = list(range(100, 100 + N))
    rec = recommend([pick, other], target=0.7, requests=0)
    assert rec["comparisons"] == {}
    assert rec["reasoning"].endswith(
        "'full' is more accurate (1.000) but costs $5.00 in total; raise the target if that "
        "margin matters."
    )


def test_recommend_compares_with_its_metric_resamples_and_seed():
    rs = [
        rung("few_shot", right_on(26), usd_1k=1.0, metric="macro_f1"),
        rung("lora", right_on(30), metric="macro_f1"),
    ]
    rec = recommend(rs, target=0.5, requests=1_000)
    assert rec["comparisons"]["few_shot"] == compare(rs[0], rs[1], "macro_f1", n=1000, seed=0)
    assert rec["comparisons"]["few_shot"] != compare(rs[0], rs[1], "accuracy", n=1000, seed=0)
    rec = recommend(rs, target=0.5, requests=1_000, n_boot=57, seed=11)
    assert rec["comparisons"]["few_shot"] == compare(rs[0], rs[1], "macro_f1", n=57, seed=11)


def test_a_more_accurate_but_tied_rung_is_a_tie_not_a_better_rung():
    rs = [rung("lora", right_on(28), train_usd=1.0), rung("full", right_on(29), train_usd=4.0)]
    rec = recommend(rs, target=0.6, requests=0)
    assert rec["rung"] == "lora" and rec["tied_with"] == ["full"]
    assert "more accurate" not in rec["reasoning"]
