"""Do a ladder search's trials train faster side by side? The same search, one trial at a time
(``workers: 1``, every CPU thread each) and all at once (``workers: 2``, one thread each).

    .venv/bin/python benchmarks/search_workers.py [--rung lora|full|distill] [--trials 2]
        [--epochs 1] [--repeats 1] [--limit-train N]

On the demo task (``examples/ladder.yaml``: SmolLM2-135M-Instruct, "which part of the Python
reference is this passage from?") the rung's search runs through the ladder's own code
(``oficina.ladder.search.run_search``, the ``oficina tune`` study it starts) with each trial cut
to ``--epochs`` epochs. The trials are the search's space-filling start points, so both ways
train the same points; their validation values differ only by the threads' float rounding.
The ways alternate within a repeat (and swap order on the next), and each prints the load it
ran under: the machines are shared, so the ratio measured in one run is the figure, not either
time alone. The claim holds when two workers finish the search in under 0.75x the time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return n


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "examples/ladder.yaml"))
    ap.add_argument("--rung", choices=["lora", "full", "distill"], default="lora")
    ap.add_argument("--trials", type=positive, default=2, help="trials of each search")
    ap.add_argument("--epochs", type=float, default=1.0, help="each trial's epochs")
    ap.add_argument("--repeats", type=positive, default=1, help="pairs of searches")
    ap.add_argument("--limit-train", type=positive, default=None, help="training rows")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    a = ap.parse_args()
    if a.epochs <= 0:
        ap.error(f"--epochs {a.epochs:g}: give a positive number of epochs")

    import torch

    from oficina.config import load as load_config
    from oficina.ladder.context import LadderContext
    from oficina.ladder.run import LadderConfig, load_task
    from oficina.ladder.rungs import REGISTRY
    from oficina.ladder.search import run_search
    from oficina.workspace import start_run

    print(machine())
    work = Path(a.out or tempfile.mkdtemp(prefix="search-workers-"))
    over: dict = {"out": str(work)}
    if a.limit_train is not None:
        over["limit_train"] = a.limit_train
    cfg = load_config(LadderConfig, a.config, over)
    Rung = REGISTRY[a.rung]
    settings = getattr(cfg.rungs, a.rung)
    task, corpus = load_task(cfg)
    threads = torch.get_num_threads()
    print(
        f"task: {len(task.train)} training rows, {len(task.validation)} validation; {a.rung} "
        f"search of {a.trials} trials x {a.epochs:g} epochs; 1 worker x {threads} threads vs "
        f"2 workers x {max(1, threads // 2)}",
        flush=True,
    )
    runs: list[dict] = []
    with start_run("ladder", cfg) as run:
        ctx = LadderContext(cfg, run, task, corpus)
        rung = Rung(settings)
        hp = rung.settings_used()
        for rep in range(a.repeats):
            for workers in (1, 2) if rep % 2 == 0 else (2, 1):
                search = settings.search.model_copy(
                    update={"trials": a.trials, "max_epochs": a.epochs, "workers": workers}
                )
                ctx.out = work / f"r{rep}-w{workers}"
                ctx.out.mkdir(parents=True, exist_ok=True)
                before = load()
                t0 = time.perf_counter()
                _, record = run_search(rung, ctx, hp, search)
                wall = time.perf_counter() - t0
                r = {
                    "repeat": rep,
                    "workers": workers,
                    "seconds": round(wall, 1),
                    "load_before": before,
                    "load_after": load(),
                    "trials": [
                        {
                            k: t[k]
                            for k in ("number", "state", "params", "value", "steps", "seconds")
                        }
                        for t in record["trials"]
                    ],
                    "best": record["best"],
                    "peak_memory_mb": record["cost"]["peak_memory_mb"],
                }
                runs.append(r)
                values = ", ".join(
                    f"#{t['number']} lr {t['params']['lr']:.3g}: {t['value']:.4f} "
                    f"({t['seconds']:.0f}s)"
                    for t in r["trials"]
                )
                print(
                    f"repeat {rep} · {workers} worker(s): {wall:.0f}s (load {before} -> "
                    f"{r['load_after']}), peak {r['peak_memory_mb']:,.0f} MB · {values}",
                    flush=True,
                )
    ratios = []
    for rep in range(a.repeats):
        one, two = (
            next(r for r in runs if r["repeat"] == rep and r["workers"] == w) for w in (1, 2)
        )
        ratios.append(two["seconds"] / one["seconds"])
    result = {"machine": machine(), "rung": a.rung, "runs": runs, "ratios": ratios}
    (work / "search_workers.json").write_text(json.dumps(result, indent=2, default=str))
    ratio = sum(ratios) / len(ratios)
    verdict = "holds" if ratio < 0.75 else "does NOT hold"
    print(
        f"2 workers / 1 worker: {', '.join(f'{x:.2f}' for x in ratios)} (mean {ratio:.2f}x the "
        f"time): the claim (< 0.75x) {verdict} -> {work / 'search_workers.json'}"
    )


if __name__ == "__main__":
    main()
