"""The ladder's decision and report, on hand-made rung results (no models needed)."""

from __future__ import annotations

import json

from oficina.ladder.recommend import recommend
from oficina.ladder.report import write
from oficina.ladder.result import Cost, InferenceCost, RungResult


def rung(name, q, train_usd=0.0, usd_1k=0.0, params=100, changed=0, ci=None):
    return RungResult(
        name=name,
        quality=q,
        ci=ci or (q - 0.05, q + 0.05),
        training=Cost(usd=train_usd, wall_time_s=train_usd * 100),
        inference=InferenceCost(
            usd_per_1k_requests=usd_1k, latency_s_per_item=usd_1k / 10 + 0.01, prompt_tokens_mean=50
        ),
        params_total=params,
        params_changed=changed,
    )


def test_cheapest_meeting_target_wins():
    rs = [
        rung("zero_shot", 0.3, 0, 0.01),
        rung("few_shot", 0.65, 0, 0.05),
        rung("lora", 0.8, 0.5, 0.01),
    ]
    # 100k requests: few-shot costs 5.0 in inference, LoRA 0.5 + 1.0 = 1.5 -> LoRA is cheaper overall.
    rec = recommend(rs, target=0.6, requests=100_000)
    assert rec["rung"] == "lora" and rec["met_target"]
    assert "zero_shot 0.300" in rec["reasoning"]
    # At 1k requests the per-request cost hardly matters: few-shot (0.05) beats LoRA (0.51).
    assert recommend(rs, target=0.6, requests=1_000)["rung"] == "few_shot"


def test_tie_goes_to_simpler_rung_and_none_meeting_names_best():
    rs = [rung("zero_shot", 0.7), rung("few_shot", 0.9)]
    assert recommend(rs, 0.6, 10)["rung"] == "zero_shot"
    rec = recommend(rs, 0.95, 10)
    assert (
        rec["rung"] == "few_shot"
        and not rec["met_target"]
        and "No rung reached" in rec["reasoning"]
    )


def test_failed_and_skipped_rungs_are_ignored():
    rs = [RungResult(name="zero_shot", status="failed", reason="x"), rung("lora", 0.7, 1.0)]
    assert recommend(rs, 0.6, 0)["rung"] == "lora"
    assert recommend([RungResult(name="a", status="skipped")], 0.5, 0)["rung"] is None


def test_ci_below_target_is_flagged():
    rs = [rung("few_shot", 0.62, ci=(0.5, 0.74))]
    assert "dips below the target" in recommend(rs, 0.6, 0)["reasoning"]


def test_report_files_and_claims(tmp_path):
    rs = [
        rung("zero_shot", 0.3, params=1000),
        rung("few_shot", 0.5, params=1000),
        rung("lora", 0.7, 0.2, params=1000, changed=0),
        rung("distill", 0.65, 0.1, params=500),
        RungResult(name="quantize", status="skipped", reason="turned off"),
    ]
    rs[2].loss_curve = [(1, 2.0), (2, 1.5)]
    rs[2].hyperparameters = {"lr": 0.002, "rank": 8, "max_epochs": 3.0}
    rs[2].training_run = {
        "rule": "trained in epochs, up to 3 epochs (180 steps, 60 per epoch), validation every 15 "
        "steps, stop after 3 evaluations without a ≥ 1.0% fall of the validation loss, best "
        "checkpoint kept",
        "max_steps": 180, "steps": 105, "stopped": "early stopping", "best_step": 60,
        "best_epoch": 1.0, "best_at_budget": False,
    }  # fmt: skip
    rs[3].hyperparameters = {"lr": 0.0003}
    rs[3].search = {
        "trials": [{"number": 0, "params": {"lr": 1e-3}}, {"number": 1, "params": {"lr": 3e-4}}],
        "space": {"lr": [1e-4, 1e-2]},
        "pruned": 1,
        "trial_steps": 50,
        "cost": {"wall_time_s": 30.0, "usd": 0.001},
        "final": "reused trial #1's model",
    }
    rec = recommend(rs, 0.6, 1000)
    paths = write(
        tmp_path, rs, rec, {"target": 0.6, "base_model": "m", "task": "t", "test_items": 10}
    )
    s = json.loads(paths["json"].read_text())
    assert [r["name"] for r in s["rungs"]] == [
        "zero_shot",
        "few_shot",
        "lora",
        "distill",
        "quantize",
    ]
    assert s["recommended"] == rec["rung"]
    assert s["rungs"][0]["ci"] == [0.25, 0.35]
    assert any("keeps the parameter count" in c and "same" in c for c in s["claims"])
    assert any("student has 500 parameters, 50%" in c for c in s["claims"])
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 4 and "Recommendation:" in page
    assert 'alt="Quality vs total cost"' in page and "Selection rule:" in page
    md = paths["markdown"].read_text()
    assert "| lora |" in md
    assert "- lora: lr=0.002, rank=8, max_epochs=3 — the config's values (no search)" in md
    assert (
        "- lora: trained in epochs, up to 3 epochs (180 steps, 60 per epoch), validation every 15 "
        "steps, stop after 3 evaluations without a ≥ 1.0% fall of the validation loss, best "
        "checkpoint kept; stopped by early stopping at step 105 of 180, best at step 60 (epoch 1.0)"
    ) in md
    assert (
        "- distill: lr=0.0003 — lr chosen by a search of 2 trials on the validation loss (1 "
        "pruned, 50 trial-steps, 30.0s, $0.0010 counted in its training cost); reused trial #1's "
        "model"
    ) in md
    assert s["rungs"][2]["training_run"]["stopped"] == "early stopping"
    assert "What each rung ran with" in page


# ------------------------------------------------------------------ learned nothing? (issue 17)

LABELS = ["a", "b", "c", "d"]


def test_baselines_on_hand_computed_items():
    from oficina.evals.metrics import classification_baselines

    train = ["b"] * 5 + ["a"] * 3 + ["c"] * 2  # majority of the *training* split: b
    golds = ["a", "b", "b", "c", "d", "a", "b", "d"]  # b is 3 of 8 test items
    b = classification_baselines(train, golds, LABELS, seed=0)
    maj = b["majority"]
    assert maj["label"] == "b" and maj["accuracy"] == 3 / 8 and maj["train_share"] == 0.5
    # always 'b': F1(b) = 2*3 / (2*3 + 5 + 0) = 6/11; a, c, d score 0 -> macro 6/11 / 4
    assert abs(maj["macro_f1"] - (6 / 11) / 4) < 1e-12
    assert maj["ci"]["accuracy"][0] <= 3 / 8 <= maj["ci"]["accuracy"][1]
    assert b["uniform"]["accuracy"] == 0.25 and 0 < b["uniform"]["macro_f1"] < 0.5


def test_prediction_flags():
    from oficina.evals.metrics import prediction_flags

    flags, why = prediction_flags(["a"] * 48, 0.312, (0.19, 0.44), 0.312)
    assert flags == ["collapsed"]
    assert "predicts 'a' for every item" in why and "no better than always" in why
    flags, why = prediction_flags(["a"] * 45 + ["b"] * 3, 0.40, (0.3, 0.5), 0.312)
    assert flags[0] == "collapsed" and "45 of 48 items" in why
    # spread over labels, above the majority but its interval reaches it
    spread = ["a", "b", "c", "d"] * 12
    assert prediction_flags(spread, 0.45, (0.30, 0.60), 0.312)[0] == ["within_interval_of_majority"]
    assert prediction_flags(spread, 0.75, (0.62, 0.87), 0.312) == ([], "")
    # below the majority with spread predictions is still "learned nothing"
    assert prediction_flags(spread, 0.20, (0.1, 0.3), 0.312)[0] == ["collapsed"]


class _StubEngine:
    """The engine surface evals.tasks.classify uses, answering by a rule instead of a model."""

    def __init__(self, answer):
        self.answer = answer  # prompt -> the label this engine prefers

    def encode(self, text):
        return list(range(len(text.split())))

    def count_tokens(self, text):
        return len(self.encode(text))

    def loglikelihood(self, requests, batch_size=8):
        return [
            (0.0 if cont.strip() == self.answer(ctx) else -5.0, False) for ctx, cont in requests
        ]


def _stub_rows(n=40):
    return [{"id": i, "text": f"item {i}", "label": LABELS[i % 4]} for i in range(n)]


def _flags_of(engine) -> list[str]:
    import pytest

    from oficina.evals.metrics import classification_baselines, prediction_flags
    from oficina.evals.tasks import classify

    rows = _stub_rows()
    try:
        res = classify(engine, rows, LABELS, "{text}\nAnswer:")
    except (AttributeError, TypeError) as e:  # the scoring kernel's surface is not the stub's
        pytest.fail(f"stub engine does not fit classify: {e}")
    base = classification_baselines([r["label"] for r in rows], res["golds"], LABELS)
    return prediction_flags(
        res["predictions"], res["accuracy"], res["ci"]["accuracy"], base["majority"]["accuracy"]
    )[0]


def test_a_stub_engine_that_always_answers_one_label_is_flagged():
    assert "collapsed" in _flags_of(_StubEngine(lambda ctx: "c"))


def test_a_stub_engine_answering_at_random_is_not_collapsed():
    import random

    rng = random.Random(0)
    assert "collapsed" not in _flags_of(_StubEngine(lambda ctx: rng.choice(LABELS)))


def test_report_shows_baselines_flags_and_confusion(tmp_path):
    from oficina.evals.metrics import classification_baselines

    golds = [LABELS[i % 4] for i in range(8)]
    base = classification_baselines(golds, golds, LABELS)
    collapsed = rung("zero_shot", 0.25)
    collapsed.flags, collapsed.flag_text = ["collapsed"], "predicts 'a' for every item"
    collapsed.predicted_label_counts = {"a": 8, "b": 0, "c": 0, "d": 0}
    collapsed.confusion = [[2, 0, 0, 0], [2, 0, 0, 0], [2, 0, 0, 0], [2, 0, 0, 0]]
    collapsed.extra_metrics = {"accuracy": 0.25, "macro_f1": 0.1}
    good = rung("lora", 0.9, 0.1)
    good.extra_metrics = {"accuracy": 0.9, "macro_f1": 0.88}
    good.confusion = [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 1, 1]]
    rs = [collapsed, good]
    rec = recommend(rs, 0.6, 1000)
    assert "Learned nothing usable: zero_shot predicts 'a' for every item" in rec["reasoning"]
    meta = {"target": 0.6, "metric": "accuracy", "labels": LABELS, "baselines": base}
    paths = write(tmp_path, rs, rec, meta)
    summary = json.loads(paths["json"].read_text())
    assert summary["baselines"]["majority"]["label"] == "a"
    zs = summary["rungs"][0]
    assert zs["flags"] == ["collapsed"] and zs["predicted_label_counts"]["a"] == 8
    assert summary["rungs"][1]["extra_metrics"]["macro_f1"] == 0.88
    md = paths["markdown"].read_text()
    assert "baseline: always 'a'" in md and "macro-F1" in md and "⚠ **zero_shot**" in md
    page = paths["html"].read_text()
    assert "What each rung answered" in page and "gold \\ predicted" in page
    assert page.count('<table class="cm">') == 2


def test_search_trials_table_and_validation_loss_against_cumulative_flops(tmp_path):
    from oficina.ladder.report import flops_curves

    lora = rung("lora", 0.7, 0.2)
    lora.search = {
        "trials": [
            {"number": 0, "params": {"lr": 1e-3, "rank": 8}, "state": "COMPLETE", "value": 0.5,
             "steps": 4, "seconds": 10.0, "flops": 400.0, "curve": [[2, 0.9], [4, 0.5]]},
            {"number": 1, "params": {"lr": 3e-3, "rank": 4}, "state": "PRUNED", "value": None,
             "steps": 2, "seconds": 5.0, "flops": 100.0, "curve": [[2, 1.2]]},
        ],
        "best": 0,
        "reused": True,
        "final": "reused trial #0's model",
    }  # fmt: skip
    lora.val_curve = [(2, 0.9), (4, 0.5)]
    lora.training_run = {"steps": 4, "final_cost": Cost().model_dump()}
    full = rung("full", 0.6, 0.3)  # searched, then trained again at the best values
    full.search = {
        "trials": [{"number": 0, "params": {"lr": 1e-5}, "state": "COMPLETE", "value": 0.8,
                    "steps": 2, "seconds": 3.0, "flops": 50.0, "curve": [[1, 1.0], [2, 0.8]]}],
        "best": 0,
        "reused": False,
        "final": "retrained at trial #0's values",
    }  # fmt: skip
    full.val_curve = [(3, 0.7), (6, 0.6)]
    full.training_run = {"steps": 6, "final_cost": Cost(flops=600.0).model_dump()}

    # Trials follow each other on the x axis: trial 1 starts where trial 0's 400 FLOPs ended.
    assert flops_curves(lora) == [
        ("#0 lr 0.001", [200.0, 400.0], [0.9, 0.5], True),
        ("#1 lr 0.003", [500.0], [1.2], False),
    ]
    # The final training comes after the search's 50 FLOPs, at 100 FLOPs a step.
    assert flops_curves(full)[-1] == ("final", [350.0, 650.0], [0.7, 0.6], True)
    assert flops_curves(full)[0][3] is False  # retrained: the trial is not the model
    assert flops_curves(rung("zero_shot", 0.3)) == []

    rs = [rung("zero_shot", 0.3), lora, full]
    paths = write(tmp_path, rs, recommend(rs, 0.6, 1000), {"target": 0.6, "test_items": 10})
    md = paths["markdown"].read_text()
    assert "| rung | trial | lr | rank | state | val loss | steps | time | chosen |" in md
    assert "| lora | 0 | 0.001 | 8 | COMPLETE | 0.5000 | 4 | 10.0s | yes |" in md
    assert "| lora | 1 | 0.003 | 4 | PRUNED | - | 2 | 5.0s |  |" in md
    assert "| full | 0 | 1e-05 |  | COMPLETE | 0.8000 | 2 | 3.0s | yes |" in md
    page = paths["html"].read_text()
    assert "<h2>Search trials</h2>" in page and "<td>PRUNED</td>" in page
    assert 'alt="Validation loss vs training FLOPs"' in page
    # Trials judged by validation accuracy (a classifier's) say so in the column's name.
    for r in (lora, full):
        r.search = {**r.search, "judged_by": "validation accuracy (labels scored as on the test)"}
    paths = write(tmp_path, rs, recommend(rs, 0.6, 1000), {"target": 0.6, "test_items": 10})
    md = paths["markdown"].read_text()
    assert "| rung | trial | lr | rank | state | val accuracy | steps | time | chosen |" in md
