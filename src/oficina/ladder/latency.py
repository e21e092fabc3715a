"""The ladder's latency pass: every measured rung's inference timed the same way, side by side.

A rung's quality pass is timed whenever that rung runs, under whatever load the shared machine
has then (one demo: quantize at 1,403 ms per item under load 6.5, bf16 rungs ~300 ms), and with
its model as it was evaluated, not as it is served (LoRA unmerged). Those figures set the dollar
column and so the pick among tied rungs. So once every rung has run, this pass asks each ok
rung's ``latency_probe`` (``Rung.latency_probe``: its model as served, with its own prompt and
retrieval) to answer the same ``items`` test rows (the first of the test split), round-robin
over the rungs for ``rounds`` rounds (each round starting one rung later, so no rung always runs
first), after one untimed warm-up item each; a rung's latency is the median of its rounds' time
per item. ``LadderContext.retime`` writes it into the result; the quality pass's own figure stays
as ``scoring_s_per_item``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from statistics import median
from typing import Any

from oficina.ladder.context import LadderContext
from oficina.ladder.result import RungResult

# What the pass times with; a test swaps in a clock it advances itself.
clock: Callable[[], float] = time.perf_counter


def method_text(items: int, rounds: int) -> str:
    """The report's line on how latency was measured."""
    return (
        f"Latency: after every rung ran, each ok rung's model as served (LoRA merged, int8 for "
        f"quantize, its own prompt and retrieval) answered the same first {items} test items, "
        f"round-robin over the rungs for {rounds} round{'s' * (rounds != 1)}; the figure is the "
        "median of its rounds' time per item (scoring_s_per_item: the quality pass's own timing)."
    )


def measure_latency(
    ctx: LadderContext, rungs: dict[str, Any], items: int, rounds: int
) -> dict[str, dict]:
    """Time every ok result of ``ctx.results`` whose rung object is in ``rungs`` and retime it.

    Returns ``{rung: {"latency_s_per_item", "rounds_s_per_item"}}``, or ``{"error": ...}`` for
    a rung whose probe failed (its result keeps its quality pass's figure)."""
    rows = ctx.test[:items]
    if not rows or rounds < 1:
        return {}
    results: dict[str, RungResult] = {
        r.name: r for r in ctx.results if r.status == "ok" and r.name in rungs
    }
    out: dict[str, dict] = {}
    probes: dict[str, Callable[[list[dict]], Any]] = {}
    for name, r in results.items():
        try:
            probes[name] = rungs[name].latency_probe(ctx, r)
            probes[name](rows[:1])  # warm-up: lazy loads and first-call kernels are not latency
        except Exception as e:  # a broken probe must not lose the other rungs' figures
            probes.pop(name, None)
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    times: dict[str, list[float]] = {name: [] for name in probes}
    tokens: dict[str, float | None] = {}
    names = list(probes)
    for i in range(rounds if names else 0):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t0 = clock()
            res = probes[name](rows)
            times[name].append((clock() - t0) / len(rows))
            if isinstance(res, dict) and "prompt_tokens_mean" in res:
                tokens[name] = float(res["prompt_tokens_mean"])
    for name, ts in times.items():
        ctx.retime(results[name], median(ts), tokens.get(name))
        out[name] = {"latency_s_per_item": median(ts), "rounds_s_per_item": ts}
    probes.clear()  # the served models go before the report is written
    return out
