"""Serving throughput and latency: N concurrent streaming clients against `oficina serve` SmolLM2.

    .venv/bin/python benchmarks/serve.py            # 1, 8, 32 clients + the unbatched peer
    .venv/bin/python benchmarks/serve.py --quick    # fewer requests per client

Two real servers (separate processes, `oficina serve smollm2-135m-instruct` on loopback) are
measured in the same run: the batching server (--max-batch 32) at 1, 8 and 32 concurrent
clients, and the same server with batching off (--max-batch 1: requests run one at a time) at
8 concurrent clients as the peer. Each client streams chat completions back to back (greedy,
fixed max_tokens). Reported per level: request throughput, output tokens/s, time to first
token (TTFT) and time per output token after the first (TPOT). The claim checked: batching
gives at least 3x the request throughput of one-at-a-time at 8 concurrent clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _machine import machine  # noqa: E402

MODEL = "smollm2-135m-instruct"
TOPICS = [
    "the ocean", "a lighthouse", "winter in the mountains", "a busy market", "an old library",
    "a train journey", "the first day of school", "a garden in spring", "a thunderstorm",
    "a small bakery", "the night sky", "a bicycle ride", "a river", "a forgotten key",
    "a violin", "the desert at noon",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`oficina serve` in a child process (its own GIL, as in production)."""

    def __init__(self, max_batch: int, home: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OFICINA_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE"}
        exe = Path(sys.executable).with_name("oficina")
        self.proc = subprocess.Popen(
            [
                str(exe), "serve", MODEL, "--port", str(self.port), "--max-batch", str(max_batch),
                "--max-concurrent", "256", "--embeddings", "none", "--log-level", "warning",
            ],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def wait(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + self.proc.stdout.read())
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not start")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> None:
        self.proc.send_signal(2)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                raise RuntimeError(ev["error"]["message"])
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
            for ch in ev.get("choices", []):
                if ch.get("delta", {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
    end = time.perf_counter()
    first = first or end
    last = last or end
    return {
        "ttft": first - t0,
        "tpot": (last - first) / (tokens - 1) if tokens > 1 else None,
        "tokens": tokens,
        "latency": end - t0,
    }


async def level(url: str, clients: int, per_client: int, max_tokens: int) -> dict:
    """`clients` concurrent clients, each sending `per_client` streaming requests back to back."""
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker(w: int) -> None:
            for k in range(per_client):
                topic = TOPICS[(w * per_client + k) % len(TOPICS)]
                results.append(
                    await one_request(
                        client, url, f"Write a short story about {topic}.", max_tokens
                    )
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        wall = time.perf_counter() - t0
    ttft = sorted(r["ttft"] for r in results)
    tpot = [r["tpot"] for r in results if r["tpot"] is not None]
    out_tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "wall_s": wall,
        "req_per_s": len(results) / wall,
        "tok_per_s": out_tokens / wall,
        "mean_tokens": out_tokens / len(results),
        "ttft_p50": statistics.median(ttft),
        "ttft_p95": ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))],
        "tpot_p50": statistics.median(tpot) if tpot else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests per client")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per answer")
    args = ap.parse_args()
    per_client = {1: 4, 8: 2, 32: 2} if not args.quick else {1: 2, 8: 1, 32: 1}
    print(f"machine: {machine()}")
    print(f"model: {MODEL}, greedy, max_tokens={args.max_tokens}, streaming chat completions\n")
    rows = []
    with tempfile.TemporaryDirectory() as home:
        for label, max_batch, levels in (
            ("batched (max-batch 32)", 32, (1, 8, 32)),
            ("one-at-a-time (max-batch 1)", 1, (8,)),
        ):
            server = ServerProcess(max_batch, Path(home))
            try:
                server.wait()
                asyncio.run(level(server.url, 1, 1, 4))  # warm-up (first-call allocations)
                for n in levels:
                    res = asyncio.run(level(server.url, n, per_client[n], args.max_tokens))
                    res["server"] = label
                    res["max_batch_rows"] = server.health()["max_batch_rows"]
                    rows.append(res)
                    print(f"  done: {label}, {n} clients ({res['wall_s']:.1f}s)", flush=True)
            finally:
                server.stop()

    head = f"{'server':<28} {'clients':>7} {'reqs':>5} {'req/s':>7} {'out tok/s':>9} {'TTFT p50':>9} {'TTFT p95':>9} {'TPOT p50':>9} {'max rows':>8}"
    print("\n" + head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['server']:<28} {r['clients']:>7} {r['requests']:>5} {r['req_per_s']:>7.2f} {r['tok_per_s']:>9.1f} "
            f"{r['ttft_p50'] * 1000:>7.0f}ms {r['ttft_p95'] * 1000:>7.0f}ms {r['tpot_p50'] * 1000:>7.1f}ms {r['max_batch_rows']:>8}"
        )
    batched8 = next(r for r in rows if r["clients"] == 8 and r["server"].startswith("batched"))
    single8 = next(r for r in rows if r["clients"] == 8 and r["server"].startswith("one"))
    ratio = batched8["req_per_s"] / single8["req_per_s"]
    print(
        f"\nat 8 concurrent clients: batched {batched8['req_per_s']:.2f} req/s vs one-at-a-time "
        f"{single8['req_per_s']:.2f} req/s = {ratio:.2f}x  (target >= 3x: {'met' if ratio >= 3 else 'NOT met'})"
    )
    return 0 if ratio >= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
