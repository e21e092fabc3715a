"""The ladder's recommendation on a fixed set of rungs: the pick, the boundaries (quality equal to
the target meets it; a CI low end equal to it does not "dip"), ties, and the whole reasoning text
written out by hand — the sentence a user acts on.

(While the ladder lives in oficina.evals; the ladder branch moves it to oficina.ladder.)
"""

from __future__ import annotations

from oficina.evals.report import Cost, InferenceCost, RungResult, recommend

COLLAPSED = "predicts 'a' for every item"


def _rung(name, quality=None, ci=None, train_usd=0.0, per_1k=0.0, **kw) -> RungResult:
    return RungResult(
        name=name,
        quality=quality,
        ci=ci,
        training=Cost(usd=train_usd),
        inference=InferenceCost(usd_per_1k_requests=per_1k),
        **kw,
    )


def _ladder() -> list[RungResult]:
    # total cost for 1,000 requests: 0.10, 0.20, 0.55, 2.05
    return [
        _rung("zero_shot", 0.40, (0.30, 0.50), 0.0, 0.10, flags=["collapsed"], flag_text=COLLAPSED),
        _rung("broken", 0.99, status="failed", reason="out of memory"),
        _rung("few_shot", 0.55, None, 0.0, 0.20),
        _rung("rag", status="skipped"),
        _rung("lora", 0.72, (0.62, 0.81), 0.5, 0.05),
        _rung("full", 0.80, (0.75, 0.85), 2.0, 0.05),
    ]


def test_the_cheapest_rung_meeting_the_target_and_every_sentence():
    rec = recommend(_ladder(), 0.70, 1000)
    assert rec == {
        "rung": "lora",
        "met_target": True,
        "reasoning": (
            "'lora' is the cheapest rung that meets the target 0.70: quality 0.720 "
            "(95% CI 0.620–0.810), $0.5000 to train and $0.0500 per 1k requests "
            "($0.55 for 1,000 requests). "
            "Its confidence interval dips below the target (0.620): measure on more held-out "
            "data before relying on it. "
            "Cheaper rungs miss the target: zero_shot 0.400, few_shot 0.550. "
            f"Learned nothing usable: zero_shot {COLLAPSED}. "
            "'full' is more accurate (0.800) but costs $2.05 in total; raise the target if that "
            "margin matters."
        ),
    }


def test_a_quality_equal_to_the_target_meets_it():
    assert recommend(_ladder(), 0.72, 1000)["rung"] == "lora"
    assert recommend(_ladder(), 0.7201, 1000)["rung"] == "full"


def test_requests_change_the_pick():
    # with no requests only training costs: zero_shot and few_shot are free, lora 0.5
    assert recommend(_ladder(), 0.5, 0)["rung"] == "few_shot"
    # 100k requests: few_shot 20.0 against lora 0.5 + 5.0
    assert recommend(_ladder(), 0.5, 100_000)["rung"] == "lora"


def test_a_collapsed_pick_is_called_out_and_a_ci_at_the_target_does_not_dip():
    rec = recommend(_ladder(), 0.30, 1000)
    assert rec["rung"] == "zero_shot"
    assert rec["reasoning"] == (
        "'zero_shot' is the cheapest rung that meets the target 0.30: quality 0.400 "
        "(95% CI 0.300–0.500), $0.0000 to train and $0.1000 per 1k requests "
        "($0.10 for 1,000 requests). "
        f"Beware: 'zero_shot' {COLLAPSED}; a constant answer meets this target. "
        "'full' is more accurate (0.800) but costs $2.05 in total; raise the target if that "
        "margin matters."
    )


def test_none_meeting_names_the_best_and_what_learned_nothing():
    rec = recommend(_ladder(), 0.90, 1000)
    assert rec == {
        "rung": "full",
        "met_target": False,
        "reasoning": (
            "No rung reached the target 0.90. The best was 'full' at 0.800 (95% CI 0.750–0.850). "
            "Add labelled data, train longer, or start from a larger base model. "
            f"zero_shot {COLLAPSED}."
        ),
    }
    no_ci = [_rung("a", 0.5), _rung("b", 0.5)]  # a tie: the earlier rung
    assert recommend(no_ci, 0.9, 10)["reasoning"] == (
        "No rung reached the target 0.90. The best was 'a' at 0.500. Add labelled data, train "
        "longer, or start from a larger base model."
    )


def test_ties_in_cost_go_to_the_earlier_rung_and_nothing_measured_is_said():
    same = [_rung("b", 0.8, None, 1.0), _rung("a", 0.9, None, 1.0)]
    rec = recommend(same, 0.7, 0)
    assert rec["rung"] == "b"
    assert rec["reasoning"].endswith(
        "'a' is more accurate (0.900) but costs $1.00 in total; raise the target if that margin "
        "matters."
    )
    # a cost difference below a millionth of a dollar is a tie too
    assert (
        recommend([_rung("b", 0.8, None, 1.0000001), _rung("a", 0.8, None, 1.0)], 0.7, 0)["rung"]
        == "b"
    )
    assert (
        recommend([_rung("b", 0.8, None, 1.00001), _rung("a", 0.8, None, 1.0)], 0.7, 0)["rung"]
        == "a"
    )
    nothing = {"rung": None, "met_target": False, "reasoning": "no rung produced a quality figure"}
    assert recommend([], 0.5, 10) == nothing
    assert recommend([_rung("x", status="skipped"), _rung("y", 0.9, status="failed")], 0.5, 10) == (
        nothing
    )


def test_lists_join_several_rungs_and_only_cheaper_misses_count():
    rungs = [
        _rung("c1", 0.30, flags=["collapsed"], flag_text="flag one"),
        _rung("c2", 0.35, flags=["collapsed"], flag_text="flag two"),
        _rung("same", 0.50, None, 1.0),  # as cheap as the pick, below the target
        _rung("p", 0.70, None, 1.0),
        _rung("twin", 0.70, None, 3.0),  # as accurate as the pick, dearer: not "more accurate"
        _rung("dear", 0.50, None, 5.0),  # below the target but dearer: not a cheaper miss
    ]
    assert recommend(rungs, 0.6, 0)["reasoning"] == (
        "'p' is the cheapest rung that meets the target 0.60: quality 0.700, $1.0000 to train "
        "and $0.0000 per 1k requests ($1.00 for 0 requests). "
        "Cheaper rungs miss the target: c1 0.300, c2 0.350. "
        "Learned nothing usable: c1 flag one; c2 flag two."
    )
    assert recommend(rungs, 0.9, 0)["reasoning"] == (
        "No rung reached the target 0.90. The best was 'p' at 0.700. Add labelled data, train "
        "longer, or start from a larger base model. c1 flag one. c2 flag two."
    )
