"""`oficina serve BASE a=BASE+AD1 b=BASE+AD2`: one copy of the base, and requests for the base and
both adapters run in one batch, each answered with its own adapter's output (that of the adapter
served alone). Nothing here depends on speed: jobs are queued before the scheduler starts."""

from __future__ import annotations

import asyncio

import openai
import pytest
from helpers import make_tiny_lora
from serve_helpers import running_server

from oficina.infer.engine import Engine, SamplingParams
from oficina.serve.app import ServeConfig, create_app, load_engines, parse_model_args
from oficina.serve.scheduler import Job, Scheduler

PROMPTS = {"base": "def foo(x):", "a": "def foo(x):", "b": "The quick brown fox"}


@pytest.fixture(scope="module")
def loras(tiny_lm, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    return {k: make_tiny_lora(tiny_lm, d / f"ad-{k}", seed) for k, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="module")
def engines(tiny_lm, loras):
    return load_engines(
        parse_model_args(
            [f"base={tiny_lm}", f"a={tiny_lm}+{loras['a']}", f"b={tiny_lm}+{loras['b']}"]
        )
    )


@pytest.fixture(scope="module")
def alone(tiny_lm, loras, tiny_engine):
    return {
        "base": tiny_engine,
        **{k: Engine.from_spec(str(tiny_lm), adapter=str(p), name=k) for k, p in loras.items()},
    }


def _p(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, ignore_eos=True, logprobs=0)


def test_load_engines_keeps_one_base_for_all_three(engines, loras):
    assert list(engines) == ["base", "a", "b"]
    assert engines["a"].model.shared is engines["b"].model.shared is engines["base"].model.shared
    assert engines["a"].adapter == loras["a"].resolve() and engines["base"].adapter is None


def test_the_three_ids_run_in_one_batch_each_with_its_adapter(engines, alone):
    async def run():
        sched = Scheduler(engines, max_batch=8, batch_wait_s=0)
        loop = asyncio.get_running_loop()
        jobs = {k: Job(loop=loop, model=k, prompts=[p], params=[_p(8)]) for k, p in PROMPTS.items()}
        for job in jobs.values():  # all queued before the thread starts: one admission
            sched.submit(job)
        sched.start()
        try:
            out = {k: await j.events.get() for k, j in jobs.items()}
        finally:
            sched.stop()
        return out, sched.stats()

    out, stats = asyncio.run(run())
    assert stats["batches"] == 1 and stats["max_batch_rows"] == 3  # one batch, three adapters
    for k, (kind, comps) in out.items():
        assert kind == "done", k
        ref = alone[k].generate([PROMPTS[k]], _p(8))[0]
        assert comps[0].token_ids == ref.token_ids, k
        assert [t.logprob for t in comps[0].logprobs] == pytest.approx(
            [t.logprob for t in ref.logprobs], abs=1e-4
        ), k


def test_server_answers_each_model_id_with_its_own_adapter(engines, alone):
    app = create_app(ServeConfig(models=["unused"], embeddings="none"), engines)
    prompt = "The yield statement"
    with running_server(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        assert {m.id for m in c.models.list().data} == {"base", "a", "b"}
        got = {
            k: c.completions.create(
                model=k,
                prompt=prompt,
                max_tokens=6,
                temperature=0,
                logprobs=0,
                extra_body={"ignore_eos": True},
            ).choices[0]
            for k in ("base", "a", "b")
        }
    for k, choice in got.items():
        ref = alone[k].generate([prompt], _p(6))[0]
        assert choice.text == ref.text, k
        assert choice.logprobs.token_logprobs == pytest.approx(
            [t.logprob for t in ref.logprobs], abs=1e-4
        ), k
    # the adapters change the numbers, so the comparison above tells them apart
    assert got["a"].logprobs.token_logprobs[0] != pytest.approx(
        got["base"].logprobs.token_logprobs[0], abs=1e-3
    )
