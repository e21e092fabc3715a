"""Many LoRA adapters on one base: a shared-base batch vs each adapter served as its own model.

    .venv/bin/python benchmarks/multi_lora.py                 # 8 clients, 3 adapters + base
    .venv/bin/python benchmarks/multi_lora.py --clients 8 --requests 2 --max-tokens 32

SmolLM2-135M (float32) with 3 random LoRA adapters made here with PEFT (rank 16 on q/k/v/o,
``init_lora_weights=False`` so B is non-zero and each adapter changes the output; the speed of a
LoRA does not depend on whether it was trained). ``--clients`` clients, spread evenly over the
base and the adapters, each send ``--requests`` greedy requests back to back (``ignore_eos``, so
every answer is exactly ``--max-tokens`` tokens) to the server's own continuous scheduler
(``oficina.serve.scheduler.Scheduler``, in process: the batching is what is measured, not HTTP).
Two setups, measured one after the other in the same run:

  * **shared base** — what ``oficina serve BASE a=BASE+AD1 ...`` now does
    (``oficina.serve.config.load_engines`` -> ``oficina.infer.adapters.load_shared``): one model
    in memory, one DecodeBatch whose rows pick their adapter;
  * **separate models** — what it did before: one engine (and one batch) per served id, the
    base loaded once per adapter;
  * **base only** (reference, not a peer) — every client on the bare base, one plain batch: the
    price the adapters' low-rank terms and PEFT's per-row routing add to a batch.

Reported: output tokens/s, requests/s, the weights in memory, and the load average at the start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from _machine import machine

MODEL = "smollm2-135m-instruct"
PROMPT = "Write a short story about {}."
TOPICS = ["the ocean", "a lighthouse", "a busy market", "an old library", "a river", "a violin"]


def make_adapters(n: int, out: Path) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model

    from oficina.models.sources import load_causal_lm

    dirs = []
    for k in range(n):
        torch.manual_seed(k + 1)
        model, _ = load_causal_lm(MODEL)
        peft = get_peft_model(
            model,
            LoraConfig(
                r=16,
                lora_alpha=16,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                init_lora_weights=False,
            ),
        )
        d = out / f"adapter{k + 1}"
        peft.save_pretrained(d)
        dirs.append(d)
    return dirs


def weights_mb(engines: dict) -> float:
    seen, total = set(), 0
    for e in engines.values():
        for p in e.model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
    return total / 2**20


async def run(engines: dict, clients: int, requests: int, max_tokens: int) -> dict:
    from oficina.infer.engine import SamplingParams
    from oficina.serve.scheduler import Job, Scheduler

    names = list(engines)
    sched = Scheduler(engines, max_batch=clients, batch_wait_s=0.01)
    sched.start()
    loop = asyncio.get_running_loop()

    async def client(c: int) -> int:
        model, done = names[c % len(names)], 0
        for r in range(requests):
            p = SamplingParams(max_new_tokens=max_tokens, ignore_eos=True)
            prompt = PROMPT.format(TOPICS[(c + r) % len(TOPICS)])
            job = Job(loop=loop, model=model, prompts=[prompt], params=[p])
            sched.submit(job)
            kind, comps = await job.events.get()
            assert kind == "done", comps
            done += comps[0].completion_tokens
        return done

    try:
        await asyncio.gather(*(client(c) for c in range(len(names))))  # warm-up: one each
        t0 = time.perf_counter()
        tokens = sum(await asyncio.gather(*(client(c) for c in range(clients))))
        wall = time.perf_counter() - t0
    finally:
        sched.stop()
    return {
        "tok_s": tokens / wall,
        "req_s": clients * requests / wall,
        "wall": wall,
        "max_rows": sched.stats()["max_batch_rows"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from oficina.infer.adapters import load_shared
    from oficina.infer.engine import Engine

    print(f"machine: {machine()}")
    print(
        f"model: {MODEL} float32, {args.adapters} random LoRA adapters (r=16, q/k/v/o) + the "
        f"base, {args.clients} clients x {args.requests} requests, greedy, ignore_eos, "
        f"max_tokens={args.max_tokens}, continuous scheduler, max_batch={args.clients}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        dirs = make_adapters(args.adapters, Path(tmp))
        spec = {"base": None, **{f"ad{k + 1}": str(d) for k, d in enumerate(dirs)}}
        rows = []
        for label in ("shared base", "separate models", "base only"):
            if label == "shared base":
                engines = load_shared(MODEL, spec)
            elif label == "base only":
                engines = {"base": Engine.from_spec(MODEL, name="base")}
            else:
                engines = {n: Engine.from_spec(MODEL, adapter=a, name=n) for n, a in spec.items()}
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            r = asyncio.run(run(engines, args.clients, args.requests, args.max_tokens))
            r.update(label=label, mb=weights_mb(engines), load=load)
            rows.append(r)
            del engines
    print(
        f"{'setup':<16} {'tok/s':>7} {'req/s':>6} {'wall s':>7} {'max rows':>8} "
        f"{'weights MB':>10}  loadavg"
    )
    for r in rows:
        print(
            f"{r['label']:<16} {r['tok_s']:>7.1f} {r['req_s']:>6.2f} {r['wall']:>7.1f} "
            f"{r['max_rows']:>8} {r['mb']:>10.0f}  {r['load']}"
        )
    print(f"\nshared base / separate models throughput: {rows[0]['tok_s'] / rows[1]['tok_s']:.2f}x")
    print(f"shared base / base only throughput: {rows[0]['tok_s'] / rows[2]['tok_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
