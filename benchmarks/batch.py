"""Bulk (offline) inference throughput: batch 1 vs 16, int8 vs float32, and llama.cpp.

    .venv/bin/python benchmarks/batch.py [--quick]

Same 16 prompts, same number of new tokens (EOS ignored so every row costs the same), greedy,
SmolLM2-135M on the engine that ``oficina batch`` uses. int8 is ``oficina quantize --method
int8`` (weight-only int8, ``oficina.infer.int8``), measured at batch 1 and 16 next to float32.
llama.cpp (llama-cpp-python, when installed) runs ``oficina quantize --method gguf`` exports
(f32: same numbers, other runtime; q8_0: the default export) one prompt at a time on the same
token ids with as many threads as torch uses, in the same run, as a ratio to fp32 batch 1.
"""

from __future__ import annotations

import argparse
import time

from _machine import machine, openmp_as  # noqa: E402

OPENMP = openmp_as("batch")  # as `oficina batch` runs: before torch loads


def throughput(eng, prompts, n, batch):
    from oficina.infer.engine import SamplingParams

    p = SamplingParams(max_new_tokens=n)
    t0 = time.perf_counter()
    toks = 0
    for i in range(0, len(prompts), batch):
        toks += sum(c.completion_tokens for c in eng.generate(prompts[i : i + batch], p))
    return toks / (time.perf_counter() - t0)


def llama_rows(eng, prompts, n) -> list[tuple[str, float]]:
    """llama.cpp tokens/s (batch 1, the prompts in turn) for the f32 and q8_0 GGUF exports of the
    engine's model, in a child process with llama.cpp's default OpenMP environment."""
    import tempfile
    from pathlib import Path

    from oficina.infer.gguf_export import export_gguf, llama_tokens_per_s

    ids = [eng.encode(p) for p in prompts]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for kind in ("f32", "q8_0"):
            path = Path(d) / f"model-{kind}.gguf"
            export_gguf(eng.path, path, kind)
            rows.append((kind, llama_tokens_per_s(path, ids, n)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer tokens")
    args = ap.parse_args()
    n = 12 if args.quick else 32
    where = machine()
    import torch

    from oficina.infer.engine import Engine, SamplingParams
    from oficina.infer.int8 import quantize_int8

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
    from oficina.infer.gguf_export import llama_cpp_version

    version = llama_cpp_version()
    lrows = llama_rows(eng, prompts, n) if version else []

    print(f"machine: {where}; OpenMP wait: {OPENMP}")
    print(f"model: smollm2-135m-instruct, 16 prompts x {n} new tokens, greedy")
    print(f"{'figure':<34}{'value':>10}{'peer':>10}{'ratio':>8}")
    print(f"{'fp32 tokens/s batch 16 vs 1':<34}{f16:>10.1f}{f1:>10.1f}{f16 / f1:>8.2f}")
    print(f"{'int8 tokens/s batch 16 vs 1':<34}{q16:>10.1f}{q1:>10.1f}{q16 / q1:>8.2f}")
    print(f"{'int8 vs fp32 tokens/s, batch 1':<34}{q1:>10.1f}{f1:>10.1f}{q1 / f1:>8.2f}")
    print(f"{'int8 vs fp32 tokens/s, batch 16':<34}{q16:>10.1f}{f16:>10.1f}{q16 / f16:>8.2f}")
    threads = torch.get_num_threads()
    if not version:
        print("llama.cpp: not measured (llama-cpp-python is not installed)")
    for kind, v in lrows:
        label = f"llama.cpp {kind} vs fp32, batch 1"
        print(f"{label:<34}{v:>10.1f}{f1:>10.1f}{v / f1:>8.2f}")
    for kind, v in lrows[1:]:
        label = f"llama.cpp {kind} vs int8, batch 1"
        print(f"{label:<34}{v:>10.1f}{q1:>10.1f}{v / q1:>8.2f}")
    if lrows:
        print(f"llama.cpp: llama-cpp-python {version}, {threads} threads, as torch uses")


if __name__ == "__main__":
    main()
