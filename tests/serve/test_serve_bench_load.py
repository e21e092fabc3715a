"""The arrivals of ``benchmarks/serve.py``: burst, closed loop and open (Poisson) loop send the
planned requests, the same ones for every server, with at most one request per client in flight."""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # for its `from _machine import machine`
    spec = importlib.util.spec_from_file_location("bench_serve", BENCH / "serve.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_serve", module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_plan_is_the_same_for_every_server_and_follows_the_load(bench):
    closed = bench.Load({4: 3}, (8, 56), seed=7)
    plan = bench.plan_requests(closed, 4)
    assert plan == bench.plan_requests(closed, 4)  # every server of a run gets these
    assert len(plan) == 12
    assert all(r["at"] == 0.0 for r in plan)  # closed loop: sent when the client is free
    assert all(8 <= r["max_tokens"] <= 56 for r in plan)
    assert len({r["max_tokens"] for r in plan}) > 1
    assert bench.plan_requests(bench.Load({4: 3}, (8, 56), seed=8), 4) != plan

    ramped = bench.plan_requests(bench.Load({4: 3}, (8, 56), seed=7, ramp=5.0), 4)
    assert [r["max_tokens"] for r in ramped] == [r["max_tokens"] for r in plan]
    starts = [r["at"] for r in ramped[::3]]  # each client's first request: its start
    assert all(0 <= t <= 5.0 for t in starts) and len(set(starts)) == 4
    assert all(r["at"] == 0.0 for i, r in enumerate(ramped) if i % 3)  # then back to back

    fixed = bench.plan_requests(bench.Load({4: 1}, (32, 32)), 4)
    assert [r["max_tokens"] for r in fixed] == [32] * 4

    rate = 2.0
    opened = bench.plan_requests(bench.Load({32: 50}, (32, 32), rate, seed=0), 32)
    times = [r["at"] for r in opened]
    assert times == sorted(times) and times[0] > 0
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    # 1,600 exponential gaps: their mean is 1/rate within a few percent
    assert statistics.mean(gaps) == pytest.approx(1 / rate, rel=0.1)


@pytest.mark.parametrize("rate", [None, 1e6])  # closed loop; open loop, all arriving at once
def test_level_sends_each_planned_request_once_at_most_one_per_client(bench, monkeypatch, rate):
    load = bench.Load({3: 4}, (2, 9), rate, seed=3)
    sent: list[tuple[str, int]] = []
    flight = {"now": 0, "max": 0}

    async def fake_request(client, url, model, prompt, max_tokens):
        flight["now"] += 1
        flight["max"] = max(flight["max"], flight["now"])
        sent.append((prompt, max_tokens))
        await asyncio.sleep(0.01)  # others arrive meanwhile
        flight["now"] -= 1
        return {"ttft": 0.5, "tpot": 0.1, "tokens": max_tokens, "latency": 1.0}

    monkeypatch.setattr(bench, "one_request", fake_request)
    res = asyncio.run(bench.level("http://unused", "m", 3, load))
    plan = bench.plan_requests(load, 3)
    assert sorted(sent) == sorted((r["prompt"], r["max_tokens"]) for r in plan)
    assert flight["max"] <= 3
    assert res["requests"] == 12
    assert res["mean_tokens"] == pytest.approx(statistics.mean(r["max_tokens"] for r in plan))
    if rate is None:  # closed loop: TTFT is the request's own
        assert res["ttft_p95"] == pytest.approx(0.5)
    else:  # open loop: 12 arrive at once for 3 clients, so the last waited for a free one, and
        # TTFT counts from arrival (the fake request takes >= 10 ms)
        assert res["ttft_p95"] >= 0.5 + 0.005


def test_level_against_a_real_server_gets_every_planned_token(bench, serve):
    url = serve()
    for rate in (None, 200.0):
        load = bench.Load({2: 2}, (2, 5), rate, seed=1)
        res = asyncio.run(bench.level(url, "tiny", 2, load))
        plan = bench.plan_requests(load, 2)
        assert res["requests"] == 4
        # ignore_eos: every answer is exactly its planned max_tokens, whatever the model says
        assert res["mean_tokens"] == pytest.approx(statistics.mean(r["max_tokens"] for r in plan))
