"""Prefix caching: time to first token of a few-shot prompt with its shared prefix cached vs not.

The prompts are the demo task's few-shot shape (``oficina.demo_domain.TEMPLATE``): the same k
training examples (answered) before a different test passage each time — what the few-shot rung
sends on every request. Each prompt is timed twice in the same run, alternating: with the
engine's prefix cache off (every token prefilled) and on, after one warm-up request has stored
the examples' blocks. Time to first token = prefill + the first sampled token
(``max_new_tokens=1``). The first token and its log-probability are checked to agree.

    .venv/bin/python benchmarks/prefix_cache.py              # 8 prompts, k=4
    .venv/bin/python benchmarks/prefix_cache.py --quick      # 4 prompts
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _machine import machine  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def _rows(split: str) -> list[dict]:
    path = ROOT / "examples" / "demo" / "task" / f"{split}.jsonl"
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="4 prompts instead of 8")
    ap.add_argument("--k", type=int, default=4, help="few-shot examples in the shared prefix")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()

    import torch

    from oficina.demo_domain import TEMPLATE
    from oficina.infer.engine import Engine, SamplingParams
    from oficina.infer.prefix_cache import PrefixCache

    print(machine(), flush=True)
    eng = Engine.from_spec(args.model)
    shots = "\n\n".join(
        TEMPLATE.format(text=r["text"]) + " " + r["label"] for r in _rows("train")[: args.k]
    )
    tests = _rows("test")[: 4 if args.quick else 8]
    prompts = [shots + "\n\n" + TEMPLATE.format(text=r["text"]) for r in tests]
    params = SamplingParams(max_new_tokens=1, logprobs=0)
    cache = PrefixCache()
    eng.model_hash  # noqa: B018 — hashed once here, not inside the first timed request

    def ttft(prompt: str, pc: PrefixCache | None):
        eng.prefix_cache = pc
        t = time.perf_counter()
        c = eng.generate([prompt], params)[0]
        return time.perf_counter() - t, c

    # warm-up: the kernels, then the one request that stores the examples' blocks
    ttft(prompts[0], None)
    ttft(_rows("test")[-1]["text"], None)
    ttft(shots + "\n\n" + TEMPLATE.format(text=_rows("validation")[0]["text"]), cache)
    off, on, worst = [], [], 0.0
    for p in prompts:
        t_off, c_off = ttft(p, None)
        t_on, c_on = ttft(p, cache)
        assert c_on.token_ids == c_off.token_ids, "a cached prefix changed the first token"
        worst = max(worst, abs(c_on.logprobs[0].logprob - c_off.logprobs[0].logprob))
        off.append(t_off)
        on.append(t_on)
    n_prompt = [len(eng.encode(p)) for p in prompts]
    n_shared = len(eng.encode(shots))
    s = cache.stats()
    print(
        f"{args.model} float32, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{len(prompts)} prompts of {min(n_prompt)}-{max(n_prompt)} tokens, "
        f"{args.k} examples = {n_shared} shared tokens, block {cache.block}"
    )
    print(f"TTFT without the prefix cache: median {statistics.median(off) * 1000:7.1f} ms")
    print(f"TTFT with the prefix cached:   median {statistics.median(on) * 1000:7.1f} ms")
    print(
        f"speed-up {statistics.median(off) / statistics.median(on):.1f}x; "
        f"reused {s['hit_tokens'] // max(1, s['hits'])} tokens per hit ({s['hits']} hits), "
        f"cache {s['bytes'] / 2**20:.1f} MB; first-token logprob max |diff| {worst:.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
