"""Bulk (offline) inference throughput: batch 1 vs batch 16, and dynamic int8 vs float32.

    .venv/bin/python benchmarks/batch.py [--quick]

Same 16 prompts, same number of new tokens (EOS ignored so every row costs the same), greedy,
SmolLM2-135M on the engine that ``oficina batch`` uses. int8 is ``oficina quantize --method
int8`` (torch.ao dynamic quantization of nn.Linear), measured at batch 1 and 16 next to float32.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} cores, loadavg at start {open('/proc/loadavg').read().split()[:3]}"


def throughput(eng, prompts, n, batch):
    from oficina.infer.engine import SamplingParams

    p = SamplingParams(max_new_tokens=n)
    t0 = time.perf_counter()
    toks = 0
    for i in range(0, len(prompts), batch):
        toks += sum(c.completion_tokens for c in eng.generate(prompts[i : i + batch], p))
    return toks / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer tokens")
    args = ap.parse_args()
    n = 12 if args.quick else 32
    where = machine()
    from oficina.infer.engine import Engine, SamplingParams
    from oficina.infer.quantize import quantize_int8

    eng = Engine.from_spec("smollm2-135m-instruct")
    eng.eos_ids = set()
    prompts = [
        f"Question {i}: what is item number {i} in a list of Python keywords?" for i in range(16)
    ]
    eng.generate(prompts[:2], SamplingParams(max_new_tokens=2))  # warm-up
    f1 = throughput(eng, prompts, n, 1)
    f16 = throughput(eng, prompts, n, 16)
    q = Engine(quantize_int8(eng.model), eng.tokenizer, name="int8", path=eng.path)
    q.eos_ids = set()
    q.generate(prompts[:2], SamplingParams(max_new_tokens=2))
    q1 = throughput(q, prompts, n, 1)
    q16 = throughput(q, prompts, n, 16)

    print(f"machine: {where}")
    print(f"model: smollm2-135m-instruct, 16 prompts x {n} new tokens, greedy")
    print(f"{'figure':<34}{'value':>10}{'peer':>10}{'ratio':>8}")
    print(f"{'fp32 tokens/s batch 16 vs 1':<34}{f16:>10.1f}{f1:>10.1f}{f16 / f1:>8.2f}")
    print(f"{'int8 tokens/s batch 16 vs 1':<34}{q16:>10.1f}{q1:>10.1f}{q16 / q1:>8.2f}")
    print(f"{'int8 vs fp32 tokens/s, batch 1':<34}{q1:>10.1f}{f1:>10.1f}{q1 / f1:>8.2f}")
    print(f"{'int8 vs fp32 tokens/s, batch 16':<34}{q16:>10.1f}{f16:>10.1f}{q16 / f16:>8.2f}")


if __name__ == "__main__":
    main()
