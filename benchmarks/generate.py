"""Generation speed of the packaged SmolLM2-135M on this machine: batch 1 vs batch 8, cached load.

    .venv/bin/python benchmarks/generate.py [--quick]

Prints one table: cached load time, decode tokens/s at batch 1 and aggregate tokens/s at
batch 8 (8 different prompts, greedy, same number of new tokens each), with the ratio, and the
machine (CPU, cores, load average at start).
"""

from __future__ import annotations

import argparse
import os
import time

from _machine import machine  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


PROMPTS = [
    "What is the capital of France?",
    "Explain what a Python list comprehension is.",
    "Write a haiku about the sea.",
    "What does the 'with' statement do in Python?",
    "Name three fruits that are drupes.",
    "How do I reverse a string in Python?",
    "What is a decorator?",
    "Why is the sky blue?",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer tokens")
    args = ap.parse_args()
    n = 16 if args.quick else 64
    where = machine()
    from oficina.infer.engine import Engine, SamplingParams
    from oficina.models.sources import resolve

    resolve(
        "smollm2-135m-instruct"
    )  # converted once into the cache; timed below is the cached load
    t0 = time.perf_counter()
    eng = Engine.from_spec("smollm2-135m-instruct")
    load_s = time.perf_counter() - t0
    prompts = [eng.render_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    # Fixed length: no stop at EOS, so both sides generate exactly n tokens per row.
    eng.eos_ids = set()
    params = SamplingParams(max_new_tokens=n)
    eng.generate(prompts[:1], SamplingParams(max_new_tokens=4))  # warm-up

    t0 = time.perf_counter()
    c1 = eng.generate(prompts[:1], params)
    b1 = sum(c.completion_tokens for c in c1) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    c8 = eng.generate(prompts, params)
    b8 = sum(c.completion_tokens for c in c8) / (time.perf_counter() - t0)

    print(f"machine: {where}")
    print(
        f"model: smollm2-135m-instruct (134,515,008 parameters, float32), {n} new tokens per row, greedy"
    )
    print(f"{'figure':<40}{'value':>12}{'peer':>12}{'ratio':>8}")
    print(f"{'cached load time (s)':<40}{load_s:>12.2f}{'':>12}{'':>8}")
    print(f"{'tokens/s batch 1':<40}{b1:>12.1f}{'':>12}{'':>8}")
    print(f"{'tokens/s batch 8 (aggregate) vs batch 1':<40}{b8:>12.1f}{b1:>12.1f}{b8 / b1:>8.2f}")


if __name__ == "__main__":
    main()
