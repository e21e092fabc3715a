"""Each rung on the tiny random model, alone, through its one interface (``run(context)``); the
registry that derives the config schema, order and quick profile; ``--data`` in one command.

A tiny task (30 passages of the Python reference, three labels) is split by the ladder itself;
each rung test trains or scores for a few seconds. What the random model answers is never
asserted, only what the rung must report whatever it answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from pydoc_data.topics import topics

import pytest
from helpers import write_jsonl

from oficina.cli import main
from oficina.config import load
from oficina.evals.metrics import exact_match
from oficina.ladder.context import LadderContext
from oficina.ladder.result import Cost
from oficina.ladder.run import QUICK, LadderConfig, Rungs, load_task
from oficina.ladder.rungs import (
    REGISTRY,
    CptLora,
    Distill,
    FewShot,
    FewShotRag,
    Full,
    Lora,
    Quantize,
    Rag,
    ZeroShot,
)
from oficina.workspace import start_run

LABELS = ["alpha", "beta", "gamma"]
TEXTS = [" ".join(t.split())[:240] for t in list(topics.values())[:30]]
# LoRA on every linear layer of the tiny Llama (hidden 64, 4 heads of 16, 2 KV heads -> k, v
# out 32; MLP 128): attention r * ((64+64) + (64+32) + (64+32) + (64+64)) = 448 r, MLP
# r * ((64+128) + (64+128) + (128+64)) = 576 r per layer, 2 layers.
LORA_PARAMS_PER_RANK = 2 * (448 + 576)


@pytest.fixture
def task_files(tmp_path):
    data = write_jsonl(
        tmp_path / "mine.jsonl",
        [{"text": t, "label": LABELS[i % 3]} for i, t in enumerate(TEXTS)],
    )
    docs = write_jsonl(
        tmp_path / "docs.jsonl",
        [{"id": k, "title": k, "text": v[:2000]} for k, v in list(topics.items())[:6]],
    )
    return data, docs


@pytest.fixture
def ctx(tiny_lm, tmp_path, task_files):
    data, docs = task_files
    # float32, not `auto`: on an AVX-512 BF16 or AMX CPU `auto` is bfloat16, whose rounding
    # differs between paths that must agree (W + BA merged vs apart: 2.5e-4 relative; the
    # validation hook's batches vs evaluate's: 2e-5 at OFICINA_TEST_SEED=3), so a verdict would
    # depend on the CPU. `auto` itself is tested below and in test_ladder_run.py.
    cfg = LadderConfig(
        out=str(tmp_path / "out"),
        data=str(data),
        docs=str(docs),
        base_model=str(tiny_lm),
        dtype="float32",
    )
    task, corpus = load_task(cfg)
    with start_run("ladder", cfg) as run:
        yield LadderContext(cfg, run, task, corpus)


def check_measured(r, ctx) -> None:
    """What every measured rung reports, whatever the model answered."""
    assert r.status == "ok" and len(r.predictions) == len(ctx.test) == 6
    assert r.golds == [row["label"] for row in ctx.test]
    assert r.quality == sum(p == g for p, g in zip(r.predictions, r.golds, strict=True)) / 6
    assert r.ci[0] <= r.quality <= r.ci[1]
    assert sum(r.predicted_label_counts.values()) == 6 and sum(map(sum, r.confusion)) == 6
    assert r.inference.latency_s_per_item > 0 and r.inference.prompt_tokens_mean > 0


def test_the_registry_derives_schema_order_quick_profile_and_texts(repo_root):
    assert list(REGISTRY) == [
        "zero_shot", "few_shot", "rag", "few_shot_rag", "lora", "full", "cpt_lora", "lora_rag",
        "distill", "quantize",
    ]  # fmt: skip
    assert list(Rungs.model_fields) == list(REGISTRY)
    cfg = LadderConfig(out="x")
    for name, cls in REGISTRY.items():
        assert type(getattr(cfg.rungs, name)) is cls.Settings
        assert Rungs.model_fields[name].description == cls.description
        cls.Settings(**cls.quick)  # every quick value is a valid setting of its rung
        assert QUICK["rungs"].get(name, {}) == cls.quick
    assert cfg.rungs.full.lr == 3e-5 and cfg.rungs.distill.lr == 3e-4  # per-rung defaults
    demo = load(LadderConfig, repo_root / "examples/ladder.yaml", {"out": "x"})
    assert demo.rungs.lora.rank == 8 and demo.limit_test is None  # the whole test split
    quick = load(LadderConfig, repo_root / "examples/ladder.yaml", {"out": "x", "quick": True})
    assert quick.rungs.lora.max_steps == Lora.quick["max_steps"] and quick.limit_test == 16


@pytest.mark.parametrize("native", [True, False])
def test_the_ladder_evaluates_in_bf16_only_where_the_cpu_has_it(monkeypatch, native):
    from oficina import measure

    monkeypatch.setattr(measure, "_FAST_BF16", native)
    assert LadderConfig(out="x").dtype == ("bfloat16" if native else "float32")
    assert LadderConfig(out="x", dtype="bfloat16").dtype == "bfloat16"
    assert LadderConfig(out="x", dtype="float32").dtype == "float32"


def test_zero_shot(ctx):
    r = ZeroShot(ZeroShot.Settings()).run(ctx)
    check_measured(r, ctx)
    assert r.params_changed == 0 and r.training.usd == 0 and r.hyperparameters == {}
    assert r.params_total == ctx.base_params() and r.search is None


def test_few_shot_pays_in_prompt_tokens(ctx):
    zero = ZeroShot(ZeroShot.Settings()).run(ctx)
    r = FewShot(FewShot.Settings(shots=2, strategy="fixed")).run(ctx)
    check_measured(r, ctx)
    assert r.hyperparameters == {"shots": 2, "strategy": "fixed"}
    assert r.inference.prompt_tokens_mean > zero.inference.prompt_tokens_mean
    assert r.params_changed == 0 and r.data["labelled_examples"] == len(ctx.train) == 21


@pytest.mark.integration  # embeds the documents with the packaged MiniLM
def test_rag_reads_the_documents(ctx):
    zero = ZeroShot(ZeroShot.Settings()).run(ctx)
    r = Rag(Rag.Settings(k=1, mode="bm25", precision="bf16")).run(ctx)
    check_measured(r, ctx)
    assert r.data["corpus_documents"] == 6 and r.data["chunks"] >= 6
    assert r.inference.prompt_tokens_mean > zero.inference.prompt_tokens_mean
    assert r.training.wall_time_s > 0 and Path(r.artifacts["index"]).is_dir()


@pytest.mark.integration  # embeds the documents with the packaged MiniLM
def test_few_shot_rag_shows_examples_and_passages(ctx):
    few = FewShot(FewShot.Settings(shots=2, strategy="fixed")).run(ctx)
    rag = Rag(Rag.Settings(k=1, mode="bm25", precision="bf16")).run(ctx)
    s = FewShotRag.Settings(shots=2, strategy="fixed", k=1, mode="bm25", precision="bf16")
    r = FewShotRag(s).run(ctx)
    check_measured(r, ctx)
    # Its prompt holds the few-shot examples and the passages: longer than either alone.
    assert r.inference.prompt_tokens_mean > max(
        few.inference.prompt_tokens_mean, rag.inference.prompt_tokens_mean
    )
    assert r.training == rag.training  # the same index: its one-off cost, counted once measured
    assert r.data["labelled_examples"] == 21 and r.data["corpus_documents"] == 6


NO_SEARCH = {"search": {"trials": 0}}


def test_lora_returns_its_curves_and_what_it_trained_with(ctx):
    r = Lora(Lora.Settings(max_steps=2, batch_size=4, lr=1e-3, rank=8, **NO_SEARCH)).run(ctx)
    check_measured(r, ctx)
    assert r.hyperparameters == {
        "max_epochs": 3.0, "max_steps": 2, "lr": 1e-3, "batch_size": 4, "evals_per_epoch": 4,
        "patience": 3, "min_delta": 0.01, "rank": 8, "alpha": 16, "schedule": "constant",
        "cooldown_epochs": 0.25,
    }  # fmt: skip
    assert r.search is None
    # 21 rows in batches of 4: 6 steps an epoch, validated every 2; capped at 2 steps.
    t = r.training_run
    assert (t["steps"], t["max_steps"], t["stopped"], t["best_step"]) == (2, 2, "budget", 2)
    assert (
        "up to 3 epochs (2 steps, 6 per epoch), learning rate constant after a 0.25-epoch "
        in t["rule"]
    )
    assert "warm-up, validation every 2 steps" in t["rule"]
    assert t["rule"].endswith(
        "validation every 2 steps, stop after 3 evaluations (1 epoch) without a ≥ 1.0% rise of the "
        "validation accuracy, best checkpoint kept by validation accuracy (labels scored as on "
        "the test; ties to the lower loss), then annealed 2 steps (rate falling linearly to 0) "
        "and kept if the validation accuracy rises"
    )
    assert (
        "stop after 3 evaluations (1 epoch) without a ≥ 1.0% rise of the validation accuracy"
        in t["rule"]
    )
    # A classifier's checkpoint is picked by its validation accuracy (label scoring): one value
    # per validation, each a share of the validation rows; the value kept is the best step's,
    # or the anneal's when it was kept.
    assert t["select_by"] == "accuracy" and ctx.select_by == "accuracy"
    assert [s for s, _ in r.select_curve] == [s for s, _ in r.val_curve]
    assert all(
        round(v * len(ctx.val)) == pytest.approx(v * len(ctx.val)) for _, v in r.select_curve
    )
    kept = t["cooldown"]["accuracy"] if t["cooldown"]["kept"] else dict(r.select_curve)[2]
    assert t["best_value"] == kept
    assert r.training.wall_time_s == t["final_cost"]["wall_time_s"] > 0  # no search to add
    # One training-loss point per step and a validation point at the end, from the trainer;
    # then the 2 annealing steps (a quarter of a 6-step epoch, rounded up) from the best weights.
    assert [s for s, _ in r.loss_curve] == [1, 2, 3, 4] and r.val_curve[-1][0] == 2
    assert t["cooldown"]["steps"] == 2 and t["cooldown"]["from_step"] == 2
    assert r.params_trainable == r.params_changed == 8 * LORA_PARAMS_PER_RANK
    assert r.params_total == ctx.base_params() and r.training.flops > 0
    assert ctx.finetuned["lora"][:2] == (ctx.cfg.base_model, r.artifacts["adapter"])
    # Trained without LoRA dropout (its masks cost ~10-20% of a CPU step; issue 14): the saved
    # adapter's config says what it trained with.
    saved = json.loads((Path(r.artifacts["adapter"]) / "adapter_config.json").read_text())
    assert saved["lora_dropout"] == 0.0 and saved["r"] == 8


def test_lora_is_scored_as_served_merged_into_its_base(ctx, monkeypatch):
    """The quality pass asks the model a deployment serves (the adapter merged, loaded from a
    folder), not PEFT's unmerged layers: same answers, the base's parameters, no adapter."""
    asked = []
    evaluate = LadderContext.evaluate

    def spy(self, engine, *a, **k):
        asked.append(engine)
        return evaluate(self, engine, *a, **k)

    monkeypatch.setattr(LadderContext, "evaluate", spy)
    # ctx scores in float32: bf16's rounding of W + BA merged vs apart (2.5e-4 relative) is not
    # separable by a fixed tolerance from a small adapter's effect on a tiny random model
    assert ctx.cfg.dtype == "float32"
    s = Lora.Settings(max_steps=2, batch_size=4, lr=1e-2, cooldown_epochs=0, **NO_SEARCH)
    r = Lora(s).run(ctx)
    (engine,) = asked
    assert not any("lora" in n for n, _ in engine.model.named_modules())
    assert not list(ctx.out.glob("lora-served-*"))  # the merged folder does not stay behind
    # The adapted model's answers, not the base's: its label scores are base + adapter's.
    adapted = ctx.engine(ctx.cfg.base_model, adapter=r.artifacts["adapter"])
    plain, want, got = (
        sum(ctx.score(e, ctx.test)["scores"], []) for e in (ctx.base_engine(), adapted, engine)
    )
    assert got == pytest.approx(want, abs=1e-4) and got != pytest.approx(plain, abs=1e-4)
    assert r.predictions == ctx.score(engine, ctx.test)["predictions"]


def test_a_trained_rung_takes_its_hyperparameters_from_a_search(ctx):
    """The seam a hyperparameter search fills: what it returns is what the rung trains with."""
    trials = [{"lr": 1e-3, "rank": 2, "val_loss": 1.5}, {"lr": 3e-4, "rank": 8, "val_loss": 1.9}]

    class SearchedLora(Lora):
        def hyperparameters(self, ctx):
            record = {"trials": trials, "cost": Cost().model_dump()}
            return {**self.settings_used(), "lr": 1e-3, "rank": 2}, record

    r = SearchedLora(Lora.Settings(max_steps=2, batch_size=4, rank=8)).run(ctx)
    assert r.search == {"trials": trials, "cost": Cost().model_dump()}
    assert r.hyperparameters["rank"] == 2
    assert r.params_trainable == 2 * LORA_PARAMS_PER_RANK  # trained at the searched rank


def test_full_changes_every_parameter(ctx):
    r = Full(Full.Settings(max_steps=2, batch_size=4, **NO_SEARCH)).run(ctx)
    check_measured(r, ctx)
    assert r.params_changed == r.params_total == ctx.base_params()
    assert ctx.finetuned["full"][1] is None and r.loss_curve and r.hyperparameters["lr"] == 3e-5


def test_cpt_lora_pretrains_on_the_documents_then_adapts(ctx):
    r = CptLora(
        CptLora.Settings(max_steps=2, batch_size=4, cpt_steps=1, seq_len=64, **NO_SEARCH)
    ).run(ctx)
    check_measured(r, ctx)
    assert r.data["corpus_tokens"] > 0 and Path(r.artifacts["model"]).is_dir()
    assert r.params_changed == ctx.base_params()  # continued pretraining moves every weight
    assert r.params_trainable == 8 * LORA_PARAMS_PER_RANK and r.params_total == ctx.base_params()
    assert r.hyperparameters["cpt_steps"] == 1
    assert [s for s, _ in r.loss_curve] == [1, 2, 3, 4]  # 2 steps, then 2 annealing


def _finished(name: str, usd: float, seconds: float, flops: float, peak_mb: float):
    """A finished trained rung's result, as the ladder keeps it, with a known training cost."""
    from oficina.ladder.result import RungResult

    cost = Cost(wall_time_s=seconds, flops=flops, peak_memory_mb=peak_mb, usd=usd)
    return RungResult(name=name, training=cost)


def test_distill_shrinks_the_best_fine_tuned_model_and_pays_for_it(ctx, tiny_lm):
    ctx.finetuned = {"lora": (str(tiny_lm), None, 0.2), "full": (str(tiny_lm), None, 0.5)}
    ctx.results += [
        _finished("lora", 1.0, 100.0, 1e9, 10.0),
        _finished("full", 7.0, 700.0, 7e9, 1e6),
    ]
    r = Distill(Distill.Settings(max_steps=2, batch_size=4, keep_layers=1, **NO_SEARCH)).run(ctx)
    check_measured(r, ctx)
    assert r.params_total < ctx.base_params() and r.artifacts["teacher"] == str(tiny_lm)
    # deploying the student means training its teacher (the best: full) first
    own = Cost(**r.training_run["final_cost"])
    assert r.built_on == "full" and "taught by full" in r.description
    assert r.training.usd == pytest.approx(own.usd + 7.0)
    assert r.training.wall_time_s == pytest.approx(own.wall_time_s + 700.0)
    assert r.training.flops == pytest.approx(own.flops + 7e9) and own.flops > 0
    assert r.training.peak_memory_mb == 1e6  # the higher peak of the two


def test_quantize_the_base_when_nothing_was_trained(ctx):
    r = Quantize(Quantize.Settings()).run(ctx)
    check_measured(r, ctx)
    assert "from zero_shot" in r.description and r.params_total == ctx.base_params()
    assert r.extra_metrics["weights_mb"] < r.extra_metrics["float_weights_mb"]
    assert r.built_on is None and 0 < r.training.wall_time_s < 60


def test_quantize_pays_for_the_fine_tune_it_quantizes(ctx, tiny_lm):
    ctx.finetuned = {"lora": (str(tiny_lm), None, 0.6), "full": (str(tiny_lm), None, 0.5)}
    ctx.results += [
        _finished("lora", 3.0, 300.0, 3e9, 10.0),
        _finished("full", 7.0, 700.0, 7e9, 10.0),
    ]
    r = Quantize(Quantize.Settings()).run(ctx)
    check_measured(r, ctx)
    assert r.built_on == "lora" and "from lora" in r.description
    assert 3.0 < r.training.usd < 3.01 and 300.0 < r.training.wall_time_s < 360.0
    assert r.training.flops == 3e9


def test_question_answer_data_runs_the_prompting_and_trained_rungs(tiny_lm, tmp_path, monkeypatch):
    """A generation task: answers generated and scored by exact match and token F1, by the
    prompting rungs and the trained ones (tests/ladder/test_ladder_generation.py: what they
    train on); a rung declaring other kinds is skipped, saying so; the baselines are the empty
    and the most frequent answer."""
    rows = [{"question": f"Which topic is this: {t[:80]}?", "answer": "the reference"}
            for t in TEXTS[:20]]  # fmt: skip
    rows += [{"question": f"What does {k} cover?", "answer": k} for k in list(topics)[30:40]]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    out = tmp_path / "qa"
    monkeypatch.setattr(Full, "kinds", ("classification",))
    argv = [
        "ladder", "--data", str(data), "--out", str(out), "--base-model", str(tiny_lm),
        "--rungs.few_shot.strategy", "fixed", "--rungs.few_shot.shots", "2",
        "--rungs.lora.max-steps", "2", "--rungs.lora.batch-size", "4",
        "--rungs.lora.search.trials", "0", "--rungs.distill.enabled", "false",
        "--target", "0", "--requests", "0",
    ]  # fmt: skip
    assert main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["task"]["kind"] == "generation" and "labels" not in s["task"]
    assert s["meta"]["metric"] == "exact_match"
    by = {r["name"]: r for r in s["rungs"]}
    assert by["full"]["status"] == "skipped"
    assert by["full"]["reason"] == "not run on generation tasks yet"
    assert "from lora" in by["quantize"]["description"]  # the fine-tuned model, quantized
    test = [json.loads(x) for x in (out / "data" / "test.jsonl").read_text().splitlines()]
    for name in ("zero_shot", "few_shot", "lora", "quantize"):
        r = by[name]
        assert r["status"] == "ok" and len(r["predictions"]) == len(test) == 6
        assert {"exact_match", "token_f1", "rouge_l"} <= set(r["extra_metrics"])
        em = [exact_match(p, t["answer"]) for p, t in zip(r["predictions"], test, strict=True)]
        assert r["quality"] == pytest.approx(sum(em) / 6)  # exact match of what it generated
    # 'the reference' is the most frequent training answer: the baseline that always says it.
    most = s["baselines"]["most_frequent"]
    share = sum(t["answer"] == "the reference" for t in test) / 6
    assert most["label"] == "the reference" and most["exact_match"] == pytest.approx(share)
    assert s["baselines"]["empty"]["exact_match"] == 0.0
    assert "baseline: always 'the reference'" in (out / "summary.md").read_text()


def test_own_data_in_one_command(tiny_lm, task_files, tmp_path, capsys):
    data, _ = task_files
    out = tmp_path / "mine"
    argv = [
        "ladder", "--data", str(data), "--out", str(out), "--base-model", str(tiny_lm),
        "--rungs.few_shot.strategy", "fixed", "--rungs.lora.max-steps", "2",
        "--rungs.lora.search.trials", "0",
        "--rungs.lora.batch-size", "4", "--rungs.full.enabled", "false",
        "--rungs.distill.enabled", "false", "--target", "0", "--requests", "0",
    ]  # fmt: skip
    assert main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["task"]["kind"] == "classification" and s["task"]["labels"] == LABELS
    assert s["task"]["splits"] == {"train": 21, "validation": 3, "test": 6}
    by = {r["name"]: r for r in s["rungs"]}
    # No documents given: the rungs that need them are skipped, saying why.
    assert by["rag"]["status"] == by["cpt_lora"]["status"] == "skipped"
    assert "no domain documents" in by["rag"]["reason"]
    assert by["full"]["reason"] == "turned off in the config"
    assert [by[n]["status"] for n in ("zero_shot", "few_shot", "lora", "quantize")] == ["ok"] * 4
    assert "from lora" in by["quantize"]["description"]
    assert s["recommended"] == "zero_shot"  # target 0, no traffic: the cheapest, simplest rung
    test_split = (out / "data" / "test.jsonl").read_text()
    # A rerun reuses the splits (its numbers compare with the first run's).
    assert main([*argv[:9], "--rungs.lora.enabled", "false", *argv[15:]]) == 0
    assert (out / "data" / "test.jsonl").read_text() == test_split
    capsys.readouterr()


def test_training_files_follow_the_limit(tmp_path, task_files, tiny_lm):
    data, _ = task_files
    for limit in (5, 7, None):
        cfg = LadderConfig(out=str(tmp_path / "o"), data=str(data), limit_train=limit)
        task, corpus = load_task(cfg)
        with start_run("ladder", cfg) as run:
            files = LadderContext(cfg, run, task, corpus).training_files()
        rows = [json.loads(x) for x in files.train.read_text().splitlines()]
        assert [r["id"] for r in rows] == [r["id"] for r in task.train] and len(rows) == (
            limit or 21
        )
        assert files.val == task.path.parent / "validation.jsonl"
        assert (files.template, files.labels) == (task.template, LABELS)  # {text, label} rows


def test_trained_rungs_batch_rows_of_similar_length(ctx, tmp_path):
    from oficina.ladder.rungs import GROUP_BY_LENGTH

    for cls in (Lora, Full):
        rung = cls(cls.Settings(max_steps=2, batch_size=4, **NO_SEARCH))
        hp, _ = rung.hyperparameters(ctx)
        _, cfg = rung.recipe(ctx, hp, tmp_path / cls.name)
        assert cfg.train.group_by_length == GROUP_BY_LENGTH > 1


def lr_path(ctx, tmp_path, cls, steps: int, **settings) -> list[float]:
    """The learning rates of a rung's training's first ``steps`` steps, from its recipe."""
    import torch

    from oficina.train.loop import make_scheduler

    rung = cls(cls.Settings(batch_size=4, lr=1e-3, **settings, **NO_SEARCH))
    hp, _ = rung.hyperparameters(ctx)
    _, cfg = rung.recipe(ctx, hp, tmp_path / f"{cls.name}-{settings}")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.train.lr)
    sched, path = make_scheduler(opt, cfg.train, cfg.max_steps), []
    for _ in range(steps):
        path.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return path


@pytest.mark.parametrize("cls", [Lora, Full])
def test_a_longer_budget_follows_the_same_learning_rate_path(ctx, tmp_path, cls):
    # benchmarks/ladder_budget.py's 3x longer run must differ from the rung only in length.
    # 21 rows in batches of 4: 6 steps an epoch, 2 warm-up steps (a quarter epoch, rounded up).
    short = lr_path(ctx, tmp_path, cls, 12, max_epochs=2)
    long = lr_path(ctx, tmp_path, cls, 12, max_epochs=6)
    assert short == long
    assert short[:3] == pytest.approx([5e-4, 1e-3, 1e-3]) and set(short[2:]) == {1e-3}
    # A cosine over the budget is the other choice: there the budget shapes the path.
    cos_short = lr_path(ctx, tmp_path, cls, 12, max_epochs=2, schedule="cosine")
    cos_long = lr_path(ctx, tmp_path, cls, 12, max_epochs=6, schedule="cosine")
    assert cos_short[:2] == cos_long[:2] and cos_short[-1] < cos_long[-1] < 1e-3


def test_a_best_checkpoint_at_the_budget_counts_as_cut_off_only_if_it_still_fell():
    from oficina.ladder.rungs import Budget

    b = Budget.of(160, {"batch_size": 4, "max_epochs": 4, "evals_per_epoch": 2, "patience": 2,
                        "min_delta": 0.01})  # fmt: skip
    assert (b.steps, b.eval_every) == (160, 20)
    flat = [(120, 0.3619), (140, 0.3828), (160, 0.3609)]  # the demo's LoRA: 0.3% at the end
    falling = [(120, 0.40), (140, 0.39), (160, 0.36)]
    assert not b.cut_by_budget(160, flat) and b.cut_by_budget(160, falling)
    assert not b.cut_by_budget(120, falling)  # best before the last evaluation
    assert b.outcome({"best_step": 160, "steps": 160, "val_curve": falling})["best_at_budget"]
    assert not b.outcome({"best_step": 160, "steps": 160, "val_curve": flat})["best_at_budget"]


def _answers(correct: int, n: int = 40, offset: int = 0) -> list[list[str]]:
    """n [prediction, gold] rows, ``correct`` of them right (rows offset.. offset+correct-1)."""
    return [["a" if offset <= i < offset + correct else "b", "a"] for i in range(n)]


def test_a_last_rise_within_the_validation_rows_noise_is_not_cut_off():
    """With the rows' answers kept, the budget check pairs the last evaluation with the best
    before it on the same rows: the demo's LoRA at its last epoch rose 0.60 -> 0.65 on 40 rows
    (two rows net: inside the interval, not cut off); a rise of 12 rows is beyond it."""
    from oficina.ladder.rungs import Budget

    hp = {"batch_size": 4, "max_epochs": 3, "evals_per_epoch": 1, "patience": 2, "min_delta": 0.01}
    b = Budget.of(80, hp, "accuracy")
    curve = [[20, 0.40], [40, 0.60], [60, 0.65]]
    s = {"best_step": 60, "steps": 60, "select_by": "accuracy", "select_curve": curve,
         "val_answers": [[20, _answers(16)], [40, _answers(24)], [60, _answers(26, offset=1)]]}  # fmt: skip
    out = b.outcome(s)
    r = out["last_rise"]
    assert (r["from_step"], r["diff"], r["rows"]) == (40, 0.05, 40)
    assert r["ci"][0] < 0 < r["ci"][1] and not r["beyond_noise"]
    assert not out["best_at_budget"]  # by min_delta alone (+8%) it would have been
    assert b.cut_by_budget(60, b.selection_curve(s))
    # 12 more rows right than at step 40: beyond noise, cut off.
    steep = {**s, "select_curve": [[20, 0.40], [40, 0.30], [60, 0.60]],
             "val_answers": [[20, _answers(16)], [40, _answers(12)], [60, _answers(24)]]}  # fmt: skip
    r = b.outcome(steep)["last_rise"]
    assert r["from_step"] == 20 and r["diff"] == pytest.approx(0.2) and r["beyond_noise"]
    assert b.outcome(steep)["best_at_budget"]
    # Pairing matters: the same 0.40 -> 0.60 by a model that got 8 rows wrong that it had
    # right is tied far more loosely than one that only gained rows.
    swapped = {**steep, "val_answers": [[20, _answers(16)], [40, _answers(12)],
                                        [60, _answers(24, offset=16)]]}  # fmt: skip
    r2 = b.outcome(swapped)["last_rise"]
    assert r2["diff"] == pytest.approx(0.2) and r2["ci"][0] < r["ci"][0]
    # Best before the budget's end, or no answers kept (the loss selects): no pairing.
    assert b.outcome({**s, "best_step": 40})["last_rise"] is None
    assert b.outcome({k: v for k, v in s.items() if k != "val_answers"})["last_rise"] is None
    # Macro-F1 selects: the statistic is macro-F1 over the rows' (prediction, gold) pairs.
    mf = Budget.of(80, hp, "macro_f1").outcome({**s, "select_by": "macro_f1"})["last_rise"]
    assert mf is not None and mf["rows"] == 40 and mf["diff"] > 0


def test_the_report_says_why_a_last_evaluation_is_or_is_not_the_budgets_choice():
    from oficina.ladder.report import _budget_text

    rise = {"from_step": 40, "diff": 0.05, "ci": [-0.05, 0.15], "rows": 40, "beyond_noise": False}
    flat = _budget_text({"best_at_budget": False, "last_rise": rise})
    assert "+0.050 [-0.050, +0.150] over step 40 on the same 40 validation rows" in flat
    assert "within noise" in flat and "budget, not the curve" not in flat
    cut = _budget_text({"best_at_budget": True, "last_rise": {**rise, "beyond_noise": True}})
    assert "the budget, not the curve, chose it" in cut and "beyond noise" in cut
    assert _budget_text({"best_at_budget": True}) == " — the budget, not the curve, chose it"
    assert _budget_text({"best_at_budget": False}) == ""


def test_the_validation_hook_scores_labels_as_the_test_is_scored(ctx):
    """A classifier's checkpoints are picked by ``ctx.validation_metrics``: the same label
    scoring as the test split's, on the validation rows, of the weights in training."""
    from oficina.infer.engine import Engine
    from oficina.train.data import eval_batches, load_jsonl_dataset
    from oficina.train.loop import evaluate
    from oficina.train.objectives import SFT

    assert ctx.select_by == "accuracy"
    assert ctx.cfg.dtype == "float32"  # bf16 rounds the hook's batches and evaluate's apart
    engine = ctx.base_engine()
    hook = ctx.validation_metrics(ctx.val)
    got = hook(engine.model, [])
    plain = Engine(engine.model, engine.tokenizer)  # the same weights, no prefix cache
    want = ctx.score(plain, ctx.val)
    assert got["accuracy"] == want["accuracy"] and got["macro_f1"] == want["macro_f1"]
    # ...and each row's [prediction, gold], in the rows' order, for fit to keep.
    assert got["answers"] == [list(p) for p in zip(want["predictions"], want["golds"], strict=True)]
    assert [g for _, g in got["answers"]] == [r["label"] for r in ctx.val]
    # The same passes give the validation loss fit would otherwise compute in a pass of its
    # own: the SFT loss of the validation rows as training tokenizes them (label + EOS).
    files = ctx.training_files()
    rows = load_jsonl_dataset(str(files.val), engine.tokenizer, template=files.template)
    loss = evaluate(engine.model, SFT(), eval_batches(rows, 4, None), "float32")
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    # A generation task, or select_by: loss, selects by the validation loss: no hook.
    ctx.cfg = ctx.cfg.model_copy(update={"select_by": "loss"})
    assert ctx.select_by == "loss" and ctx.validation_metrics(ctx.val) is None


def test_a_metric_picked_checkpoint_is_cut_off_when_the_metric_still_rose():
    """With ``select_by`` a metric, the budget check reads the metric's curve (higher is
    better), not the loss: the session-17 demo LoRA's accuracy 0.375 -> 0.475 at its last epoch
    while its loss had turned up (0.5519 -> 0.5574)."""
    from oficina.ladder.rungs import Budget

    hp = {"batch_size": 4, "max_epochs": 3, "evals_per_epoch": 1, "patience": 2, "min_delta": 0.01}
    b = Budget.of(80, {**hp, "cooldown_epochs": 0.25}, "accuracy")
    loss = [[20, 0.5701], [40, 0.5519], [60, 0.5574]]
    rising = {"best_step": 60, "steps": 60, "val_curve": loss, "select_by": "accuracy",
              "select_curve": [[20, 0.275], [40, 0.375], [60, 0.475]], "best_val_metric": 0.475}  # fmt: skip
    flat = {**rising, "select_curve": [[20, 0.275], [40, 0.475], [60, 0.476]]}
    assert b.outcome(rising)["best_at_budget"] and not b.outcome(flat)["best_at_budget"]
    assert b.outcome(rising)["select_by"] == "accuracy" and b.outcome(rising)["best_value"] == 0.475
    # by the loss, the same run's best step 60 would not even be the loss's best
    assert not Budget.of(80, hp).outcome({**rising, "best_step": 40})["best_at_budget"]
    assert "≥ 1.0% rise of the validation accuracy" in b.rule()
    assert "kept if the validation accuracy rises" in b.rule()
    by_loss = Budget.of(80, {**hp, "cooldown_epochs": 0.25}).rule()
    assert (
        "≥ 1.0% fall of the validation loss, best checkpoint kept by validation loss, then"
        in by_loss
    )
    assert by_loss.endswith("kept if the validation loss falls")
    assert Budget.of(80, hp, "macro_f1").value_name == "validation macro-F1"
