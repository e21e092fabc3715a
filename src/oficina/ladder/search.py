"""A trained rung's budgeted hyperparameter search: a small ``oficina tune`` study.

The study trains the rung's own recipe (``RecipeRung.recipe``) on the training split and scores
each trial by its best validation value on the validation split — the loss, or for a
classification task its metric by label scoring (``LadderContext.select_by``); the test split
is never given to it — over the learning rate (log-uniform; and the LoRA rank for LoRA), with median pruning fed
from the same periodic validations, through ``oficina.evals.tune.search``. Each trial trains
with the rung's stopping rule (epochs, patience, min_delta) at ``search.max_epochs``.

What it returns: the chosen values, and the record ``summary.json`` keeps under the rung's
``search``: the trials (number, state, params, value, steps, seconds, FLOPs, dollars), their
total cost (added to the rung's training cost by the caller: a team pays for its search) and
what the final training does — reuse the best trial's model when it trained on the same data
with the same budget (the retraining would be the same run), otherwise retrain at its values.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import Field, field_validator

from oficina.config import Section
from oficina.errors import UserError
from oficina.ladder.context import LadderContext
from oficina.ladder.result import Cost
from oficina.measure import current_mb
from oficina.workspace import atomic_write_text


class SearchedRung(Protocol):
    """What a search needs of a trained rung (``rungs.RecipeRung`` is one)."""

    name: str
    reuse: tuple[dict, Path] | None

    def budget(self, ctx: LadderContext, hp: dict[str, Any]) -> Any: ...

    def recipe(self, ctx: LadderContext, hp: dict[str, Any], out: Path) -> tuple[str, Any]: ...

    def fit_hooks(self, ctx: LadderContext) -> Any: ...


class SearchSettings(Section):
    """A budgeted learning-rate search (``oficina tune``) on the training split, scored on the
    validation split (the rungs' selection value); ``trials: 0`` trains with the config's values."""

    trials: int = Field(4, ge=0, description="trials of the search (0: use the config's values)")
    lr: list[float] | None = Field(
        None,
        description="[low, high]: learning rates searched log-uniformly (default: lr/10..lr*10)",
    )
    max_epochs: float | None = Field(
        None,
        gt=0,
        description="each trial's epoch budget (default: the rung's max_epochs; then the best "
        "trial's model is the rung's, not trained again)",
    )
    pruner: Literal["median", "off"] = Field(
        "median", description="stop trials whose validation value trails the median of earlier ones"
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="trials trained at once, each in its own process with an equal share of the "
        "CPU threads (default: as many as the trials, up to the threads torch uses)",
    )

    @field_validator("lr")
    @classmethod
    def _range(cls, v):
        if v is not None and not (len(v) == 2 and 0 < v[0] < v[1]):
            raise ValueError("give [low, high] with 0 < low < high")
        return v


class LoraSearchSettings(SearchSettings):
    rank: list[int] | None = Field(
        None, description="[low, high]: LoRA ranks searched (log-scaled; default: not searched)"
    )

    @field_validator("rank")
    @classmethod
    def _ranks(cls, v):
        if v is not None and not (len(v) == 2 and 1 <= v[0] < v[1]):
            raise ValueError("give [low, high] with 1 <= low < high")
        return v


# The rung's hyperparameter -> the dotted key of the recipe's config that tune varies.
KEYS = {"lr": "train.lr", "rank": "lora.r"}


def space_of(hp: dict[str, Any], settings: SearchSettings) -> dict[str, dict]:
    """The tune space: the learning rate (default a decade either side of the config's) and,
    when given, the LoRA rank."""
    lo, hi = settings.lr or (float(hp["lr"]) / 10, float(hp["lr"]) * 10)
    space = {KEYS["lr"]: {"type": "loguniform", "low": lo, "high": hi}}
    rank = getattr(settings, "rank", None)
    if rank:
        space[KEYS["rank"]] = {"type": "int", "low": rank[0], "high": rank[1], "log": True}
    return space


def run_search(
    rung: SearchedRung, ctx: LadderContext, hp: dict[str, Any], settings: SearchSettings
) -> tuple[dict[str, Any], dict]:
    """(the values to train with, the search's record); sets ``rung.reuse`` when the best
    trial's model is the rung's final model."""
    from oficina.evals.tune import TuneConfig, search
    from oficina.jsonl import read_jsonl

    out = ctx.out / f"search-{rung.name}"
    # A fresh study each run: an earlier ladder's trials (other data, other limits) must not count.
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    trial_epochs = float(settings.max_epochs or hp["max_epochs"])
    trial_hp = {**hp, "max_epochs": trial_epochs}
    verb, cfg = rung.recipe(ctx, trial_hp, out / "unused")
    space = space_of(hp, settings)
    spec = out / "search.yaml"
    atomic_write_text(
        spec,
        yaml.safe_dump(
            {"verb": verb, **cfg.model_dump(mode="json", by_alias=True), "space": space},
            sort_keys=False,
        ),
    )
    # Each trial's own summary (FLOPs, curves, model dir), from whichever worker trained it.
    summaries: dict[int, dict] = {}
    import torch

    held = current_mb() or 0.0  # resident in this process as its workers fork
    t0 = time.perf_counter()
    tuned = search(
        TuneConfig(
            spec=str(spec),
            out=str(out),
            trials=settings.trials,
            # what fit picks each trial's checkpoint by (the validation loss, or the task's
            # metric by label scoring: context.select_by) also ranks and prunes the trials
            metric="val_loss" if ctx.select_by == "loss" else ctx.select_by,
            sampler="tpe",
            pruner=settings.pruner,
            storage=f"sqlite:///{out / 'study.db'}",
            study=f"ladder-{rung.name}",
            seed=ctx.cfg.seed,
            keep_models=True,  # the best trial may be the rung's model
            # Trials are judged from one epoch on: a trial's first pass over the data is
            # its warm-up, however often it validates.
            prune_after=rung.budget(ctx, trial_hp).steps_per_epoch,
            # ...and only once its validation falls below its own best: on the demo's 40
            # validation rows a LoRA at lr 1.1e-3 trailed one at 3.6e-4 by 4 rows after its
            # first epoch (0.275 vs 0.375) and was pruned there, though the slower rate was
            # itself still climbing at its 6th epoch (0.35 .. 0.60; 2026-12-01, bf16)
            spare_improving=True,
            # Trials side by side, one CPU thread each on 2 cores: the demo's 2-trial LoRA
            # search (1 epoch a trial) took 91 s instead of 164 (0.55x), each trial at ~275
            # tok/s against ~310 alone at 2 threads (benchmarks/search_workers.py, 2-core Xeon,
            # 2026-12-02). With both trials under way, the pruner has no finished trial to
            # compare with until one ends (a 2-trial search pruned nothing in that demo).
            # tune runs at most as many as the trials left; it says how many it ran
            workers=settings.workers or torch.get_num_threads(),
        ),
        eval_metrics=None if (h := rung.fit_hooks(ctx)) is None else h.eval_metrics,
        results=summaries,
    )
    wall = time.perf_counter() - t0
    workers = tuned["workers"]
    rows, _ = read_jsonl(out / "trials.jsonl", "trials file")
    names = {v: k for k, v in KEYS.items()}
    trials = []
    for r in rows:
        s = summaries.get(r["number"], {})
        flops, seconds = float(s.get("flops", 0.0)), float(r.get("duration_s") or 0.0)
        trials.append(
            {
                "number": r["number"],
                "state": r["state"],
                "params": {names.get(k, k): v for k, v in r["params"].items()},
                "value": r["value"],
                "steps": r["cost"],
                "stopped": s.get("stopped"),
                "seconds": round(seconds, 2),
                "flops": flops,
                # a trial beside others had 1/workers of the machine the search pays for
                "usd": ctx.training_usd(seconds / workers, flops),
                "curve": r.get("curve", []),
            }
        )
    flops = sum(t["flops"] for t in trials)
    # Trials side by side hold their memory at once. A forked worker's peak counts what it
    # shares with this process (resident when it forked): that once, each worker's own on top.
    peaks = sorted((float(s.get("peak_memory_mb", 0)) for s in summaries.values()), reverse=True)
    peaks = peaks[:workers] or [0.0]
    cost = Cost(
        wall_time_s=wall,
        flops=flops,
        peak_memory_mb=peaks[0] + sum(max(0.0, p - held) for p in peaks[1:]),
        usd=ctx.training_usd(wall, flops),
    )
    best = tuned.get("best")
    judged_by = rung.budget(ctx, hp).judged_by
    record: dict[str, Any] = {
        "objective": f"{judged_by} (validation split; the test split is never read)",
        "judged_by": judged_by,
        "space": {names[k]: [v["low"], v["high"]] for k, v in space.items()},
        "trial_epochs": trial_epochs,
        "workers": workers,
        "trials": trials,
        "pruned": tuned["pruned"],
        "trial_steps": tuned["trial_steps"],
        "pruning_saved": tuned["pruning_saved"],
        "cost": cost.model_dump(),
        "best": None if best is None else best["number"],
    }
    if best is None:
        raise UserError(
            f"the {rung.name} search finished no trial (see {out / 'trials.jsonl'}): lower or "
            f"narrow rungs.{rung.name}.search.lr, or set rungs.{rung.name}.search.trials 0"
        )
    chosen = {**hp, **{names[k]: v for k, v in best["params"].items()}}
    # Same budget (epochs, steps, validation cadence, stopping rule) on the same training split:
    # retraining at the best trial's values would repeat that trial.
    same = rung.budget(ctx, trial_hp) == rung.budget(ctx, hp)
    keep = best["number"] if same else None
    for d in (out / "trials").glob("*"):  # the other trials' models are not needed
        if not (keep is not None and d.name == f"{keep:04d}"):
            shutil.rmtree(d, ignore_errors=True)
    record["reused"] = same  # the best trial's model is the rung's model
    if same:
        s = summaries[best["number"]]
        rung.reuse = (s, Path(s["out"]))
        record["final"] = (
            f"reused trial #{best['number']}'s model: it trained on the same training split with "
            f"the same budget and stopping rule ({trial_epochs:g} epochs), so training again "
            "would repeat it"
        )
    else:
        record["final"] = (
            f"retrained at trial #{best['number']}'s values: the trials' budget "
            f"({trial_epochs:g} epochs) is not the rung's ({float(hp['max_epochs']):g})"
        )
    atomic_write_text(out / "search.json", json.dumps(record, indent=2, default=str))
    return chosen, record
