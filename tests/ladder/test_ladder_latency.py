"""The ladder's latency pass (``oficina.ladder.latency``): every ok rung timed the same way,
interleaved, on the same items, its model as served; the figures replace the quality pass's and
drive the recommendation.

No verdict reads the wall clock: the pass's clock is swapped for one the tests advance
themselves (a planted "sleep" moves it), so every latency here is exact.
"""

from __future__ import annotations

import json
from pydoc_data.topics import topics

import pytest
import torch
from helpers import write_jsonl

from oficina.cli import main
from oficina.ladder import latency
from oficina.ladder.context import LadderContext
from oficina.ladder.result import InferenceCost, RungResult
from oficina.ladder.run import LadderConfig, load_task
from oficina.ladder.rungs import FewShot, FewShotRag, Lora, Quantize, Rag, ZeroShot
from oficina.workspace import start_run

LABELS = ["alpha", "beta", "gamma"]
TEXTS = [" ".join(t.split())[:240] for t in list(topics.values())[:30]]


class Clock:
    """A clock only the tests move."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def data(tmp_path):
    return write_jsonl(
        tmp_path / "mine.jsonl", [{"text": t, "label": LABELS[i % 3]} for i, t in enumerate(TEXTS)]
    )


@pytest.fixture
def ctx(tiny_lm, tmp_path, data):
    # float32: a merged adapter's effect is not lost to bf16 rounding (the LoRA test compares).
    cfg = LadderConfig(
        out=str(tmp_path / "out"), data=str(data), base_model=str(tiny_lm), dtype="float32"
    )
    task, corpus = load_task(cfg)
    with start_run("ladder", cfg) as run:
        yield LadderContext(cfg, run, task, corpus)


def measured(name: str, latency_s: float) -> RungResult:
    inf = InferenceCost(
        latency_s_per_item=latency_s,
        scoring_s_per_item=latency_s,
        prompt_tokens_mean=50.0,
        usd_per_1k_requests=0.5,
    )
    return RungResult(name=name, quality=0.5, inference=inf)


def test_the_pass_times_every_ok_rung_interleaved_and_takes_the_median(ctx, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(latency, "clock", clock)
    calls: list[tuple[str, int]] = []

    class Probed:
        """A rung whose answering costs ``per_item[round]`` seconds an item on the clock."""

        def __init__(self, name: str, per_item: list[float]):
            self.name, self.per_item, self.timed = name, per_item, 0

        def latency_probe(self, ctx, result):
            assert result.name == self.name  # its own result

            def probe(rows):
                calls.append((self.name, len(rows)))
                if len(rows) > 1:  # the warm-up item is not timed
                    clock.t += self.per_item[self.timed] * len(rows)
                    self.timed += 1
                return {"prompt_tokens_mean": 40.0}

            return probe

    class Untouchable:
        def latency_probe(self, ctx, result):
            raise AssertionError("a skipped or failed rung was timed")

    a, b = Probed("a", [1.0, 9.0, 2.0]), Probed("b", [0.5, 0.5, 0.5])
    ctx.results = [
        measured("a", 5.0),
        measured("b", 5.0),
        RungResult(name="off", status="skipped", reason="turned off in the config"),
        RungResult(name="broke", status="failed", reason="ValueError: no"),
    ]
    before = {r.name: r.inference.model_copy() for r in ctx.results[2:]}
    rungs = {"a": a, "b": b, "off": Untouchable(), "broke": Untouchable()}
    out = latency.measure_latency(ctx, rungs, items=3, rounds=3)

    # Warm-ups first (one item each), then round-robin, each round starting one rung later.
    assert calls == [("a", 1), ("b", 1)] + [
        ("a", 3), ("b", 3), ("b", 3), ("a", 3), ("a", 3), ("b", 3),
    ]  # fmt: skip
    by = {r.name: r for r in ctx.results}
    # The median of a's rounds (1, 9, 2 s an item) is 2: one slow round does not set it.
    assert by["a"].inference.latency_s_per_item == 2.0 == out["a"]["latency_s_per_item"]
    assert out["a"]["rounds_s_per_item"] == [1.0, 9.0, 2.0]
    assert by["b"].inference.latency_s_per_item == 0.5
    for r, s in ((by["a"], 2.0), (by["b"], 0.5)):
        assert r.inference.usd_per_1k_requests == pytest.approx(ctx.usd_for_seconds(s * 1000))
        assert r.inference.tokens_per_s == pytest.approx(40.0 / s)  # the timed items' prompts
        assert r.inference.scoring_s_per_item == 5.0  # the quality pass's figure, kept
    assert set(out) == {"a", "b"}
    assert {r.name: r.inference for r in ctx.results[2:]} == before


def test_a_probe_that_breaks_keeps_its_quality_pass_figure(ctx, monkeypatch):
    monkeypatch.setattr(latency, "clock", Clock())

    class Broken:
        def latency_probe(self, ctx, result):
            raise OSError("model folder gone")

    class Fine:
        def latency_probe(self, ctx, result):
            return lambda rows: {}

    ctx.results = [measured("gone", 5.0), measured("fine", 5.0)]
    out = latency.measure_latency(ctx, {"gone": Broken(), "fine": Fine()}, items=2, rounds=2)
    assert out["gone"] == {"error": "OSError: model folder gone"}
    assert ctx.results[0].inference.latency_s_per_item == 5.0
    assert ctx.results[1].inference.latency_s_per_item == 0.0  # timed: the clock never moved


def test_lora_is_timed_merged_into_its_base(ctx):
    rung = Lora(Lora.Settings(max_steps=2, batch_size=4, lr=1e-2, search={"trials": 0}))
    r = rung.run(ctx)
    engine, *_ = probed(ctx, rung, r)
    served = engine.model
    assert not any("lora" in n for n, _ in served.named_modules())  # no adapter layers left
    assert type(served).__name__ == "LlamaForCausalLM"
    # ... and it is the adapted model, not the base: the same logits as base + adapter.
    adapted = ctx.engine(ctx.cfg.base_model, adapter=r.artifacts["adapter"])
    base = ctx.engine(ctx.cfg.base_model)
    ids = torch.tensor([adapted.encode(ctx.test[0]["text"])[:32]])
    with torch.no_grad():
        want, got, plain = (e.model(ids).logits for e in (adapted, engine, base))
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(got, plain, atol=1e-4)


def run_ladder_argv(data, out, tiny_lm) -> list[str]:
    return [
        "ladder", "--data", str(data), "--out", str(out), "--base-model", str(tiny_lm),
        "--rungs.few_shot.strategy", "fixed", "--rungs.few_shot.shots", "1",
        "--rungs.lora.max-steps", "2", "--rungs.lora.batch-size", "4",
        "--rungs.lora.search.trials", "0", "--rungs.full.enabled", "false",
        "--rungs.distill.enabled", "false", "--rungs.quantize.enabled", "false",
        "--latency-items", "3", "--latency-rounds", "2",
        "--target", "0", "--requests", "100000",
    ]  # fmt: skip


def test_a_rung_slow_in_the_latency_pass_loses_the_pick(tiny_lm, data, tmp_path, monkeypatch):
    """Target 0: every rung meets it and the cheapest total (training + 100k requests) wins.
    The pass's clock moves only when zero_shot's probe answers (10 s a call, 3 items): zero_shot,
    which wins on equal costs (the simplest rung), now costs most per request and few_shot wins."""
    clock = Clock()
    monkeypatch.setattr(latency, "clock", clock)
    timed: list[int] = []
    real = ZeroShot.latency_probe

    def slow(self, ctx, result):
        inner = real(self, ctx, result)

        def probe(rows):
            timed.append(len(rows))
            clock.t += 10.0  # the planted sleep
            return inner(rows)

        return probe

    monkeypatch.setattr(ZeroShot, "latency_probe", slow)
    out = tmp_path / "slow"
    assert main(run_ladder_argv(data, out, tiny_lm)) == 0
    s = json.loads((out / "summary.json").read_text())
    by = {r["name"]: r for r in s["rungs"]}
    ok = {n for n, r in by.items() if r["status"] == "ok"}
    assert ok == {"zero_shot", "few_shot", "lora"}
    assert set(s["meta"]["latency"]["rungs"]) == ok  # every ok rung timed, no other
    assert (s["meta"]["latency"]["items"], s["meta"]["latency"]["rounds"]) == (3, 2)
    assert timed == [1, 3, 3]  # a warm-up item, then two rounds of the same 3 items
    z = by["zero_shot"]["inference_cost"]
    assert z["latency_s_per_item"] == pytest.approx(10.0 / 3)
    assert z["scoring_s_per_item"] > 0 and z["scoring_s_per_item"] != z["latency_s_per_item"]
    assert by["few_shot"]["inference_cost"]["latency_s_per_item"] == 0.0
    assert by["rag"]["inference_cost"]["latency_s_per_item"] == 0.0  # skipped: left alone
    assert s["recommended"] == "few_shot"
    assert "round-robin over the rungs for 2 rounds" in (out / "summary.md").read_text()

    # The control: nothing planted, every rung equally fast: zero_shot wins as the simplest.
    monkeypatch.setattr(ZeroShot, "latency_probe", real)
    out = tmp_path / "even"
    argv = [*run_ladder_argv(data, out, tiny_lm), "--rungs.lora.enabled", "false"]
    assert main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["recommended"] == "zero_shot"


def probed(ctx, rung, result) -> tuple:
    """(engine, rows, template, fewshot, example_template) that ``rung``'s probe hands the
    scorer."""
    seen = []
    ctx.score = lambda engine, rows, template=None, fewshot=None, example_template=None: (
        seen.append((engine, rows, template, fewshot, example_template)) or {}
    )
    rung.latency_probe(ctx, result)(ctx.test[2:4])  # not the items the rung scored first
    del ctx.score
    return seen[0]


def test_quantize_is_timed_on_its_int8_path_and_few_shot_with_its_examples(ctx):
    from oficina.infer.int8 import Int8Linear

    rung = Quantize(Quantize.Settings())
    engine, *_ = probed(ctx, rung, rung.run(ctx))
    assert any(isinstance(m, Int8Linear) for m in engine.model.modules())
    few = FewShot(FewShot.Settings(shots=1, strategy="fixed"))
    _, rows, _, fewshot, _ = probed(ctx, few, few.run(ctx))
    assert rows == ctx.test[2:4] and fewshot(rows[0]) == [ctx.train[0]]  # its shots, per row


@pytest.mark.integration  # embeds the documents with the packaged MiniLM
def test_rag_is_timed_with_its_retrieval(ctx, tmp_path):
    docs = write_jsonl(
        tmp_path / "docs.jsonl",
        [{"id": k, "title": k, "text": v[:2000]} for k, v in list(topics.items())[:6]],
    )
    ctx.corpus = str(docs)
    rung = Rag(Rag.Settings(k=1, mode="bm25", precision="bf16"))
    _, rows, template, fewshot, _ = probed(ctx, rung, rung.run(ctx))
    # The rows are retrieved for inside the probe: passages in each, the passages' template.
    assert [r["id"] for r in rows] == [r["id"] for r in ctx.test[2:4]]
    assert all(r["context"].startswith("[1] (topic: ") for r in rows)
    assert template.startswith("Reference passages:\n{context}") and fewshot is None
    # few_shot_rag: its examples too, shown without passages (the task's own template)
    few = FewShotRag(
        FewShotRag.Settings(shots=1, strategy="fixed", k=1, mode="bm25", precision="bf16")
    )
    _, rows, template, fewshot, example_template = probed(ctx, few, few.run(ctx))
    assert (
        template.startswith("Reference passages:\n{context}") and example_template == ctx.template
    )
    assert fewshot(rows[0]) == [ctx.train[0]]
    for close in ctx.closers:
        close()
