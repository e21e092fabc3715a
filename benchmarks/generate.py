"""Batch-1 decode speed of SmolLM2-135M: Oficina's engine vs its peers, in one run.

    .venv/bin/python benchmarks/generate.py [--quick] [--int8 DIR] [--repeats 3] [--no-llama]
        [--compile] [--unfused] [--both-threads]

Prints one table of tokens/s (one prompt, greedy, EOS ignored so every peer makes exactly the
same number of tokens; prefill of the short prompt included) for:
  * Oficina float32 and bfloat16 (``Engine.generate``, the path every verb uses), next to
    plain ``transformers`` ``model.generate`` on the very same model object (so float32
    ``generate`` also reads the column-major weights of ``oficina.infer.layout`` and runs the
    fused projections of ``oficina.infer.fuse``), and
    ``generate`` on the float32 model loaded the usual way (row-major, as transformers has it);
  * Oficina int8, when ``--int8 DIR`` names an ``oficina quantize --method int8`` output
    (``Engine.from_spec`` on it: batch 1 runs the weight-only int8 kernel of
    ``oficina.infer.int8``), and the same on the opt-in dynamic kernel
    (``OFICINA_INT8_DECODE=dynamic``: activations quantized per row, fbgemm's VNNI kernel);
  * llama.cpp (llama-cpp-python) on ``oficina quantize --method gguf`` exports, f32 and q8_0,
    same token ids, as many threads as torch uses, each figure timed in a child process with
    llama.cpp's default OpenMP environment (this process sets OMP_WAIT_POLICY=PASSIVE for torch;
    under it llama.cpp decoded 3x slower on 2 threads);
  * Oficina float32 batch 8 aggregate, as the ratio to batch 1;
  * with ``--compile``, Oficina float32 and bfloat16 with their decode steps compiled
    (``Engine.compile_decode``; the compile happens in the untimed warm-up), and with
    ``--int8`` too, the int8 directory compiled, on both one-row kernels (the dynamic one is fbgemm called from inside the
    compiled graph: ``oficina.infer.int8``'s ``int8_linear_dynamic`` op);
  * with ``--unfused``, Oficina float32 and int8 (and, with ``--compile``, their compiled
    steps) also on engines loaded with ``fuse=False``: q/k/v and gate/up as separate matmuls,
    as before ``oficina.infer.fuse`` — the before/after of the fusion, measured in turn;
  * with ``--both-threads``, every Oficina batch-1 figure of int8 and bfloat16 twice: its
    one-row decode steps on one thread and on torch's count (``oficina.infer.engine.
    DECODE_THREADS`` = 1 and 0, instead of the default rule of ``Engine.decode_threads``:
    one thread for the dynamic int8 kernel only; float32's always on torch's), a compiled step
    on its own copy of the model for each count so that its graph is compiled for that count
    (inductor fixes it at compile time), and llama.cpp on one thread too — one thread against
    two for every path, in one run.
Each figure is the best of ``--repeats`` runs taken in turn (the machines are shared: the best
run is the one least disturbed), with the load average before and after.
"""

from __future__ import annotations

import argparse
import time

from _machine import machine, openmp_as  # noqa: E402

OPENMP = openmp_as("generate")  # as `oficina generate` runs: before torch loads

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


def _loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def oficina_rate(eng, prompts: list[str], n: int) -> float:
    from oficina.infer.engine import SamplingParams

    t0 = time.perf_counter()
    out = eng.generate(prompts, SamplingParams(max_new_tokens=n, ignore_eos=True))
    return sum(c.completion_tokens for c in out) / (time.perf_counter() - t0)


def int8_rate(eng, prompts: list[str], n: int, kernel: str) -> float:
    from oficina.infer import int8

    before, int8.DECODE_KERNEL = int8.DECODE_KERNEL, kernel
    try:
        return oficina_rate(eng, prompts, n)
    finally:
        int8.DECODE_KERNEL = before


def hf_rate(eng, prompt: str, n: int) -> float:
    import torch

    enc = eng.tokenizer(prompt, return_tensors="pt")
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = eng.model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=eng.tokenizer.pad_token_id,
        )
    return (out.shape[1] - enc.input_ids.shape[1]) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer tokens")
    ap.add_argument("--int8", help="an `oficina quantize --method int8` output directory")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also Oficina float32 and bfloat16 (and int8) with a compiled decode step",
    )
    ap.add_argument(
        "--unfused",
        action="store_true",
        help="also float32/int8 engines without fused q/k/v and gate/up (oficina.infer.fuse)",
    )
    ap.add_argument(
        "--both-threads",
        action="store_true",
        help="also int8/bf16 batch-1 decode on torch's thread count, llama.cpp on 1 thread too",
    )
    args = ap.parse_args()
    n = 16 if args.quick else 64
    where = machine()
    import torch

    from oficina.infer import engine as engine_mod
    from oficina.infer.engine import Engine
    from oficina.models.sources import load_causal_lm, resolve

    resolve("smollm2-135m-instruct")  # converted once into the cache; timed is the cached load
    t0 = time.perf_counter()
    f32 = Engine.from_spec("smollm2-135m-instruct")
    load_s = time.perf_counter() - t0
    engines = {"float32": f32, "bfloat16": Engine.from_spec("smollm2-135m-instruct", "bfloat16")}
    plain = Engine(load_causal_lm("smollm2-135m-instruct")[0], f32.tokenizer)  # row-major
    if args.int8:
        engines["int8"] = Engine.from_spec(args.int8)
    if args.unfused:
        engines["float32, unfused"] = Engine.from_spec("smollm2-135m-instruct", fuse=False)
        if args.int8:
            engines["int8, unfused"] = Engine.from_spec(args.int8, fuse=False)
    threads = torch.get_num_threads()
    all_threads = f", decode on {threads} threads"  # the label of DECODE_THREADS = 0 figures
    one_thread = ", decode on 1 thread"  # DECODE_THREADS = 1
    if args.compile:  # same weights, decode step through torch.compile (compiled at warm-up)
        # int8: one graph per one-row kernel (the kernel switch is guarded on)
        for name in [n for n in engines if n.split(",")[0] in ("float32", "bfloat16", "int8")]:
            e = engines[name]
            kind = name.split(",")[0]
            compiled = name.replace(kind, f"{kind} compiled", 1)
            engines[compiled] = Engine(e.model, e.tokenizer, path=e.path)
            engines[compiled].compile_decode()
            if args.both_threads and e.narrow_weights:  # own model: else dynamo reuses the graph
                twin = Engine.from_spec(str(e.path), fuse="unfused" not in name)
                engines[compiled + all_threads] = Engine(twin.model, twin.tokenizer, path=e.path)
                engines[compiled + all_threads].compile_decode()
    prompts = [f32.render_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    one = prompts[:1]

    def on_threads(fn, n: int):
        def run() -> float:
            before, engine_mod.DECODE_THREADS = engine_mod.DECODE_THREADS, n
            try:
                return fn()
            finally:
                engine_mod.DECODE_THREADS = before

        return run

    # (figure, function) measured in turn, best of --repeats
    runs = []
    for name, eng in engines.items():
        if name.startswith("int8"):  # each int8 engine on both one-row kernels
            ours = [
                (f"Oficina {name}", lambda e=eng: int8_rate(e, one, n, "weight-only")),
                (f"Oficina {name}, dynamic kernel", lambda e=eng: int8_rate(e, one, n, "dynamic")),
            ]
        else:
            ours = [(f"Oficina {name}", lambda e=eng: oficina_rate(e, one, n))]
        if name.endswith(all_threads):  # a compiled twin: all its figures on all threads
            ours = [
                (label.replace(all_threads, "") + all_threads, on_threads(fn, 0))
                for label, fn in ours
            ]
        elif args.both_threads and eng.narrow_weights:  # on one thread (the compiled: its own)
            alone = [(label + one_thread, on_threads(fn, 1)) for label, fn in ours]
            if "compiled" not in name:  # eager: both counts on the same engine
                alone += [(label + all_threads, on_threads(fn, 0)) for label, fn in ours]
            ours = alone
        runs += ours
        if name in ("float32", "bfloat16"):
            runs.append((f"transformers generate {name}", lambda e=eng: hf_rate(e, one[0], n)))
    runs.append(("transformers generate float32, row-major", lambda: hf_rate(plain, one[0], n)))
    runs.append(("Oficina float32 batch 8 (aggregate)", lambda: oficina_rate(f32, prompts, n)))
    from oficina.infer.gguf_export import llama_cpp_version

    version = None if args.no_llama else llama_cpp_version()
    if version:
        runs += llama_runs(
            f32, one[0], n, (None, 1) if args.both_threads and threads > 1 else (None,)
        )
    for _, fn in runs:  # warm-up: first calls allocate buffers, pick kernels
        fn()
    load_before = _loadavg()
    best: dict[str, float] = {}
    for _ in range(max(1, args.repeats)):
        for label, fn in runs:
            best[label] = max(best.get(label, 0.0), fn())
    load_after = _loadavg()

    base = best["Oficina float32"]
    print(f"machine: {where}; OpenMP wait: {OPENMP}")
    print(f"loadavg before / after the timed runs: {load_before} / {load_after}")
    print(f"model: smollm2-135m-instruct, batch 1, {n} new tokens, greedy, best of {args.repeats}")
    print(f"cached load time: {load_s:.2f} s")
    print(f"{'figure':<58}{'tokens/s':>10}{'vs Oficina f32':>16}")
    for label, v in best.items():
        print(f"{label:<58}{v:>10.1f}{v / base:>16.2f}")
    if "int8" not in engines:
        print("int8: not measured (pass --int8 DIR from `oficina quantize --method int8`)")
    if version:
        print(
            f"llama.cpp: llama-cpp-python {version}, {threads} threads unless labelled, "
            "its default OpenMP wait policy (a child process)"
        )
    elif not args.no_llama:
        print("llama.cpp: not measured (llama-cpp-python is not installed: make llama)")
    rule = "one thread for the dynamic int8 kernel, torch's count otherwise"
    if engine_mod.DECODE_THREADS is not None:  # OFICINA_DECODE_THREADS set
        rule = f"{engine_mod.DECODE_THREADS or threads} thread(s) for int8/bf16"
    print(f"Oficina: batch-1 decode steps on {rule}; everything else on {threads}, unless labelled")


def llama_runs(eng, prompt: str, n: int, threads: tuple[int | None, ...] = (None,)) -> list:
    """(label, fn) for llama.cpp on the f32 and q8_0 GGUF exports of the engine's model (each
    exported once), on each count of ``threads`` (None: torch's count). Each call times one
    generation in a child process with llama.cpp's default OpenMP environment
    (``gguf_export.llama_tokens_per_s``: not this process's OMP_WAIT_POLICY=PASSIVE)."""
    import tempfile
    from pathlib import Path

    from oficina.infer.gguf_export import export_gguf, llama_tokens_per_s

    ids = eng.encode(prompt)
    d = tempfile.mkdtemp(prefix="oficina-bench-")
    out = []
    for kind in ("f32", "q8_0"):
        path = Path(d) / f"model-{kind}.gguf"
        export_gguf(eng.path, path, kind)
        for t in threads:

            def run(path=path, t=t) -> float:
                return llama_tokens_per_s(path, [ids], n, threads=t)

            out.append((f"llama.cpp {kind}" + (f", {t} thread(s)" if t else ""), run))
    return out


if __name__ == "__main__":
    main()
