"""Does the ladder's recommendation depend on the seed? The same ladder run with two seeds.

    .venv/bin/python benchmarks/ladder_seeds.py [--quick] [--seeds 0 1] [--config examples/ladder.yaml]

Each run is the whole ``oficina ladder`` (``oficina.ladder.run.run_ladder``) on the demo task,
with ``--seed`` set to each value: the trained rungs' initialisation, data order and searches,
the rows a ``limit_train`` samples (stratified), the random baselines and the bootstrap resamples
all change; the task's splits (a task.json's files) do not. The claim (issue 14) holds when every run recommends the same rung, or when the
runs' picks are reported as statistically tied with each other (the other run's pick is in
``tied_with``). Prints each run's qualities, recommendation and ties, writes
``ladder_seeds.json`` in ``--out``. Any extra ``--flag value`` pairs go to every ladder run
(``--rungs.lora.search.trials 2``). ``--reuse DIR`` takes a finished run of the same config (say
``make demo``'s ``out/ladder``) as the run of its seed instead of running it again: a full
ladder is ~20 minutes here.
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


def verdict(runs: list[dict]) -> tuple[bool, str]:
    """(the claim holds, why): one pick everywhere, or every pair of picks reported tied."""
    picks = [r["recommended"] for r in runs]
    if len(set(picks)) == 1:
        return True, f"every run recommends {picks[0]}"
    for a in runs:
        for b in runs:
            if a["recommended"] != b["recommended"] and b["recommended"] not in a["tied_with"]:
                return False, (
                    f"seed {a['seed']} recommends {a['recommended']}, seed {b['seed']} "
                    f"{b['recommended']}, and seed {a['seed']}'s run does not report them tied"
                )
    return True, "the picks differ but each run reports the other's pick as tied with its own"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "examples/ladder.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--quick", action="store_true", help="the ladder's --quick profile")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        help="finished ladder folders (same config and profile): each stands for its seed's run",
    )
    a, extra = ap.parse_known_args()
    for d in a.reuse:
        if not (Path(d) / "summary.json").is_file():
            ap.error(f"--reuse {d}: no summary.json there (a finished ladder's --out)")

    import torch  # noqa: F401 - so machine() names the thread count

    from oficina.config import parse_args
    from oficina.ladder.run import LadderConfig, run_ladder

    print(machine())
    work = Path(a.out or tempfile.mkdtemp(prefix="ladder-seeds-"))
    work.mkdir(parents=True, exist_ok=True)  # --out may name a folder not made yet
    reused = {}
    for d in a.reuse:
        s = json.loads((Path(d) / "summary.json").read_text())
        profile = "quick" if a.quick else "full"
        if s["meta"]["profile"] != profile or len(s["meta"]["seeds"]) != 1:
            raise SystemExit(
                f"{d}: a {s['meta']['profile']} run, not one {profile} run of one seed"
            )
        reused[int(s["meta"]["seeds"][0])] = (s, s["meta"]["wall_time_s"], d)
    runs = []
    for seed in a.seeds:
        argv = [a.config, *extra, "--out", str(work / f"seed{seed}"), "--seed", str(seed)]
        cfg = parse_args("ladder", LadderConfig, argv + (["--quick"] if a.quick else []))
        t0 = time.perf_counter()
        if seed in reused:
            s, seconds, d = reused[seed]
            print(f"seed {seed}: the finished run in {d}")
        else:
            s = run_ladder(cfg)
            seconds = time.perf_counter() - t0
        runs.append(
            {
                "seed": seed,
                "recommended": s["recommended"],
                "met_target": s["met_target"],
                "tied_with": s["tied_with"],
                "quality": {r["name"]: r["quality"] for r in s["rungs"]},
                "ci": {r["name"]: r["ci"] for r in s["rungs"]},
                "reasoning": s["reasoning"],
                "test_items": s["meta"]["test_items"],
                "seconds": round(seconds, 1),
            }
        )
        print(
            f"seed {seed}: recommends {s['recommended']} (tied: {', '.join(s['tied_with']) or '-'}) "
            f"in {runs[-1]['seconds']:.0f}s",
            flush=True,
        )
    ok, why = verdict(runs)
    names = list(runs[0]["quality"])
    print(f"\nthe same ladder ({a.config}{', --quick' if a.quick else ''}) with seeds {a.seeds}")
    print("rung".ljust(14) + "".join(f"seed {r['seed']}".ljust(22) for r in runs))
    for n in names:
        cells = []
        for r in runs:
            q, ci = r["quality"].get(n), r["ci"].get(n)
            mark = " *" if n == r["recommended"] else " =" if n in r["tied_with"] else ""
            cells.append(
                ("-" if q is None else f"{q:.3f}" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else ""))
                + mark
            )
        print(n.ljust(14) + "".join(c.ljust(22) for c in cells))
    print("(* recommended, = tied with it)")
    print(f"verdict: {'holds' if ok else 'FAILS'}: {why}")
    out = {"config": a.config, "quick": a.quick, "runs": runs, "holds": ok, "why": why}
    (work / "ladder_seeds.json").write_text(json.dumps(out, indent=2))
    print(f"-> {work / 'ladder_seeds.json'} · loadavg {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
