"""The scheduler on its own (no HTTP): continuous batching lets a job join a running batch at the
next step and answers it when its rows are done, not when the batch ends; static batching makes
it wait. Every row's output is the one it gets alone.

Nothing here depends on speed: a "gated" job holds the scheduler thread inside its first step
until the test has queued what it wants queued, so the order of events is fixed.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import pytest

from oficina.infer.engine import SamplingParams
from oficina.serve.scheduler import Job, Scheduler


@dataclass
class GatedJob(Job):
    """A job whose first delivered step blocks the scheduler thread until ``gate`` is set."""

    gate: threading.Event = field(default_factory=threading.Event)
    reached: threading.Event = field(default_factory=threading.Event)

    def keep_going(self, k: int, delta: str) -> bool:
        if not self.reached.is_set():
            self.reached.set()
            self.gate.wait(60)  # a hang guard only
        return super().keep_going(k, delta)


def _p(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, ignore_eos=True, logprobs=0, **kw)


def _same_as_alone(engine, prompt: str, params: SamplingParams, c) -> None:
    alone = engine.generate([prompt], params)[0]
    assert c.token_ids == alone.token_ids and c.text == alone.text, prompt
    got = [t.logprob for t in c.logprobs]
    assert got == pytest.approx([t.logprob for t in alone.logprobs], abs=1e-4), prompt


async def _outcome(job: Job, order: list[str], name: str) -> tuple:
    while True:
        item = await job.events.get()
        if item[0] in ("done", "error"):
            order.append(name)
            return item


async def _join_scenario(engine, mode: str):
    sched = Scheduler({"tiny": engine}, max_batch=4, batch_wait_s=0, mode=mode)
    sched.start()
    loop = asyncio.get_running_loop()
    pa, pb = _p(40), _p(5)
    a = GatedJob(loop=loop, model="tiny", prompts=["def foo(x):"], params=[pa], stream=True)
    b = Job(loop=loop, model="tiny", prompts=["The quick brown fox"], params=[pb], stream=True)
    order: list[str] = []
    try:
        sched.submit(a)
        await loop.run_in_executor(None, a.reached.wait, 60)  # a is inside its first step
        sched.submit(b)
        a.gate.set()
        (ka, ca), (kb, cb) = await asyncio.gather(_outcome(a, order, "a"), _outcome(b, order, "b"))
    finally:
        sched.stop()
    assert ka == kb == "done"
    _same_as_alone(engine, "def foo(x):", pa, ca[0])
    _same_as_alone(engine, "The quick brown fox", pb, cb[0])
    return order, sched.stats()


def test_continuous_a_job_joins_the_running_batch_and_leaves_when_done(tiny_engine):
    order, stats = asyncio.run(_join_scenario(tiny_engine, "continuous"))
    assert order == ["b", "a"]  # b (5 tokens) was answered while a (40) was still running
    assert stats["batches"] == 1 and stats["max_batch_rows"] == 2
    assert stats["generated_tokens"] == 45 and stats["scheduler"] == "continuous"


def test_static_a_job_waits_for_the_whole_batch(tiny_engine):
    order, stats = asyncio.run(_join_scenario(tiny_engine, "static"))
    assert order == ["a", "b"]
    assert stats["batches"] == 2 and stats["max_batch_rows"] == 1


def test_rows_of_mixed_lengths_and_sampling_each_match_running_alone(tiny_engine):
    prompts = ["a", "class C:\n    pass", "x = ", "The yield statement"]
    params = [
        _p(3),
        _p(9, temperature=1.0, seed=7),
        _p(6, temperature=0.8, top_k=20, seed=1),
        _p(12, repetition_penalty=1.3),
    ]

    async def run():
        sched = Scheduler({"tiny": tiny_engine}, max_batch=3, batch_wait_s=0)
        sched.start()
        loop = asyncio.get_running_loop()
        first = GatedJob(loop=loop, model="tiny", prompts=prompts[:2], params=params[:2])
        rest = Job(loop=loop, model="tiny", prompts=prompts[2:], params=params[2:])
        too_long = Job(loop=loop, model="tiny", prompts=["a" * 4000], params=[_p(4)])
        try:
            sched.submit(first)
            await loop.run_in_executor(None, first.reached.wait, 60)
            sched.submit(too_long)
            sched.submit(rest)  # 2 rows running + 2 > max_batch 3: joins once "a" has left
            first.gate.set()
            order: list[str] = []
            return await asyncio.gather(
                _outcome(first, order, "first"),
                _outcome(rest, order, "rest"),
                _outcome(too_long, order, "too_long"),
            ), sched.stats()
        finally:
            sched.stop()

    (first, rest, too_long), stats = asyncio.run(run())
    assert first[0] == rest[0] == "done" and too_long[0] == "error"
    assert too_long[1].status == 400 and "context" in str(too_long[1])
    for prompt, p, c in zip(prompts, params, first[1] + rest[1], strict=True):
        _same_as_alone(tiny_engine, prompt, p, c)
    assert stats["batches"] == 1 and stats["max_batch_rows"] == 3


def test_cancelling_a_job_frees_its_rows_even_those_waiting_for_a_slot(tiny_engine):
    async def run():
        sched = Scheduler({"tiny": tiny_engine}, max_batch=2, batch_wait_s=0)
        sched.start()
        loop = asyncio.get_running_loop()
        # three prompts, two slots: the third row waits inside the batch
        job = GatedJob(loop=loop, model="tiny", prompts=["a", "b", "c"], params=[_p(300)] * 3)
        queued = Job(loop=loop, model="tiny", prompts=["d"], params=[_p(2)])
        try:
            sched.submit(job)
            await loop.run_in_executor(None, job.reached.wait, 60)
            sched.submit(queued)  # the batch is full: it waits in the scheduler's queue
            queued.cancel()
            job.cancel()
            job.gate.set()
            done = await _outcome(job, [], "job")
            await asyncio.sleep(0)
            return done, sched.stats(), queued.events.qsize()
        finally:
            sched.stop()

    (kind, completions), stats, queued_events = asyncio.run(run())
    assert kind == "done"
    assert [c.finish_reason for c in completions] == ["cancelled"] * 3
    assert completions[2].completion_tokens == 0  # never got a slot
    assert all(c.completion_tokens <= 1 for c in completions[:2])
    assert stats["cancelled_rows"] == 3 and stats["queued"] == 0 and stats["rows"] == 3
    assert queued_events == 0  # the cancelled queued job never ran


def test_unknown_mode_is_refused(tiny_engine):
    with pytest.raises(ValueError, match="continuous"):
        Scheduler({"tiny": tiny_engine}, mode="eager")


# ---------------------------------------------------------------------------- shared base
@pytest.fixture(scope="module")
def shared_and_alone(tiny_lm, tmp_path_factory, tiny_engine):
    """Three ids on one base (the base, adapters a and b) and each served on its own."""
    from helpers import make_tiny_lora

    from oficina.infer.adapters import load_shared
    from oficina.infer.engine import Engine

    d = tmp_path_factory.mktemp("loras")
    loras = {k: make_tiny_lora(tiny_lm, d / k, seed) for k, seed in (("a", 1), ("b", 2))}
    shared = load_shared(str(tiny_lm), {"base": None, **{k: str(p) for k, p in loras.items()}})
    alone = {
        "base": tiny_engine,
        **{k: Engine.from_spec(str(tiny_lm), adapter=str(p), name=k) for k, p in loras.items()},
    }
    return shared, alone


def test_static_batches_the_ids_of_one_base_together_each_with_its_adapter(shared_and_alone):
    shared, alone = shared_and_alone
    prompts = {"base": "def foo(x):", "a": "def foo(x):", "b": "The quick brown fox"}

    async def run():
        sched = Scheduler(shared, max_batch=8, batch_wait_s=0, mode="static")
        loop = asyncio.get_running_loop()
        jobs = {k: Job(loop=loop, model=k, prompts=[p], params=[_p(6)]) for k, p in prompts.items()}
        for job in jobs.values():  # all queued before the thread starts: one batch
            sched.submit(job)
        sched.start()
        try:
            return {k: await j.events.get() for k, j in jobs.items()}, sched.stats()
        finally:
            sched.stop()

    out, stats = asyncio.run(run())
    assert stats["batches"] == 1 and stats["max_batch_rows"] == 3
    for k, (kind, comps) in out.items():
        assert kind == "done", k
        _same_as_alone(alone[k], prompts[k], _p(6), comps[0])
