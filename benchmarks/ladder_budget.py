"""Does the ladder's training budget starve LoRA? The LoRA rung as the ladder trains it (its
search, epochs and early stopping) against the same LoRA at the chosen values trained 3× longer.

    .venv/bin/python benchmarks/ladder_budget.py [--rung lora|full] [--factor 3] [--limit-train N]

``--rung full`` asks the same of full fine-tuning.

On the demo task (``examples/ladder.yaml``: SmolLM2-135M-Instruct, "which part of the Python
reference is this passage from?"), the ``lora`` rung runs through the ladder's own code
(``oficina.ladder``: search on the training split scored on the validation split, then training
in epochs with early stopping). Then the same LoRA — the chosen learning rate and rank — trains
``factor`` times as many steps as the rung ran, without early stopping (its best validation
checkpoint kept, as every rung's is). Both are scored on the same test items; the difference
comes with its paired-bootstrap 95% interval (``oficina.ladder.recommend.compare``). The claim
holds when the interval contains 0: training longer does not buy measurable quality, so the
budget does not starve the rung. With the rungs' default constant learning rate after warm-up
(``schedule: constant``) the longer run takes the rung's path step for step (same seed, same
batches, same rates) and then goes on, so any difference comes from the steps the budget cut;
with ``schedule: cosine`` the stretched decay makes it another path.

``--limit-train`` / ``--limit-test`` / ``--trials`` / ``--max-epochs`` cut the run down on a busy
machine (the figures then say so). ``--reuse DIR`` takes the ``lora`` rung of a finished ladder
run of the same config (``make demo``'s ``out/ladder``): its chosen values, steps, search and
saved adapter (scored again on the test items, so both sides are answered here); only the
longer training runs.
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


def reused_rung(folder: Path, ctx, name: str):
    """The ``name`` rung of the ladder run in ``folder``: from its summary.json, its adapter
    (lora) or model (full) scored again on ``ctx``'s test items (summary.json keeps answers, not
    the per-item scores a paired comparison needs); from the partial.json of a ladder still
    running, as it was measured."""
    from oficina.ladder.result import Cost, RungResult

    if not (folder / "summary.json").is_file() and (folder / "partial.json").is_file():
        # A ladder still running keeps its finished rungs whole (per-item scores too).
        done = json.loads((folder / "partial.json").read_text())
        return RungResult.model_validate(next(x for x in done if x["name"] == name))
    s = json.loads((folder / "summary.json").read_text())
    r = next(x for x in s["rungs"] if x["name"] == name)
    if r["status"] != "ok":
        raise SystemExit(f"{folder}: its {name} rung did not run ({r['status']})")
    saved = Path(r["artifacts"]["adapter" if name == "lora" else "model"])
    if not saved.is_absolute() and not saved.exists():
        saved = folder.resolve().parent.parent / saved  # relative to where that ladder ran
    if name == "lora":
        eng = ctx.engine(ctx.cfg.base_model, adapter=str(saved))
    else:
        eng = ctx.engine(str(saved))
    res = ctx.evaluate(eng, name)
    out = ctx.measured(name, r["description"], eng, res, hyperparameters=r["hyperparameters"])
    if abs(out.quality - r["quality"]) > 1e-9:
        print(f"note: scored again {out.quality:.3f}, that run said {r['quality']:.3f}")
    out.search, out.training_run = r["search"], r["training_run"]
    out.training = Cost(**r["training_cost"])
    return RungResult.model_validate(out.model_dump())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "examples/ladder.yaml"))
    ap.add_argument("--rung", choices=["lora", "full"], default="lora", help="the trained rung")
    ap.add_argument("--factor", type=float, default=3.0, help="how much longer the control trains")
    ap.add_argument("--limit-train", type=int, default=None, help="training rows (default: config)")
    ap.add_argument("--limit-test", type=int, default=None, help="test items (default: all)")
    ap.add_argument("--trials", type=int, default=None, help="search trials (default: config)")
    ap.add_argument("--max-epochs", type=float, default=None, help="the rung's epoch budget")
    ap.add_argument("--search-epochs", type=float, default=None, help="each trial's epochs")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--reuse", default=None, help="a finished ladder folder: its --rung rung")
    a = ap.parse_args()
    if a.reuse and not any((Path(a.reuse) / f).is_file() for f in ("summary.json", "partial.json")):
        ap.error(f"--reuse {a.reuse}: no summary.json or partial.json there (a ladder's --out)")

    import torch  # noqa: F401 - so machine() names the thread count

    from oficina.config import load
    from oficina.ladder.context import LadderContext
    from oficina.ladder.recommend import compare
    from oficina.ladder.run import LadderConfig, load_task
    from oficina.ladder.rungs import Full, Lora
    from oficina.workspace import start_run

    print(machine())
    work = Path(a.out or tempfile.mkdtemp(prefix="ladder-budget-"))
    over: dict = {"out": str(work)}
    for key, value in (("limit_train", a.limit_train), ("limit_test", a.limit_test)):
        if value is not None:
            over[key] = value
    cfg = load(LadderConfig, a.config, over)
    Rung = {"lora": Lora, "full": Full}[a.rung]
    lora = getattr(cfg.rungs, a.rung).model_dump()
    search = lora["search"]
    if a.trials is not None:
        search["trials"] = a.trials
    if a.search_epochs is not None:
        search["max_epochs"] = a.search_epochs
    if a.max_epochs is not None:
        lora["max_epochs"] = a.max_epochs
    task, corpus = load_task(cfg)
    print(
        f"task: {len(task.train)} training rows, {len(task.validation)} validation, "
        f"{len(task.test)} test items; {a.rung} budget {lora['max_epochs']:g} epochs, search "
        f"{search['trials']} trials of {search['max_epochs'] or lora['max_epochs']:g} epochs",
        flush=True,
    )
    with start_run("ladder", cfg) as run:
        ctx = LadderContext(cfg, run, task, corpus)
        t0 = time.perf_counter()
        if a.reuse:
            ladder = reused_rung(Path(a.reuse), ctx, a.rung)
            t_ladder = float(ladder.training.wall_time_s)
        else:
            ladder = Rung(Rung.Settings(**lora)).run(ctx)
            t_ladder = time.perf_counter() - t0
        steps = int(ladder.training_run["steps"])
        longer = {
            **ladder.hyperparameters,
            "max_epochs": 1000.0,
            "max_steps": max(1, round(a.factor * steps)),
            "patience": 0,
            "search": {"trials": 0},
        }
        ctx.out = work / "longer"
        t0 = time.perf_counter()
        long = Rung(Rung.Settings(**longer)).run(ctx)
        t_long = time.perf_counter() - t0
    c = compare(long, ladder, cfg.metric or ctx.metric, n=cfg.bootstrap, seed=cfg.seed)
    result = {
        "metric": ctx.metric,
        "test_items": len(task.test),
        "train_rows": len(task.train),
        "rung": a.rung,
        "chosen": {
            k: ladder.hyperparameters[k] for k in ("lr", "rank") if k in ladder.hyperparameters
        },
        "search": {
            k: (ladder.search or {}).get(k) for k in ("trial_steps", "pruned", "final", "cost")
        },
        "trials": [
            {k: t[k] for k in ("number", "state", "params", "value", "steps", "seconds")}
            for t in (ladder.search or {}).get("trials", [])
        ],
        "ladder": {
            "quality": ladder.quality,
            "ci": ladder.ci,
            "steps": steps,
            "stopped": ladder.training_run["stopped"],
            "best_step": ladder.training_run["best_step"],
            "cooldown": ladder.training_run.get("cooldown"),
            "seconds": round(t_ladder, 1),
        },
        "longer": {
            "quality": long.quality,
            "ci": long.ci,
            "steps": long.training_run["steps"],
            "best_step": long.training_run["best_step"],
            "cooldown": long.training_run.get("cooldown"),
            "seconds": round(t_long, 1),
        },
        "difference": c,
        "equal_within_interval": bool(c and c["tied"]),
        # Only a longer run that is measurably *better* says the budget starves the rung.
        "starved": bool(c and not c["tied"] and c["diff"] > 0),
    }
    (work / "ladder_budget.json").write_text(json.dumps(result, indent=2, default=str))
    L, G = result["ladder"], result["longer"]
    print(
        f"ladder's {a.rung}: {L['quality']:.3f} (95% CI {L['ci'][0]:.3f}-{L['ci'][1]:.3f}), "
        f"{L['steps']} steps ({L['stopped']}, best step {L['best_step']}), {L['seconds']:.0f}s "
        f"with its search; "
        + ", ".join(
            f"{k} {v:.3g}" if k == "lr" else f"{k} {v}" for k, v in result["chosen"].items()
        )
    )
    print(
        f"{a.factor:g}x longer:    {G['quality']:.3f} (95% CI {G['ci'][0]:.3f}-{G['ci'][1]:.3f}), "
        f"{G['steps']} steps (best step {G['best_step']}), {G['seconds']:.0f}s"
    )
    if c:
        verdict = (
            "equal within the interval"
            if c["tied"]
            else "NOT equal: the budget starves it"
            if c["diff"] > 0
            else "NOT equal: training longer is worse, the budget does not starve it"
        )
        print(
            f"longer - ladder: {c['diff']:+.3f} (paired bootstrap 95% CI {c['ci'][0]:+.3f} to "
            f"{c['ci'][1]:+.3f}) on {c['n']} items: {verdict}"
        )
    print(f"-> {work / 'ladder_budget.json'}")


if __name__ == "__main__":
    main()
