"""The ladder's decision and report, on hand-made rung results (no models needed)."""

from __future__ import annotations

import json

from oficina.evals.report import Cost, InferenceCost, RungResult, recommend, write


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
    assert page.count("data:image/png;base64,") == 3 and "Recommendation:" in page
    assert "| lora |" in paths["markdown"].read_text()
