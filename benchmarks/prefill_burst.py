"""Time to first token of a burst: N SmolLM2 chat prompts added at once to one DecodeBatch.

    .venv/bin/python benchmarks/prefill_burst.py                 # 32 prompts, 32 tokens each
    PYTHONPATH=OLD_CHECKOUT/src .venv/bin/python benchmarks/prefill_burst.py   # the same, older code

What the server's schedulers do when N requests arrive together (both run one ``DecodeBatch``):
every prompt is prefilled, at most ``--chunk`` (256) prompt tokens a step, between the decode steps
of the rows already running. Reported: time from the adds to each row's first token (p50, p95,
last) and to the end of all rows. Engine level, no HTTP, so the figure is the prefill schedule's
alone; it uses only the engine's public API, so the same script measures an older checkout
(``PYTHONPATH``) — run the two alternately, the machine is shared. The prefix cache is off (the
prompts share a 30-token system prompt, shorter than one cache block anyway).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _machine import machine  # noqa: E402
from serve import MODEL, TOPICS  # the serving benchmark's prompts

from oficina.infer.engine import PREFILL_CHUNK, DecodeBatch, Engine, SamplingParams


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32, help="prompts in the burst")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per row")
    ap.add_argument("--rounds", type=int, default=1, help="bursts measured, one after another")
    ap.add_argument(
        "--chunk", type=int, default=PREFILL_CHUNK, help="prompt tokens prefilled per step"
    )
    args = ap.parse_args()
    eng = Engine.from_spec(MODEL)
    eng.prefix_cache = None
    print(f"machine: {machine()}")
    prompts = [
        eng.render_chat([{"role": "user", "content": f"Write a short story about {t}."}])
        for t in (TOPICS[i % len(TOPICS)] for i in range(args.rows))
    ]
    lengths = [eng.count_tokens(p) for p in prompts]
    print(f"{args.rows} prompts of {min(lengths)}-{max(lengths)} tokens, {args.tokens} new each")
    eng.generate(prompts[:2], SamplingParams(max_new_tokens=2))  # warm-up
    params = SamplingParams(max_new_tokens=args.tokens, ignore_eos=True)
    for _ in range(args.rounds):
        rows = eng.make_rows(prompts, [params] * args.rows)
        batch = DecodeBatch(eng, max_rows=args.rows, chunk=args.chunk)
        t0 = time.perf_counter()
        for r in rows:
            batch.add(r)
        first: dict[int, float] = {}
        while batch:
            for r, _ in batch.step():
                first.setdefault(id(r), time.perf_counter() - t0)
        total = time.perf_counter() - t0
        ttft = sorted(first.values())
        p95 = ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))]
        load = open("/proc/loadavg").read().split()[0]
        print(
            f"TTFT p50 {statistics.median(ttft):.2f} s, p95 {p95:.2f} s, last {ttft[-1]:.2f} s; "
            f"all rows done {total:.2f} s; load {load}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
