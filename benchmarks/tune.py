"""Does pruning pay? The same search with pruning on and off: best value and compute.

    .venv/bin/python benchmarks/tune.py [--trials 16] [--steps 48] [--pruner median] [--quick]

The search: the ``tiny`` preset pretrained on the demo reference (SmolLM2's tokenizer, 128-token
windows), over the learning rate (log 1e-4..3e-2) and the warm-up (0..12 steps), TPE with the
same seed and the same number of trials, validation every ``steps/6`` steps. Compute is counted
in trial-steps (optimizer steps summed over trials: a pruned trial costs the steps it ran).
The noise: the best configuration of the unpruned search trained with seeds 0 (its own run) to 3
(the seed draws the initial weights and the data order); the claim holds when the two best
values differ by no more than twice that spread (standard deviation) and pruning used at most
60% of the trial-steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402
from _machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pack(work: Path) -> Path:
    from oficina.data.pack import PackConfig
    from oficina.data.pack import run as pack_run

    out = work / "pack"
    if not (out / "meta.json").is_file():
        pack_run(
            PackConfig(
                input=[str(ROOT / "examples/demo/reference.jsonl")],
                tokenizer="smollm2-135m-instruct",
                out=str(out),
                seq_len=128,
                val_fraction=0.1,
            )
        )
    return out


def search(work: Path, data: Path, trials: int, steps: int, pruner: str, seed: int) -> dict:
    from oficina.config import load
    from oficina.evals.tune import TuneConfig
    from oficina.evals.tune import run as tune

    every = max(1, steps // 6)
    cfg = {
        "verb": "pretrain",
        "model": "tiny",
        "data": str(data),
        "out": str(work / "model"),
        "max_steps": steps,
        "train": {
            "lr": 2e-3,
            "warmup_steps": 5,
            "batch_size": 4,
            "precision": "fp32",
            "eval_every": every,
            "eval_batches": 4,
            "save_every": 10_000,
            "log_every": every,
        },  # fmt: skip
        "space": {
            "train.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
            "train.warmup_steps": {"type": "int", "low": 0, "high": 12},
        },
    }
    path = work / f"search-{pruner}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = work / f"out-{pruner}"
    t = time.perf_counter()
    tune(load(TuneConfig, None, {"spec": str(path), "out": str(out), "trials": trials,
                                  "pruner": pruner, "seed": seed, "study": f"bench-{pruner}"}))  # fmt: skip
    meta = json.loads((out / "tune.json").read_text())
    meta["wall_s"] = time.perf_counter() - t
    meta["best_yaml"] = out / "best.yaml"
    return meta


def noise(best_yaml: Path, seeds: tuple[int, ...] = (1, 2, 3)) -> list[float]:
    """The best config's validation loss under other training seeds: the run-to-run spread."""
    from oficina.config import load
    from oficina.train.recipes import PretrainConfig, pretrain

    vals = []
    for s in seeds:
        cfg = load(PretrainConfig, best_yaml, {"train": {"seed": s}, "out": str(best_yaml.parent / f"seed{s}")})  # fmt: skip
        vals.append(pretrain(cfg)["best_val_loss"])
    return vals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--steps", type=int, default=48, help="per-trial step budget")
    ap.add_argument("--pruner", default="median", choices=["median", "halving", "hyperband"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="8 trials of 24 steps")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    a = ap.parse_args()
    if a.quick:
        a.trials, a.steps = 8, 24
    import torch  # noqa: F401 - so machine() names the thread count

    print(machine())
    work = Path(a.work or tempfile.mkdtemp(prefix="oficina-bench-tune-"))
    os.environ.setdefault("OFICINA_HOME", str(work / "ws"))
    data = pack(work)
    on = search(work, data, a.trials, a.steps, a.pruner, a.seed)
    off = search(work, data, a.trials, a.steps, "off", a.seed)
    spread = [off["best"]["value"], *noise(off["best_yaml"])]
    sd = statistics.stdev(spread)
    ratio = on["trial_steps"] / off["trial_steps"]
    diff = on["best"]["value"] - off["best"]["value"]
    print(f"\n{a.trials} trials × {a.steps} steps, TPE seed {a.seed}, tiny preset on the demo")
    print(f"{'':<14}{'best val loss':>14}{'trial-steps':>13}{'pruned':>8}{'wall':>8}")
    for name, m in ((f"pruning {a.pruner}", on), ("no pruning", off)):
        print(f"{name:<14}{m['best']['value']:>14.4f}{m['trial_steps']:>13,}{m['pruned']:>8}"
              f"{m['wall_s']:>7.0f}s")  # fmt: skip
    print(f"noise: the unpruned best with training seeds 0-3: {', '.join(f'{v:.4f}' for v in spread)}"
          f" (sd {sd:.4f})")  # fmt: skip
    ok_q, ok_c = abs(diff) <= 2 * sd or diff <= 0, ratio <= 0.60
    print(f"best value: pruned - unpruned = {diff:+.4f} ({'within' if ok_q else 'OUTSIDE'} 2 sd)")
    print(f"compute: {100 * ratio:.0f}% of the unpruned trial-steps ({'<=' if ok_c else '>'} 60%)")
    print("claim holds" if ok_q and ok_c else "claim does NOT hold on this run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
