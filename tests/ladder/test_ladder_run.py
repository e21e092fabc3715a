"""The ladder end to end on a tiny model: every rung runs, the report renders in Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import chromium_path

from oficina import measure
from oficina.cli import main


@pytest.mark.integration  # the RAG rung embeds the corpus with the packaged MiniLM
def test_every_rung_runs_and_the_report_renders(tiny_lm, tmp_path, repo_root):
    out = tmp_path / "ladder"
    argv = [
        "ladder", str(repo_root / "examples/ladder.yaml"), "--out", str(out), "--quick",
        "--base-model", str(tiny_lm), "--task", str(repo_root / "examples/demo/task/task.json"),
        "--corpus", str(repo_root / "examples/demo/reference.jsonl"),
        "--limit-test", "6", "--limit-train", "8", "--rungs.few_shot.shots", "1", "--rungs.few_shot_rag.shots", "1",
        "--rungs.lora.max-steps", "2", "--rungs.full.max-steps", "2", "--rungs.cpt_lora.max_steps", "2",
        "--rungs.lora.cooldown_epochs", "0.25",  # --quick skips the anneal; a flag still wins
        "--rungs.cpt_lora.cpt_steps", "2", "--rungs.distill.max-steps", "2", "--rungs.distill.keep_layers", "1",
        "--rungs.lora_rag.enabled", "true", "--rungs.lora_rag.max_steps", "2",
        "--rungs.few_shot_rag.enabled", "true", "--rungs.cpt_lora.enabled", "true",
        "--rungs.rag.enabled", "true",
        "--target", "0.0", "--requests", "0",
    ]  # fmt: skip
    assert main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    by = {r["name"]: r for r in s["rungs"]}
    assert list(by) == [
        "zero_shot",
        "few_shot",
        "rag",
        "few_shot_rag",
        "lora",
        "full",
        "cpt_lora",
        "lora_rag",
        "distill",
        "quantize",
    ]
    assert all(r["status"] == "ok" for r in by.values()), {n: r["reason"] for n, r in by.items()}
    for r in by.values():
        assert 0.0 <= r["quality"] <= 1.0 and r["ci"][0] <= r["quality"] <= r["ci"][1]
    # The seeds' claims, measured: prompting trains nothing, fine-tuning keeps the count,
    # distillation reduces it; prompting pays in prompt tokens.
    base = by["zero_shot"]["parameters"]
    assert by["few_shot"]["params_changed"] == by["rag"]["params_changed"] == 0
    assert by["full"]["parameters"] == by["lora"]["parameters"] == base
    assert by["distill"]["parameters"] < base
    assert (
        by["few_shot"]["inference_cost"]["prompt_tokens_mean"]
        > by["zero_shot"]["inference_cost"]["prompt_tokens_mean"]
    )
    assert (
        by["lora"]["training_cost"]["flops"] > 0 and by["zero_shot"]["training_cost"]["flops"] == 0
    )
    # Each rung's memory is its own span's peak, not the process's: training rungs report a
    # training peak, and no rung's inference peak is the full fine-tune's training peak.
    full_peak = by["full"]["training_cost"]["peak_memory_mb"]
    assert all(by[n]["training_cost"]["peak_memory_mb"] > 0 for n in ("lora", "full", "distill"))
    assert by["zero_shot"]["training_cost"]["peak_memory_mb"] == 0
    assert all(0 < r["inference_cost"]["peak_memory_mb"] for r in by.values())
    assert by["quantize"]["inference_cost"]["peak_memory_mb"] != full_peak
    # What learning nothing scores, and what each rung answered (issue 17).
    maj = s["baselines"]["majority"]
    assert maj["label"] in s["meta"]["labels"] and 0 <= maj["accuracy"] <= 1
    for r in by.values():
        assert sum(r["predicted_label_counts"].values()) == 6
        assert sum(map(sum, r["confusion"])) == 6 and "macro_f1" in r["extra_metrics"]
        one_label = max(r["predicted_label_counts"].values()) >= 0.9 * 6
        assert ("collapsed" in r["flags"]) >= one_label
    # The interface other checks rely on (issue 14): the task, what each rung ran with, ties.
    assert s["task"]["kind"] == "classification" and s["task"]["labels"] == s["meta"]["labels"]
    assert s["task"]["splits"] == {"train": 652, "validation": 120, "test": 155}
    # --quick validates on 16 rows; the 8 training rows are a stratified sample: every label
    # (the file's first 8 rows are one topic's).
    assert s["task"]["used"] == {"train": 8, "validation": 16, "test": 6}
    trained_on = [json.loads(x) for x in (out / "data/train-limited.jsonl").open()]
    assert {r["label"] for r in trained_on} == set(s["task"]["labels"])
    assert (
        s["task"]["used"]["test"] == 6
        and "6 of 155 held-out items" in (out / "summary.md").read_text()
    )
    for r in by.values():
        assert {
            "hyperparameters",
            "search",
            "training_cost",
            "inference_cost",
            "parameters",
        } <= set(r)
        assert r["search"] is None and len(r["predictions"]) == 6
    assert by["lora"]["hyperparameters"]["lr"] > 0 and by["lora"]["hyperparameters"]["rank"] == 8
    assert by["lora"]["training_run"]["steps"] == 2 and by["lora"]["search"] is None
    assert by["few_shot"]["hyperparameters"] == {"shots": 1, "strategy": "similar"}
    # The curves came back from training: a point per step, validation at the end, then the
    # anneal's step (a quarter of a 2-step epoch, rounded up) from the best weights.
    assert [p[0] for p in by["lora"]["loss_curve"]] == [1, 2, 3]
    assert by["lora"]["val_curve"][-1][0] == 2
    assert by["lora"]["training_run"]["cooldown"]["steps"] == 1
    assert by["full"]["training_run"]["cooldown"] is None  # --quick's: no anneal
    assert [p[0] for p in by["full"]["loss_curve"]] == [1, 2]
    assert set(s["tied_with"]) <= set(by) - {s["recommended"]}
    assert set(s["comparisons"]) == set(by) - {s["recommended"]}
    # Target 0 and no traffic: every rung meets the bar and only training costs count, so the
    # rungs that train nothing tie and the simplest of them (zero-shot) is picked.
    assert s["recommended"] == "zero_shot" and s["met_target"]
    # The latency pass timed every rung, each through its own probe (none broke), as served.
    assert s["meta"]["latency"]["rungs"].keys() == by.keys()
    # the precision "auto" chose for this CPU is recorded and shown
    assert s["meta"]["dtype"] == measure.auto_dtype("auto")
    assert f"evaluated in {s['meta']['dtype']}" in (out / "report.html").read_text()
    assert all("error" not in v for v in s["meta"]["latency"]["rungs"].values())
    assert all(r["inference_cost"]["scoring_s_per_item"] > 0 for r in by.values())
    assert "Recommendation: zero_shot" in (out / "summary.md").read_text()

    # Look at the report in headless Chromium and keep a screenshot with the test artifacts.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        page.goto((out / "report.html").as_uri())
        assert page.locator("tr.pick td").first.inner_text() == "zero_shot"
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        # the plots decoded: 3 scatters, the loss curves, validation loss vs training FLOPs
        assert len(widths) == 5 and all(w > 100 for w in widths)
        shot = Path(tmp_path / "ladder-report.png")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 20_000
