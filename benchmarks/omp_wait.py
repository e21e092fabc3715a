"""OpenMP's wait policy for oficina's processes: alone, and beside a busy neighbour.

A waiting OpenMP thread either spins (fast to wake, but it burns a core) or sleeps (a futex
wake-up per parallel region). With libgomp's default spin (~3 ms) or ``OMP_WAIT_POLICY=ACTIVE``
two processes on two cores spin against each other; the CLI therefore sets
``OMP_WAIT_POLICY=PASSIVE`` unless the user set it (src/oficina/cli.py). This script measures a
LoRA fine-tune of SmolLM2 on the demo task (tokens/s from the run's summary) under each wait
setting, alone and beside a second busy ``oficina finetune`` with the same setting, in one run:
the CLI's default (PASSIVE), ``GOMP_SPINCOUNT`` 10,000 (~0.1 ms of spin) and 300,000 (libgomp's
default). ACTIVE is left out: beside a neighbour it took 11x PASSIVE's time (2026-11-29, README).

    python benchmarks/omp_wait.py                  # 12 steps each, ~12 minutes on 2 cores
    python benchmarks/omp_wait.py --no-neighbour   # alone only
    python benchmarks/omp_wait.py --ways default one-thread   # is a second thread worth a process?
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OFICINA = [sys.executable, "-m", "oficina.cli"]


def finetune(out: Path, steps: int) -> list[str]:
    return [
        *OFICINA,
        "finetune",
        "--config",
        str(ROOT / "examples/finetune.yaml"),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--train.eval-every",
        "100000",
        "--train.save-every",
        "100000",
    ]


def env_with(policy: str | None, spin: int | None = None, threads: int | None = None) -> dict:
    """The environment of one fine-tune: the CLI's own defaults unless a policy, a spin count
    (``GOMP_SPINCOUNT``: how long libgomp's waiting thread spins before it sleeps; it overrides
    what the policy implies, ~100,000 spins a millisecond) or a thread count is given."""
    env = dict(os.environ)
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS"):
        env.pop(name, None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    if spin is not None:
        env["GOMP_SPINCOUNT"] = str(spin)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_one(tmp: Path, steps: int, env: dict, neighbour: bool) -> float:
    """tokens/s of one fine-tune, optionally with a busy neighbour (same environment) running
    the whole time."""
    bg = None
    if neighbour:
        bg = subprocess.Popen(
            finetune(tmp / "bg", 100000),
            env=env,
            cwd=ROOT,  # the example config names its data relative to the repository
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(20)  # let it load the model and start stepping
    try:
        done = subprocess.run(
            finetune(tmp / "fg", steps),
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"the fine-tune failed:\n{done.stderr[-2000:]}")
        out = done.stdout
    finally:
        if bg is not None:
            bg.kill()
            bg.wait()
    shutil.rmtree(tmp / "fg", ignore_errors=True)
    shutil.rmtree(tmp / "bg", ignore_errors=True)
    done = re.search(r"done: .* at ([\d,.]+) tok/s", out)
    if not done:
        raise SystemExit(f"no 'done: ... tok/s' line in the fine-tune's output:\n{out[-2000:]}")
    return float(done.group(1).replace(",", ""))


def _positive(text: str) -> int:
    n = int(text) if text.isdigit() else 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of steps")
    return n


# name -> (label, OMP_WAIT_POLICY, GOMP_SPINCOUNT, OMP_NUM_THREADS); None: the CLI's default.
# "one-thread": is a second thread worth a process? Two one-thread fine-tunes side by side
# (beside) against one two-thread fine-tune alone (the CLI default's "alone") says whether two
# search trials would finish sooner in parallel than one after the other.
WAYS = {
    "default": ("CLI default", None, None, None),
    "spin10k": ("spin 10,000 (~0.1 ms)", None, 10_000, None),
    "spin300k": ("spin 300,000 (libgomp's default, ~3 ms)", None, 300_000, None),
    "one-thread": ("one thread (OMP_NUM_THREADS=1), PASSIVE", None, None, 1),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=_positive, default=12, help="timed steps per fine-tune")
    ap.add_argument(
        "--no-neighbour", action="store_true", help="only the fine-tunes alone (half the time)"
    )
    ap.add_argument(
        "--ways",
        nargs="+",
        choices=list(WAYS),
        default=["default", "spin10k", "spin300k"],
        help="which settings, in order (the first is the ratios' base; name one twice to see "
        "the run-to-run noise)",
    )
    args = ap.parse_args()
    print(machine())
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.environ.setdefault("OFICINA_HOME", str(tmp / "ws"))
        for way in args.ways:
            label, policy, spin, threads = WAYS[way]
            env = env_with(policy, spin, threads)
            alone = run_one(tmp, args.steps, env, neighbour=False)
            beside = None if args.no_neighbour else run_one(tmp, args.steps, env, neighbour=True)
            rows.append((label, alone, beside))
            near = "" if beside is None else f", beside a neighbour {beside:.1f}"
            print(f"  {label}: alone {alone:.1f} tok/s{near}", flush=True)
    print(f"LoRA fine-tune of SmolLM2, {args.steps} steps, tokens/s (both processes alike):")
    print(f"  {'':42s} {'alone':>15s} {'beside a busy oficina (alike)':>30s}")
    base = rows[0][1]
    for label, alone, beside in rows:
        near = "" if beside is None else f"{beside:8.1f} ({beside / alone:.2f}x alone)"
        print(f"  {label:42s} {alone:8.1f} ({alone / base:.2f}x) {near}")


if __name__ == "__main__":
    main()
