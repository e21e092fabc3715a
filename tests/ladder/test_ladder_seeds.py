"""Trained rungs over several training seeds (the thorough profile): one result whose quality is
the seeds' mean, item by item, with their spread in the decision, the table, summary.json and
the plot; and on the tiny model, that each seed really trains its own model.

The hand-made rungs answer 40 two-label items; which items each seed gets right is written out,
so every mean, interval and spread below follows by hand.
"""

from __future__ import annotations

import json
from statistics import pstdev

import pytest
from test_ladder_rungs import NO_SEARCH, task_files  # noqa: F401 - a fixture
from test_ladder_stats import GOLDS, N, right_on, rung

from oficina.config import load
from oficina.ladder.context import LadderContext
from oficina.ladder.recommend import compare, recommend
from oficina.ladder.report import table_rows, write
from oficina.ladder.result import Cost, combine_seeds, seed_spread
from oficina.ladder.run import LadderConfig, load_task
from oficina.ladder.rungs import Lora
from oficina.workspace import start_run


def seeded(k_per_seed: list[int], **kw):
    """A rung trained once per seed, seed i right on the first k_per_seed[i] items."""
    runs = []
    for i, k in enumerate(k_per_seed):
        r = rung("lora", right_on(k), **kw)
        r.training = Cost(usd=0.01 * (i + 1), wall_time_s=10.0 * (i + 1))
        r.training_run = {"steps": 10 + i, "best_step": 5 + i}
        runs.append((i, r))
    return combine_seeds(runs, n_boot=500, seed=0)


def test_the_seeds_mean_item_by_item_and_the_first_seeds_training_cost():
    r = seeded([20, 30, 34])
    assert r.quality == pytest.approx((20 + 30 + 34) / 3 / N)
    # Items 0-19: all three right; 20-29: two of three; 30-33: one; 34-39: none.
    assert r.per_item == [1.0] * 20 + [2 / 3] * 10 + [1 / 3] * 4 + [0.0] * 6
    assert sum(r.per_item) / N == pytest.approx(r.quality)
    assert r.ci[0] < r.quality < r.ci[1] and r.ci != (r.quality - 0.1, r.quality + 0.1)
    assert [s["seed"] for s in r.seeds] == [0, 1, 2]
    assert [s["quality"] for s in r.seeds] == [0.5, 0.75, 0.85]
    assert [(s["steps"], s["best_step"]) for s in r.seeds] == [(10, 5), (11, 6), (12, 7)]
    # Deploying trains once: the first seed's cost; the others are kept per seed.
    assert r.training.usd == 0.01 and r.seeds[2]["training_cost"]["usd"] == 0.03
    assert r.predictions == rung("x", right_on(20)).predictions  # the first seed's answers
    sp = seed_spread(r)
    assert sp == {"n": 3, "min": 0.5, "max": 0.85, "sd": pytest.approx(pstdev([0.5, 0.75, 0.85]))}


def test_one_seed_is_the_result_unchanged():
    r = rung("lora", right_on(25))
    assert combine_seeds([(0, r)]) is r and seed_spread(r) is None


def test_macro_f1_takes_the_mean_of_the_seeds_intervals():
    runs = [(i, rung("lora", right_on(k), metric="macro_f1")) for i, k in enumerate([20, 30])]
    runs[0][1].ci, runs[1][1].ci = (0.4, 0.6), (0.6, 0.9)
    r = combine_seeds(runs)
    assert r.quality == pytest.approx(0.625) and r.ci == pytest.approx((0.5, 0.75))
    assert r.per_item == runs[0][1].per_item  # not averaged: macro-F1 reads (prediction, gold)


def test_the_paired_comparison_reads_the_seed_mean_answers():
    # Seeds right on 20 and 40 items: mean 0.75 per item pattern [1]*20 + [0.5]*20.
    r = seeded([20, 40])
    other = rung("few_shot", right_on(30))
    c = compare(r, other, n=500)
    assert c["diff"] == pytest.approx(0.75 - 0.75)
    # Items 20-29: 0.5 vs 1; 30-39: 0.5 vs 0: a zero mean difference, a real spread.
    assert c["ci"][0] < 0 < c["ci"][1] and c["tied"]


def test_the_decision_names_the_spread_and_a_worst_seed_below_the_target():
    r = seeded([20, 30, 34], usd_1k=0.001)  # mean 0.7, seeds 0.5 / 0.75 / 0.85
    dearer = rung("full", right_on(40), train_usd=5.0, usd_1k=0.01)
    rec = recommend([r, dearer], target=0.6, requests=1000, n_boot=200)
    assert rec["rung"] == "lora"
    assert "mean over 3 training seeds (from 0.500 to 0.850, sd 0.147)" in rec["reasoning"]
    assert "seed 0 alone misses the target" in rec["reasoning"]
    rec = recommend([r, dearer], target=0.5, requests=1000, n_boot=200)
    assert "from 0.500 to 0.850" in rec["reasoning"] and "misses the target" not in rec["reasoning"]


def test_the_table_summary_and_plot_show_the_seeds(tmp_path):
    r = seeded([20, 30, 34])
    plain = rung("few_shot", right_on(10))
    rows = table_rows([plain, r])
    assert [row["seeds"] for row in rows] == ["-", "3: 0.500–0.850 (sd 0.147)"]
    assert "seeds" not in table_rows([plain])[0]  # one training each: no column
    rec = recommend([plain, r], target=0.6, requests=0, n_boot=200)
    write(tmp_path, [plain, r], rec, {"task": "t", "metric": "accuracy", "target": 0.6})
    s = json.loads((tmp_path / "summary.json").read_text())
    lora = s["rungs"][1]
    assert [x["quality"] for x in lora["seeds"]] == [0.5, 0.75, 0.85]
    assert lora["seed_spread"]["min"] == 0.5 and lora["quality"] == pytest.approx(0.7)
    assert s["rungs"][0]["seeds"] == [] and s["rungs"][0]["seed_spread"] is None
    assert "3: 0.500–0.850" in (tmp_path / "summary.md").read_text()


def test_the_thorough_profile_and_seed_flags(repo_root, tmp_path, capsys):
    cfg = load(LadderConfig, repo_root / "examples/ladder.yaml", {"out": "x", "thorough": True})
    assert cfg.seeds == [0, 1, 2]
    assert load(LadderConfig, None, {"out": "x"}).seeds is None
    from oficina.cli import main

    assert main(["ladder", "--out", str(tmp_path / "o"), "--seeds", "1", "1"]) == 2
    assert "each training seed once" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_each_seed_trains_its_own_model(tiny_lm, tmp_path, task_files):  # noqa: F811
    data, docs = task_files
    cfg = LadderConfig(
        out=str(tmp_path / "out"), data=str(data), docs=str(docs), base_model=str(tiny_lm),
        seeds=[0, 3],
    )  # fmt: skip
    task, corpus = load_task(cfg)
    per_seed = []

    class Recorded(Lora):
        def run_seed(self, ctx, hp, search, first):
            r = super().run_seed(ctx, hp, search, first)
            per_seed.append(r)
            return r

    with start_run("ladder", cfg) as run:
        ctx = LadderContext(cfg, run, task, corpus)
        r = Recorded(Lora.Settings(max_steps=2, batch_size=4, lr=1e-3, **NO_SEARCH)).run(ctx)
    a, b = per_seed
    # Another seed: another LoRA init and data order, so another training curve.
    assert a.loss_curve != b.loss_curve
    assert a.artifacts["adapter"].endswith("/lora") and b.artifacts["adapter"].endswith(
        "/lora-seed3"
    )
    assert r.artifacts == a.artifacts and ctx.finetuned["lora"][1] == a.artifacts["adapter"]
    assert r.quality == pytest.approx((a.quality + b.quality) / 2)
    assert r.per_item == [
        pytest.approx((x + y) / 2) for x, y in zip(a.per_item, b.per_item, strict=True)
    ]
    assert [s["seed"] for s in r.seeds] == [0, 3]
    assert [s["quality"] for s in r.seeds] == [a.quality, b.quality]
    assert r.training == a.training and r.seeds[1]["training_cost"]["wall_time_s"] > 0
    assert len(GOLDS) == N  # the hand-made items the other tests share
