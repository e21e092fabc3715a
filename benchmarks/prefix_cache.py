"""Prefix caching: time to first token of a few-shot prompt with its shared prefix cached vs not.

The prompts are the demo task's few-shot shape (``oficina.demo_domain.TEMPLATE``): the same k
training examples (answered) before a different test passage each time — what the few-shot rung
sends on every request. Each prompt is timed twice in the same run, alternating: with the
engine's prefix cache off (every token prefilled) and on, after one warm-up request has stored
the examples' blocks. Time to first token = prefill + the first sampled token
(``max_new_tokens=1``). The first token and its log-probability are checked to agree.

    .venv/bin/python benchmarks/prefix_cache.py              # 8 prompts, k=4
    .venv/bin/python benchmarks/prefix_cache.py --quick      # 4 prompts

``--rung few_shot[,few_shot_rag]`` measures instead the demo ladder's rungs themselves
(``examples/ladder.yaml``: SmolLM2, the demo task, 3 shots picked by similarity): each rung's
``run`` on a real ``LadderContext``, scoring every test item through the scoring kernel, with the
base engine's prefix cache off and on (a fresh cache of ``OFICINA_PREFIX_CACHE_MB``, as a ladder
process starts with), in turn within the same run (``--rounds``, the order alternating). Reported:
the rung's latency per item (what the ladder's inference cost is computed from) and its total
scoring time, and that predictions are identical. ``--strategy fixed`` gives the rungs the same
examples for every item (the case a prefix cache is built for).

    .venv/bin/python benchmarks/prefix_cache.py --rung few_shot,few_shot_rag --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _machine import machine, openmp_as  # noqa: E402

OPENMP = openmp_as("serve")  # as `oficina serve` runs: before torch loads
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
    ap.add_argument("--rung", help="demo ladder rungs to time instead: few_shot,few_shot_rag")
    ap.add_argument("--strategy", help="the rungs' example strategy (default: the config's)")
    ap.add_argument("--rounds", type=int, default=2, help="off/on pairs per rung (--rung)")
    ap.add_argument("--limit-test", type=int, help="score only this many test items (--rung)")
    args = ap.parse_args()
    if args.rung:
        return rungs(args)

    import torch

    from oficina.demo_domain import TEMPLATE
    from oficina.infer.engine import Engine, SamplingParams
    from oficina.infer.prefix_cache import PrefixCache

    print(f"{machine()}; OpenMP wait: {OPENMP}", flush=True)
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


def rungs(args) -> int:
    """The demo ladder's prompting rungs, prefix cache off vs on (see the module docstring)."""
    import tempfile

    os.environ["OFICINA_HOME"] = tempfile.mkdtemp(prefix="oficina-bench-")  # runs go there
    import torch

    from oficina.config import load_yaml
    from oficina.infer.prefix_cache import PrefixCache, shared_prefix_cache
    from oficina.ladder.context import LadderContext
    from oficina.ladder.run import LadderConfig, load_task
    from oficina.ladder.rungs import REGISTRY
    from oficina.workspace import start_run

    os.chdir(ROOT)  # the config's paths are relative to the repository
    raw = load_yaml("examples/ladder.yaml")
    raw.update(out=os.environ["OFICINA_HOME"] + "/ladder", limit_test=args.limit_test)
    cfg = LadderConfig(**raw)
    task, corpus = load_task(cfg)
    print(f"{machine()}; OpenMP wait: {OPENMP}", flush=True)
    with start_run("ladder", cfg) as run:
        ctx = LadderContext(cfg, run, task, corpus)
        eng = ctx.base_engine()
        eng.model_hash  # noqa: B018 — hashed once here, not inside the first timed rung
        size = shared_prefix_cache().max_bytes
        for name in args.rung.split(","):
            settings = getattr(cfg.rungs, name)
            if args.strategy:
                settings = settings.model_copy(update={"strategy": args.strategy})
            rung = REGISTRY[name](settings)
            eng.prefix_cache = None
            rung.run(ctx)  # warm-up: kernels, embeddings of the examples, the retrieval index
            times: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
            preds, stats = {}, {}
            for k in range(max(1, args.rounds)):
                for mode in ("off", "on") if k % 2 == 0 else ("on", "off"):
                    cache = PrefixCache(size) if mode == "on" else None
                    eng.prefix_cache = cache
                    t = time.perf_counter()
                    r = rung.run(ctx)
                    wall = time.perf_counter() - t
                    times[mode].append((r.inference.latency_s_per_item * 1000, wall))
                    preds.setdefault(mode, r.predictions)
                    if cache is not None:
                        stats = cache.stats()
            eng.prefix_cache = None
            assert preds["on"] == preds["off"], "the prefix cache changed a prediction"
            n = len(preds["on"])
            tokens = r.inference.prompt_tokens_mean * n
            print(
                f"{name} ({r.description.split(': ')[-1]}), {n} items, {r.inference.prompt_tokens_mean:.0f} "
                f"prompt tokens each; {args.model} float32, {torch.get_num_threads()} threads, "
                f"{len(times['on'])} rounds; predictions identical"
            )
            for mode in ("off", "on"):
                lat = statistics.mean(x for x, _ in times[mode])
                wall = statistics.mean(w for _, w in times[mode])
                print(
                    f"  prefix cache {mode:>3}: {lat:7.0f} ms per item (the ladder's latency), "
                    f"rung {wall:6.1f} s  rounds: " + ", ".join(f"{x:.0f}" for x, _ in times[mode])
                )
            off = statistics.mean(x for x, _ in times["off"])
            on = statistics.mean(x for x, _ in times["on"])
            print(
                f"  {off / on:.2f}x; reused {stats['hit_tokens']} of {tokens:.0f} prompt tokens "
                f"({stats['hit_tokens'] / tokens:.0%}), cache {stats['bytes'] / 2**20:.0f} of "
                f"{size / 2**20:.0f} MB, {stats['evictions']} blocks evicted",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
