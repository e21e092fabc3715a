"""A trained rung's budgeted search (``oficina tune`` through the library): it fills the rung's
``search`` with its trials, trains with the best trial's values, adds its cost to the rung's
training cost, reuses the best trial's model only when that trial had the rung's budget, never
reads the test split; ``--quick`` searches nothing.

The tiny random model's scores are never asserted, only what the search must report whatever
they are.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch

# The tiny task of test_ladder_rungs (21 training rows, 3 validation, 6 test) and its context.
from test_ladder_rungs import LORA_PARAMS_PER_RANK, ctx, task_files  # noqa: F401

from oficina.config import load
from oficina.ladder.result import Cost, RungResult
from oficina.ladder.run import LadderConfig
from oficina.ladder.rungs import REGISTRY, CptLora, Distill, Full, Lora


@pytest.mark.parametrize("select_by", ["auto", "loss"])
def test_a_search_fills_its_trials_and_its_cost_is_added(ctx, select_by, monkeypatch):  # noqa: F811
    # A classification task: auto judges trials by validation accuracy (label scoring, higher
    # is better), loss by the validation loss.
    ctx.cfg = ctx.cfg.model_copy(update={"select_by": select_by})
    from oficina.ladder.rungs import Budget

    judged: list[dict] = []  # the summaries the budget check reads (the reused trial's)
    outcome = Budget.outcome
    monkeypatch.setattr(Budget, "outcome", lambda b, s: judged.append(s) or outcome(b, s))
    # 21 rows in batches of 4: 6 steps an epoch; one epoch per trial and for the rung.
    s = Lora.Settings(
        max_epochs=1, batch_size=4, patience=0,
        search={"trials": 3, "lr": [1e-4, 1e-2], "rank": [2, 8]},
    )  # fmt: skip
    r = Lora(s).run(ctx)
    search = r.search
    trials = search["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    for t in trials:
        assert t["state"] == "COMPLETE" and set(t["params"]) == {"lr", "rank"}
        assert 1e-4 <= t["params"]["lr"] <= 1e-2 and 2 <= t["params"]["rank"] <= 8
        assert t["steps"] == 6 and t["flops"] > 0
    if select_by == "loss":
        assert all(t["value"] > 0 for t in trials)
        best = min(trials, key=lambda t: t["value"])
        assert "validation loss" in search["objective"]
    else:  # 3 validation rows: accuracy in thirds, the highest wins
        assert all(round(3 * t["value"]) == pytest.approx(3 * t["value"]) for t in trials)
        top = max(t["value"] for t in trials)
        best = trials[search["best"]]
        assert best["value"] == top
        assert search["objective"].startswith("validation accuracy (labels scored")
        # each trial's curve is the accuracy it was pruned and ranked by
        assert all(0 <= v <= 1 for t in trials for _, v in t["curve"])
    assert search["best"] == best["number"]
    # The rung trains with the best trial's values (the rank shows in what it trained).
    assert r.hyperparameters["lr"] == best["params"]["lr"]
    assert r.hyperparameters["rank"] == best["params"]["rank"]
    assert r.params_trainable == best["params"]["rank"] * LORA_PARAMS_PER_RANK
    # Same data, same budget: the best trial's model is the rung's; nothing is trained again.
    assert f"reused trial #{best['number']}'s model" in search["final"]
    assert search["reused"] is True
    assert f"trials/{best['number']:04d}/model" in r.artifacts["adapter"]
    assert r.training_run["final_cost"] == Cost().model_dump()
    # The trial's per-row validation answers came back from its worker with its summary, one
    # set per validation, for the budget check to pair (none when the loss selects).
    (s,) = judged
    if select_by == "loss":
        assert s["val_answers"] == [] and r.training_run["last_rise"] is None
    else:
        assert [k for k, _ in s["val_answers"]] == [k for k, _ in s["select_curve"]] == [2, 4, 6]
        golds = [row["label"] for row in ctx.val]
        assert all([g for _, g in a] == golds for _, a in s["val_answers"])
        accs = [sum(p == g for p, g in a) / len(a) for _, a in s["val_answers"]]
        assert accs == pytest.approx([v for _, v in s["select_curve"]])
    # The search's cost is the sum of its trials' FLOPs, and it is the rung's training cost.
    cost = Cost(**search["cost"])
    assert cost.flops == pytest.approx(sum(t["flops"] for t in trials))
    # By default the trials train side by side, as many at once as torch has threads.
    w = search["workers"]
    assert w == min(3, torch.get_num_threads())
    pids = {json.loads(x)["worker"] for x in (ctx.out / "search-lora/trials.jsonl").open()}
    assert len(pids) == w and (w > 1) == (f"{socket.gethostname()}:{os.getpid()}" not in pids)
    slack = 0.005 * len(trials)  # seconds are rounded to 0.01
    assert cost.wall_time_s >= max(t["seconds"] for t in trials) - slack > 0
    assert cost.wall_time_s >= sum(t["seconds"] for t in trials) / w - slack
    for t in trials:  # a trial beside others is charged its share of the machine
        assert t["usd"] == pytest.approx(ctx.training_usd(t["seconds"] / w, t["flops"]))
    assert r.training.flops == pytest.approx(cost.flops)
    assert r.training.wall_time_s == pytest.approx(cost.wall_time_s)
    assert r.training.usd == pytest.approx(cost.usd)
    # The other trials' models are deleted; the study's files stay beside the rung.
    kept = sorted(p.name for p in (ctx.out / "search-lora" / "trials").iterdir())
    assert kept == [f"{best['number']:04d}"]
    assert (ctx.out / "search-lora" / "trials.jsonl").is_file()


def test_a_shorter_search_budget_retrains_and_both_costs_count(ctx):  # noqa: F811
    s = Full.Settings(
        max_epochs=1, batch_size=4, patience=0,
        search={"trials": 2, "lr": [1e-5, 1e-3], "max_epochs": 0.5, "workers": 1},
    )  # fmt: skip
    r = Full(s).run(ctx)
    search = r.search
    # workers 1: the trials train one after the other in this process
    rows = [json.loads(x) for x in (ctx.out / "search-full/trials.jsonl").open()]
    assert {r["worker"] for r in rows} == {f"{socket.gethostname()}:{os.getpid()}"}
    assert search["workers"] == 1
    assert [t["steps"] for t in search["trials"]] == [3, 3]  # half an epoch each
    assert "retrained at trial" in search["final"] and "(0.5 epochs)" in search["final"]
    assert r.training_run["steps"] == 6  # the rung's own budget: one epoch
    best = search["trials"][search["best"]]
    assert r.hyperparameters["lr"] == best["params"]["lr"]
    final, found = Cost(**r.training_run["final_cost"]), Cost(**search["cost"])
    assert final.flops > 0 and found.flops > 0
    assert r.training.flops == pytest.approx(final.flops + found.flops)
    assert r.training.wall_time_s == pytest.approx(final.wall_time_s + found.wall_time_s)
    assert r.training.usd == pytest.approx(final.usd + found.usd)
    assert not (ctx.out / "search-full" / "trials").exists() or not list(
        (ctx.out / "search-full" / "trials").iterdir()
    )  # retrained: no trial's model is needed


class Poisoned(list):
    """Test rows that fail the moment anything reads them."""

    def _boom(self, *a, **k):
        raise AssertionError("the search read the test split")

    __iter__ = __len__ = __getitem__ = __bool__ = _boom


def test_the_search_never_reads_the_test_split(ctx):  # noqa: F811
    test_file = ctx.task.path.parent / "test.jsonl"
    test_file.write_text("this is not JSON: any reader of the test split fails\n")
    ctx.test = ctx.task.test = Poisoned()
    s = Lora.Settings(max_epochs=0.5, batch_size=4, search={"trials": 2, "lr": [1e-4, 1e-2]})
    hp, search = Lora(s).hyperparameters(ctx)
    assert (
        len(search["trials"]) == 2 and hp["lr"] == search["trials"][search["best"]]["params"]["lr"]
    )
    assert "test split is never read" in search["objective"]
    # What each trial trained and validated on: the training and validation files only.
    spec = (ctx.out / "search-lora" / "search.yaml").read_text()
    assert "test.jsonl" not in spec and "validation.jsonl" in spec


def test_quick_searches_nothing_and_the_demo_searches(repo_root):
    demo = load(LadderConfig, repo_root / "examples/ladder.yaml", {"out": "x"})
    quick = load(LadderConfig, repo_root / "examples/ladder.yaml", {"out": "x", "quick": True})
    searched = [n for n, cls in REGISTRY.items() if "search" in cls.Settings.model_fields]
    assert searched == ["lora", "full", "cpt_lora", "lora_rag", "distill"]
    assert all(getattr(quick.rungs, n).search.trials == 0 for n in searched)
    # ... nor anneals (2 steps and a validation per trained rung), which the demo does
    assert all(getattr(quick.rungs, n).cooldown_epochs == 0 for n in searched)
    assert demo.rungs.lora.cooldown_epochs == 0.25
    assert demo.rungs.lora.search.trials > 0 and demo.rungs.full.search.trials > 0
    assert demo.rungs.cpt_lora.search.trials > 0 and demo.rungs.distill.search.trials > 0
    assert demo.rungs.lora.search.rank == [4, 16] and demo.rungs.lora.search.max_epochs is None


def test_a_bad_search_range_is_one_line(tmp_path, capsys):
    from oficina.cli import main

    argv = ["ladder", "--data", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "o")]
    code = main([*argv, "--rungs.lora.search.lr", "1e-2", "1e-4"])
    err = capsys.readouterr().err
    assert code == 2 and "low < high" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_distill_searches_its_learning_rate_too(ctx, tiny_lm):  # noqa: F811
    ctx.finetuned = {"full": (str(tiny_lm), None, 0.5)}
    ctx.results.append(RungResult(name="full", training=Cost(flops=1e12)))  # the teacher's
    s = Distill.Settings(
        max_epochs=0.5, batch_size=4, keep_layers=1, search={"trials": 2, "lr": [1e-4, 1e-2]}
    )
    r = Distill(s).run(ctx)
    best = r.search["trials"][r.search["best"]]
    assert len(r.search["trials"]) == 2 and r.hyperparameters["lr"] == best["params"]["lr"]
    assert r.params_total < ctx.base_params() and "reused trial" in r.search["final"]
    # the search (whose best trial is the model) and the teacher's training
    assert r.training.flops == pytest.approx(Cost(**r.search["cost"]).flops + 1e12)


def test_cpt_lora_searches_its_lora_on_the_pretrained_model(ctx):  # noqa: F811
    s = CptLora.Settings(
        max_epochs=1, batch_size=4, patience=0, cpt_steps=1, seq_len=64,
        search={"trials": 2, "lr": [1e-4, 1e-2], "rank": [2, 8]},
    )  # fmt: skip
    r = CptLora(s).run(ctx)
    trials = r.search["trials"]
    best = trials[r.search["best"]]
    assert len(trials) == 2 and r.hyperparameters["rank"] == best["params"]["rank"]
    assert r.params_trainable == best["params"]["rank"] * LORA_PARAMS_PER_RANK
    # The trials' LoRA starts from the continued-pretrained model, pretrained once.
    spec = (ctx.out / "search-cpt_lora" / "search.yaml").read_text()
    assert f"model: {r.artifacts['model']}" in spec and r.artifacts["model"].endswith("/cpt")
    assert "reused trial" in r.search["final"]
    # Its cost: the pretraining (the final training reused the best trial) plus the search.
    cpt = Cost(**r.training_run["final_cost"])
    assert cpt.flops > 0 and cpt.wall_time_s > 0
    assert r.training.flops == pytest.approx(cpt.flops + Cost(**r.search["cost"]).flops)


def test_the_search_judges_trials_from_one_epoch_on(ctx, monkeypatch):  # noqa: F811
    """The pruner's warm-up is one epoch, however often a trial validates: with one validation
    an epoch, the first is judged (tune's default, the second, would be two epochs in), and
    only once it falls below its own best (spare_improving)."""
    import oficina.evals.tune as tune

    seen, real = [], tune._pruner
    monkeypatch.setattr(tune, "_pruner", lambda *a: seen.append(a) or real(*a))
    # 21 rows in batches of 4: 6 steps an epoch.
    for per_epoch, every in ((1, 6), (3, 2)):
        s = Lora.Settings(
            max_epochs=1, batch_size=4, patience=0, evals_per_epoch=per_epoch,
            search={"trials": 2, "lr": [1e-4, 1e-2]},
        )  # fmt: skip
        Lora(s).run(ctx)
        assert seen[-1] == ("median", every, 2, 6, True)  # ... and never while improving
