"""Two oficina processes on one machine: does the fine-tune beside a busy neighbour collapse?

OpenMP's default wait policy spins a thread that waits for work; with two processes on two
cores they spin against each other. The CLI sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user
set it (src/oficina/cli.py). This script measures a LoRA fine-tune of SmolLM2 on the demo task
(tokens/s from the run's summary) three ways, in one run:

  * alone (the CLI's default, PASSIVE);
  * beside a second busy ``oficina finetune`` (both with the CLI's default, PASSIVE);
  * beside the same neighbour, both with ``OMP_WAIT_POLICY=ACTIVE`` (what users got before).

    python benchmarks/omp_wait.py            # 12 steps each, ~3-6 minutes on 2 cores
    python benchmarks/omp_wait.py --steps 6  # quicker, noisier
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


def env_with(policy: str | None) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)  # the CLI's own default unless a policy is given
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    return env


def run_one(tmp: Path, steps: int, policy: str | None, neighbour: bool) -> float:
    """tokens/s of one fine-tune, optionally with a busy neighbour running the whole time."""
    bg = None
    if neighbour:
        bg = subprocess.Popen(
            finetune(tmp / "bg", 100000),
            env=env_with(policy),
            cwd=ROOT,  # the example config names its data relative to the repository
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(20)  # let it load the model and start stepping
    try:
        done = subprocess.run(
            finetune(tmp / "fg", steps),
            env=env_with(policy),
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.environ.setdefault("OFICINA_HOME", str(tmp / "ws"))
        alone = run_one(tmp, args.steps, None, neighbour=False)
        passive = run_one(tmp, args.steps, None, neighbour=True)
        active = run_one(tmp, args.steps, "ACTIVE", neighbour=True)
    print(f"LoRA fine-tune of SmolLM2, {args.steps} steps, tokens/s:")
    print(f"  alone (CLI default PASSIVE)                 {alone:8.1f}")
    print(
        f"  beside a busy oficina, PASSIVE (default)    {passive:8.1f}  ({passive / alone:.2f}x alone)"
    )
    print(
        f"  beside a busy oficina, OMP_WAIT_POLICY=ACTIVE {active:6.1f}  ({active / alone:.2f}x alone)"
    )
    print(f"PASSIVE vs ACTIVE beside a neighbour: {passive / active:.2f}x")


if __name__ == "__main__":
    main()
