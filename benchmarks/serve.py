"""Serving throughput and latency: 1, 8 and 32 concurrent streaming clients against each server.

    .venv/bin/python benchmarks/serve.py            # every server in SERVERS at 1, 8, 32 clients
    .venv/bin/python benchmarks/serve.py --quick    # fewer requests per client
    .venv/bin/python benchmarks/serve.py --only "llama.cpp" --clients 8
    # arrivals spread over time (see below): an open loop at 1 request/s, a closed loop with a ramp
    .venv/bin/python benchmarks/serve.py --clients 32 --arrival-rate 1 --max-tokens 8-56
    .venv/bin/python benchmarks/serve.py --clients 32 --requests-per-client 3 --ramp 10 --max-tokens 8-56

The servers are real processes on loopback, measured one after another in the same run:
``oficina serve smollm2-135m-instruct`` in each variant of the ``SERVERS`` table (a label and
the extra CLI arguments: today static batching, and ``--max-batch 1``, one request at a time),
and the peer, **llama.cpp's own ``llama-server``** (``make llama-server``: built from the
llama.cpp sources vendored in the llama-cpp-python 0.3.36 sdist) with ``--parallel 32`` slots —
its continuous batching — on the same model exported to GGUF at the same precision (f32, the
export ``oficina quantize --method gguf --gguf-type f32`` writes), with the same thread count.
llama-cpp-python's own Python server (``python -m llama_cpp.server``) is not the peer: it holds
one llama context behind a lock, so it serves one request at a time.

``--baseline REV`` adds "today's" server of issue 16 as a row of the same run: ``oficina serve``
from the source of commit REV (a detached ``git worktree`` in a temporary folder, run with this
venv; ``08b2092^1`` is main just before the step-level engine merged: static batching, each
prompt prefilled on its own), with the same flags where it has them. The TTFT goal is then
checked against it too.

Every request streams a chat completion (greedy, ``ignore_eos`` so each answer is exactly its
``max_tokens`` tokens on every server). How the requests of a level with N clients arrive (the
same requests, lengths and times for every server: drawn from ``--seed``):

  * burst (``--requests-per-client 1``, what ``--quick`` does above 1 client): N requests sent
    at once. Every scheduler must then prefill all N prompts before the last first token, so
    the burst's prefill compute bounds every server's TTFT p95 alike;
  * closed loop (``--requests-per-client K`` > 1, the default without ``--quick``): each client
    sends K requests back to back, the next as soon as the last answer ends. With
    ``--max-tokens LO-HI`` each request asks for a length drawn uniformly from LO..HI, so the
    clients drift apart as real ones do: under static batching a request sent while a batch
    runs waits for the whole batch, continuous batching admits it at the next decode step.
    ``--ramp S`` starts each client at a time drawn from 0..S seconds, as users arrive, instead
    of all at once (whose first requests would be a burst);
  * open loop (``--arrival-rate R``): N x K requests arrive at Poisson times, R a second on
    average, whether or not earlier answers have ended; at most N are in flight (a request
    arriving when all N clients are busy waits for one, and that wait counts in its TTFT, which
    is measured from its arrival).

Reported per server and level: request and output-token throughput, time to first token (TTFT)
p50/p95, time per output token after the first (TPOT) p50, and the load average when the level
started (the machine is shared). Claims checked: static batching gives at least 3x the request
throughput of one-at-a-time at 8 clients; when a continuous-batching row ran, issue 16's goal —
TTFT p95 at 32 clients under half of static batching's, throughput at least static batching's
(in an open loop that the servers keep up with, throughput is the arrival rate for all of them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from _machine import machine  # noqa: E402

MODEL = "smollm2-135m-instruct"
LEVELS = (1, 8, 32)
TOPICS = [
    "the ocean", "a lighthouse", "winter in the mountains", "a busy market", "an old library",
    "a train journey", "the first day of school", "a garden in spring", "a thunderstorm",
    "a small bakery", "the night sky", "a bicycle ride", "a river", "a forgotten key",
    "a violin", "the desert at noon",
]  # fmt: skip

# The `oficina serve` variants measured: (label, extra CLI arguments). A new scheduler is one
# line here. A row whose flags this `oficina serve` does not have is skipped with a note, except
# that `--scheduler static` is dropped on a server without `--scheduler` (static is all it does).
SERVERS: list[tuple[str, list[str]]] = [
    ("oficina static batching", ["--scheduler", "static", "--max-batch", "32"]),
    ("oficina continuous", ["--scheduler", "continuous", "--max-batch", "32"]),
    ("oficina one-at-a-time", ["--scheduler", "static", "--max-batch", "1"]),
]
LLAMA_LABEL = "llama.cpp server (--parallel 32)"
LLAMA_SLOTS = 32
WHAT_A_SERVER_WITHOUT_THE_FLAG_DOES = {("--scheduler", "static")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


class ServerProcess:
    """A server in a child process (its own GIL and threads, as in production)."""

    def __init__(self, cmd: list[str], port: int, env: dict | None = None):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def wait(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + self.proc.stdout.read()[-3000:])
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.send_signal(2)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def oficina_exe() -> Path:
    return Path(sys.executable).with_name("oficina")


def source_env(src: Path | None) -> dict:
    """The environment that runs `oficina` from the checkout whose ``src`` folder is ``src``
    (None: this one). OpenMP's wait is left to the verb (a decoding verb spins, as llama-server
    does: ``oficina.cli.openmp_wait``; a checkout from before it sets PASSIVE itself)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


def oficina_serve_flags(src: Path | None = None) -> str:
    """`oficina serve --help`, to learn which flags this checkout has."""
    return subprocess.run(
        [str(oficina_exe()), "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=source_env(src),
    ).stdout


def baseline_checkout(rev: str, into: Path) -> Path:
    """A detached worktree of ``rev`` of this repository in ``into``; its ``src`` folder."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        ["git", "-C", str(root), "worktree", "add", "-q", "--detach", str(into), rev],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise SystemExit(f"--baseline {rev}: git could not check it out ({r.stderr.strip()})")
    return into / "src"


def runnable_args(args: list[str], help_text: str) -> list[str] | None:
    """``args`` as this `oficina serve` takes them, or None if it lacks a flag they need."""
    out, i = [], 0
    while i < len(args):
        flag = args[i]
        value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
        step = 2 if value is not None else 1
        if flag not in re.findall(r"--[\w-]+", help_text):
            if (flag, value) in WHAT_A_SERVER_WITHOUT_THE_FLAG_DOES:
                i += step
                continue
            return None
        out += args[i : i + step]
        i += step
    return out


def start_oficina(extra: list[str], home: Path, src: Path | None = None) -> ServerProcess:
    port = free_port()
    env = {**source_env(src), "OFICINA_HOME": str(home)}
    cmd = [
        str(oficina_exe()), "serve", MODEL, "--port", str(port), "--max-concurrent", "256",
        "--embeddings", "none", "--log-level", "warning", *extra,
    ]  # fmt: skip
    return ServerProcess(cmd, port, env)


def llama_server_exe() -> Path | None:
    """``make llama-server`` puts it next to the venv's python; $LLAMA_SERVER overrides."""
    exe = Path(os.environ.get("LLAMA_SERVER") or Path(sys.executable).with_name("llama-server"))
    return exe if exe.is_file() else None


def export_f32_gguf(out: Path) -> Path:
    """SmolLM2 exported to GGUF f32 by Oficina's own exporter (the weights Oficina serves)."""
    from oficina.infer.gguf_export import export_gguf
    from oficina.models.sources import resolve

    path = out / f"{MODEL}-f32.gguf"
    export_gguf(resolve(MODEL), path, "f32")
    return path


def start_llama(exe: Path, gguf: Path) -> ServerProcess:
    port = free_port()
    threads = os.cpu_count() or 1  # what torch uses in `oficina serve`
    cmd = [
        str(exe), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "--parallel", str(LLAMA_SLOTS), "-c", str(LLAMA_SLOTS * 256), "-t", str(threads),
        "--no-webui", "--log-disable",
    ]  # fmt: skip
    from oficina.infer.gguf_export import llama_env  # not Oficina's OMP_WAIT_POLICY (its docs)

    return ServerProcess(cmd, port, llama_env())


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int
) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,  # every server writes exactly max_tokens (vLLM/llama.cpp extension)
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = last = None
    tokens = deltas = 0
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
                    deltas += 1
    end = time.perf_counter()
    first = first or end
    last = last or end
    tokens = tokens or deltas  # a server that sends no usage streams one token per delta
    return {
        "ttft": first - t0,
        "tpot": (last - first) / (tokens - 1) if tokens > 1 else None,
        "tokens": tokens,
        "latency": end - t0,
    }


@dataclass(frozen=True)
class Load:
    """How a level's requests arrive; see the module docstring."""

    per_client: dict[int, int]  # clients -> requests each client sends
    max_tokens: tuple[int, int]  # each request's max_tokens is drawn uniformly from lo..hi
    rate: float | None = None  # open loop: Poisson arrivals, req/s in all; None: closed loop
    seed: int = 0
    ramp: float = 0.0  # closed loop: each client starts at a time drawn from 0..ramp seconds

    def describe(self, clients: int) -> str:
        k = self.per_client[clients]
        lo, hi = self.max_tokens
        tokens = f"{hi} tokens" if lo == hi else f"{lo}-{hi} tokens (uniform, seeded)"
        if self.rate is not None:
            return (
                f"open loop: {clients * k} requests arriving at Poisson times, {self.rate:g} "
                f"req/s, at most {clients} in flight; {tokens}"
            )
        start = f", clients starting over {self.ramp:g} s (seeded)" if self.ramp else ""
        if k == 1 and not self.ramp:
            return f"burst: {clients} requests sent at once; {tokens}"
        return f"closed loop: {clients} clients x {k} requests back to back{start}; {tokens}"


def plan_requests(load: Load, clients: int) -> list[dict]:
    """The requests of a level: prompt, max_tokens and ``at``, when it is sent in seconds from
    the start (open loop: its arrival; closed loop: client w's requests are w*K..w*K+K-1, the
    first sent at its client's start, the others 0: when the answer before ends). Drawn from
    ``load.seed`` and ``clients`` only, so every server of a run gets the same ones."""
    rng = random.Random(f"{load.seed}:{clients}")
    starts = random.Random(f"{load.seed}:{clients}:start")  # the lengths stay those without
    lo, hi = load.max_tokens
    k = load.per_client[clients]
    at, out = 0.0, []
    for i in range(clients * k):
        if load.rate is not None:
            at += rng.expovariate(load.rate)
        elif load.ramp:
            at = starts.uniform(0, load.ramp) if i % k == 0 else 0.0
        topic = TOPICS[i % len(TOPICS)]
        out.append(
            {
                "prompt": f"Write a short story about {topic}.",
                "max_tokens": rng.randint(lo, hi),
                "at": at,
            }
        )
    return out


async def level(url: str, model: str, clients: int, load: Load) -> dict:
    """One level: ``clients`` concurrent clients sending the requests of ``plan_requests``."""
    requests = plan_requests(load, clients)
    results: list[dict] = []
    # A fresh connection per request (well under a millisecond on loopback, the same for every
    # server): llama-server's HTTP library drops a reused connection now and then under load,
    # and httpx does not resend a POST.
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=1200, limits=limits) as client:

        async def send(req: dict) -> None:
            r = await one_request(client, url, model, req["prompt"], req["max_tokens"])
            results.append(r)

        async def closed(w: int) -> None:  # client w's requests, back to back
            k = load.per_client[clients]
            await asyncio.sleep(requests[w * k]["at"])  # the client's start (ramp)
            for req in requests[w * k : (w + 1) * k]:
                await send(req)

        free = asyncio.Semaphore(clients)

        async def arrive(req: dict) -> None:  # open loop: sent at its time, when a client is free
            await asyncio.sleep(max(0.0, t0 + req["at"] - time.perf_counter()))
            arrived = time.perf_counter()
            async with free:
                waited = time.perf_counter() - arrived
                r = await one_request(client, url, model, req["prompt"], req["max_tokens"])
            r["ttft"] += waited
            r["latency"] += waited
            results.append(r)

        t0 = time.perf_counter()
        if load.rate is None:
            await asyncio.gather(*(closed(w) for w in range(clients)))
        else:
            await asyncio.gather(*(arrive(req) for req in requests))
        # throughput over the time requests were being served: from the first one sent (a ramp
        # or the first Poisson gap would otherwise count as idle time) to the last answer
        wall = time.perf_counter() - t0 - min(r["at"] for r in requests)
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


@dataclass
class Plan:
    label: str
    start: object  # () -> ServerProcess
    model: str  # the "model" field the server expects


def measure(plan: Plan, levels, load: Load) -> list[dict]:
    server = plan.start()
    rows = []
    warm_up = Load({1: 1}, (4, 4))
    try:
        server.wait()
        asyncio.run(level(server.url, plan.model, 1, warm_up))  # first-call allocations
        for n in levels:
            avg = loadavg()
            res = asyncio.run(level(server.url, plan.model, n, load))
            res.update(server=plan.label, load=avg)
            rows.append(res)
            print(f"  done: {plan.label}, {n} clients ({res['wall_s']:.1f}s)", flush=True)
    finally:
        server.stop()
    return rows


def find(rows: list[dict], label: str, clients: int) -> dict | None:
    return next((r for r in rows if r["server"] == label and r["clients"] == clients), None)


def token_range(text: str) -> tuple[int, int]:
    """``--max-tokens``: N (every answer N tokens) or LO-HI (each request's drawn from LO..HI)."""
    lo, _, hi = text.partition("-")
    try:
        lo_n, hi_n = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give N or LO-HI, e.g. 32 or 8-56") from None
    if not 1 <= lo_n <= hi_n:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= LO <= HI")
    return lo_n, hi_n


def positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            v = 0
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be a number > 0")
        return v

    return parse


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests per client")
    ap.add_argument(
        "--max-tokens",
        type=token_range,
        default=(32, 32),
        metavar="N|LO-HI",
        help="tokens per answer: N, or LO-HI for lengths drawn uniformly from LO..HI (seeded)",
    )
    ap.add_argument(
        "--clients", type=int, nargs="+", default=list(LEVELS), help="concurrency levels"
    )
    ap.add_argument(
        "--requests-per-client",
        type=positive(int),
        metavar="K",
        help="requests each client sends (closed loop: back to back; 1 = a burst); default "
        "4 at 1 client and 2 above (--quick: 2 and 1)",
    )
    ap.add_argument(
        "--arrival-rate",
        type=positive(float),
        metavar="R",
        help="open loop: clients x K requests arrive at Poisson times, R a second, at most "
        "'clients' in flight",
    )
    ap.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        metavar="S",
        help="closed loop: each client starts at a time drawn uniformly from 0..S seconds "
        "(seeded; default 0: all at once)",
    )
    ap.add_argument("--seed", type=int, default=0, help="draws the lengths and arrival times")
    ap.add_argument("--only", nargs="+", help="run only the servers whose label contains one")
    ap.add_argument("--no-llama", action="store_true", help="skip the llama.cpp server peer")
    ap.add_argument(
        "--baseline",
        metavar="REV",
        help="also serve with the static batching of commit REV (e.g. 08b2092^1: issue 16's today)",
    )
    args = ap.parse_args()
    k = args.requests_per_client
    per_client = {
        n: k or ((2 if n == 1 else 1) if args.quick else (4 if n == 1 else 2)) for n in args.clients
    }
    if args.ramp < 0 or (args.ramp and args.arrival_rate):
        ap.error("--ramp takes seconds >= 0, and only without --arrival-rate (a closed loop's)")
    load = Load(per_client, args.max_tokens, args.arrival_rate, args.seed, args.ramp)
    print(f"machine: {machine()}")
    print(
        f"model: {MODEL} (float32 in Oficina, f32 GGUF in llama.cpp), greedy, ignore_eos, "
        "streaming chat completions"
    )
    arrivals = "\n".join(f"arrivals at {n} clients: {load.describe(n)}" for n in args.clients)
    print(arrivals + "\n")

    def wanted(label: str) -> bool:
        return not args.only or any(s.lower() in label.lower() for s in args.only)

    help_text = oficina_serve_flags()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        plans = []
        for label, extra in SERVERS:
            if not wanted(label):
                continue
            argv = runnable_args(extra, help_text)
            if argv is None:
                print(f"skipped: {label} ({' '.join(extra)}): this oficina serve lacks the flag")
                continue
            plans.append(Plan(label, lambda a=argv: start_oficina(a, home), MODEL))
        baseline = f"oficina static @ {args.baseline}" if args.baseline else None
        if baseline:
            src = baseline_checkout(args.baseline, home / "baseline")
            argv = runnable_args(SERVERS[0][1], oficina_serve_flags(src))
            plans.insert(0, Plan(baseline, lambda a=argv: start_oficina(a, home, src), MODEL))
        if not args.no_llama and wanted(LLAMA_LABEL):
            exe = llama_server_exe()
            if exe is None:
                print(f"skipped: {LLAMA_LABEL}: no llama-server binary (run `make llama-server`)")
            else:
                gguf = export_f32_gguf(home)
                plans.append(Plan(LLAMA_LABEL, lambda: start_llama(exe, gguf), MODEL))
        try:
            for plan in plans:
                rows += measure(plan, args.clients, load)
        finally:
            if baseline:
                root = Path(__file__).resolve().parents[1]
                subprocess.run(
                    [
                        "git",
                        "-C",
                        str(root),
                        "worktree",
                        "remove",
                        "--force",
                        str(home / "baseline"),
                    ],
                    check=False,
                )

    head = (
        f"{'server':<34} {'clients':>7} {'reqs':>5} {'req/s':>7} {'out tok/s':>9} "
        f"{'TTFT p50':>9} {'TTFT p95':>9} {'TPOT p50':>9} {'load':>5}"
    )
    print("\n" + arrivals)
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['server']:<34} {r['clients']:>7} {r['requests']:>5} {r['req_per_s']:>7.2f} "
            f"{r['tok_per_s']:>9.1f} {r['ttft_p50'] * 1000:>7.0f}ms {r['ttft_p95'] * 1000:>7.0f}ms "
            f"{r['tpot_p50'] * 1000:>7.1f}ms {r['load']:>5}"
        )

    ok = True
    static8, single8 = find(rows, SERVERS[0][0], 8), find(rows, SERVERS[2][0], 8)
    if static8 and single8:
        ratio = static8["req_per_s"] / single8["req_per_s"]
        ok &= ratio >= 3
        print(
            f"\nat 8 clients: static batching {static8['req_per_s']:.2f} req/s vs one-at-a-time "
            f"{single8['req_per_s']:.2f} req/s = {ratio:.2f}x  (target >= 3x: "
            f"{'met' if ratio >= 3 else 'NOT met'})"
        )
    static32, cont32 = find(rows, SERVERS[0][0], 32), find(rows, SERVERS[1][0], 32)
    if static32 and cont32:
        faster = cont32["ttft_p95"] < static32["ttft_p95"] / 2
        more = cont32["tok_per_s"] >= static32["tok_per_s"]
        ok &= faster and more
        print(
            f"at 32 clients: continuous TTFT p95 {cont32['ttft_p95']:.2f}s vs static "
            f"{static32['ttft_p95']:.2f}s (goal < half: {'met' if faster else 'NOT met'}); "
            f"throughput {cont32['tok_per_s']:.1f} vs {static32['tok_per_s']:.1f} tok/s "
            f"(goal >=: {'met' if more else 'NOT met'})"
        )
    old32 = find(rows, baseline, 32) if baseline else None
    if old32 and cont32:
        faster = cont32["ttft_p95"] < old32["ttft_p95"] / 2
        ok &= faster
        print(
            f"at 32 clients: continuous TTFT p95 {cont32['ttft_p95']:.2f}s vs {baseline} "
            f"{old32['ttft_p95']:.2f}s = {cont32['ttft_p95'] / old32['ttft_p95']:.2f}x "
            f"(goal < 0.5x: {'met' if faster else 'NOT met'}); throughput "
            f"{cont32['tok_per_s']:.1f} vs {old32['tok_per_s']:.1f} tok/s"
        )
    for n in args.clients:
        peer, best = find(rows, LLAMA_LABEL, n), None
        for label, _ in SERVERS[:2]:
            r = find(rows, label, n)
            if r and (best is None or r["tok_per_s"] > best["tok_per_s"]):
                best = r
        if peer and best:
            print(
                f"at {n} clients: {best['server']} {best['tok_per_s']:.1f} tok/s vs llama.cpp "
                f"{peer['tok_per_s']:.1f} tok/s = {best['tok_per_s'] / peer['tok_per_s']:.2f}x; "
                f"TTFT p95 {best['ttft_p95']:.2f}s vs {peer['ttft_p95']:.2f}s"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
