"""Weight-only int8 against float32, bf16, the old torch.ao dynamic int8 and llama.cpp q8_0.

    .venv/bin/python benchmarks/int8.py [--tokens 64] [--rounds 3] [--perplexity]

SmolLM2-135M-Instruct, batch 1, greedy, a fixed number of new tokens (EOS ignored): tokens/s
as ``oficina quantize`` measures it (prefill of a short prompt + N tokens), the median of
``--rounds`` rounds that visit every variant in turn (the machine is shared: interleaving
spreads the load over all of them). Variants:

* float32 and bf16: the float model;
* torch.ao dynamic int8 (what ``oficina quantize --method int8`` did before; deprecated in
  torch 2.13), with its skip list (lm_head, down_proj) — built here only as the comparison;
* weight-only int8 (``oficina.infer.int8``), loaded from the int8 directory the verb writes,
  with float32 and with bf16 activations;
* llama.cpp q8_0 (llama-cpp-python, when installed) on ``oficina quantize --method gguf``'s
  export, with as many threads as torch uses.

Sizes: the directory / file on disk, and the model's state serialized in memory (what RAM
holds). ``--perplexity`` adds the demo validation perplexity (40 texts, the engine's definition)
of each PyTorch variant.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import warnings
from pathlib import Path

from _machine import machine, openmp_as  # noqa: E402

OPENMP = openmp_as("quantize")  # as `oficina quantize` runs: before torch loads

TEXTS = Path(__file__).resolve().parents[1] / "examples/demo/task/validation.jsonl"


def torch_ao_int8(model):
    """The previous ``quantize_int8``: torch.ao dynamic int8, lm_head and down_proj kept float."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.backends.quantized.engine = (
        "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"
    )
    spec = {
        n: per_channel_dynamic_qconfig
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.endswith(("lm_head", "down_proj"))
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all variants")
    ap.add_argument("--perplexity", action="store_true", help="also score the demo texts")
    args = ap.parse_args()
    where = machine()
    import torch

    from oficina.infer import gguf_export as gx
    from oficina.infer.engine import Engine
    from oficina.infer.int8 import quantize_int8, save_int8
    from oficina.infer.quantize import BENCH_PROMPT, dir_bytes, state_bytes, tokens_per_s

    spec = "smollm2-135m-instruct"
    f32 = Engine.from_spec(spec)
    tmp = Path(tempfile.mkdtemp(prefix="oficina-int8-bench-"))
    try:
        qdir = tmp / "int8"
        shutil.copytree(f32.path, qdir, ignore=shutil.ignore_patterns("*.safetensors", ".*"))
        save_int8(quantize_int8(f32.model), qdir, source=str(f32.path))
        variants = {
            "float32": f32,
            "bf16": Engine.from_spec(spec, dtype="bfloat16"),
            "torch.ao dynamic int8 (old)": Engine(torch_ao_int8(f32.model), f32.tokenizer),
            "int8 weight-only, f32 act.": Engine.from_spec(str(qdir)),
            "int8 weight-only, bf16 act.": Engine.from_spec(str(qdir), dtype="bfloat16"),
        }
        sizes = {
            "float32": (dir_bytes(f32.path), state_bytes(f32.model)),
            "bf16": (None, state_bytes(variants["bf16"].model)),
            "torch.ao dynamic int8 (old)": (
                dir_bytes(f32.path),  # it stored the float weights + a recipe
                state_bytes(variants["torch.ao dynamic int8 (old)"].model),
            ),
            "int8 weight-only, f32 act.": (
                dir_bytes(qdir),
                state_bytes(variants["int8 weight-only, f32 act."].model),
            ),
        }
        version = gx.llama_cpp_version()
        gguf = None
        if version:
            gguf = tmp / "q8_0.gguf"
            gx.export_gguf(f32.path, gguf, "q8_0")
            prompt_ids = f32.encode(BENCH_PROMPT)
            sizes["llama.cpp q8_0"] = (gguf.stat().st_size, None)
        speeds: dict[str, list[float]] = {k: [] for k in [*variants, "llama.cpp q8_0"]}
        for _ in range(args.rounds):
            for name, eng in variants.items():
                speeds[name].append(tokens_per_s(eng, args.tokens))
            if gguf is not None:  # a child process, llama.cpp's own OpenMP environment
                speeds["llama.cpp q8_0"].append(
                    gx.llama_tokens_per_s(gguf, [prompt_ids], args.tokens)
                )
        ppl = {}
        if args.perplexity:
            rows = [json.loads(x) for x in TEXTS.read_text().splitlines() if x.strip()]
            texts = [r["text"] for r in rows if r.get("text")][:40]
            ppl = {name: eng.perplexity(texts, 1024) for name, eng in variants.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"machine: {where}; OpenMP wait: {OPENMP}")
    print(f"loadavg at end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(
        f"model: {spec}, batch 1, greedy, prefill + {args.tokens} new tokens, median of "
        f"{args.rounds} interleaved rounds"
    )
    base = statistics.median(speeds["float32"])
    head = f"{'variant':<30}{'tok/s':>8}{'vs f32':>8}{'min-max':>14}{'disk MB':>9}{'RAM MB':>8}"
    print(head + ("  perplexity" if ppl else ""))
    for name, got in speeds.items():
        if not got:
            continue
        med = statistics.median(got)
        disk, ram = sizes.get(name, (None, None))
        mb = lambda b: f"{b / 1e6:.0f}" if b else "-"  # noqa: E731
        line = f"{name:<30}{med:>8.1f}{med / base:>8.2f}{f'{min(got):.1f}-{max(got):.1f}':>14}"
        line += f"{mb(disk):>9}{mb(ram):>8}"
        if name in ppl:
            line += f"  {ppl[name]:.3f} ({ppl[name] / ppl['float32'] - 1:+.2%})"
        print(line)
    threads = torch.get_num_threads()
    if version:
        print(f"llama.cpp: llama-cpp-python {version}, {threads} threads, as torch uses")
    else:
        print("llama.cpp: not measured (llama-cpp-python is not installed)")


if __name__ == "__main__":
    main()
