"""What one rung of the ladder measured: quality, per-item answers, costs, parameters, curves.

Kept apart from the rungs and the report so the recommendation and the report can be tested on
hand-made results, without a model.
"""

from __future__ import annotations

from statistics import fmean, pstdev
from typing import Any

from pydantic import BaseModel, Field

from oficina.evals.metrics import bootstrap_ci


class Cost(BaseModel):
    wall_time_s: float = 0.0
    flops: float = 0.0
    peak_memory_mb: float = 0.0
    usd: float = 0.0


class InferenceCost(BaseModel):
    latency_s_per_item: float = 0.0
    tokens_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    prompt_tokens_mean: float = 0.0
    usd_per_1k_requests: float = 0.0
    # The quality pass's own wall time per item: measured whenever the rung ran, under that
    # moment's load. ``latency_s_per_item`` is the latency pass's figure (``ladder.latency``)
    # when it ran, else this one.
    scoring_s_per_item: float = 0.0


class RungResult(BaseModel):
    """One rung of the ladder, measured."""

    name: str
    description: str = ""
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    quality: float | None = None
    ci: tuple[float, float] | None = None
    metric: str = "accuracy"
    extra_metrics: dict[str, float] = Field(default_factory=dict)
    extra_ci: dict[str, tuple[float, float]] = Field(default_factory=dict)
    # Per test item, in the test split's order: its id, what the rung answered, the gold answer
    # and the item's score on the metric (1/0 correct, or a token F1). The paired comparison of
    # two rungs resamples the same items for both from these.
    item_ids: list[Any] = Field(default_factory=list)
    predictions: list[str] = Field(default_factory=list)
    golds: list[str] = Field(default_factory=list)
    per_item: list[float] = Field(default_factory=list)
    # What the rung answered: a classifier that collapsed to one label is visible here.
    predicted_label_counts: dict[str, int] = Field(default_factory=dict)
    confusion: list[list[int]] = Field(default_factory=list)  # rows gold, columns predicted
    flags: list[str] = Field(default_factory=list)  # "collapsed", "within_interval_of_majority"
    flag_text: str = ""
    # The settings it ran with (for a trained rung: lr, steps, batch size, rank...), and the
    # hyperparameter search that chose them (None: they are the config's, not searched).
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Any] | None = None
    # A trained rung's training: its stopping rule, where it stopped and why ("budget" or
    # "early stopping"), its best step and epoch, and the cost of the final training alone.
    training_run: dict[str, Any] = Field(default_factory=dict)
    training: Cost = Field(default_factory=Cost)
    # The rung whose trained model this one is made from (distill's teacher, quantize's
    # source): its training cost, search included, is part of ``training`` — deploying this
    # rung means training that one first.
    built_on: str | None = None
    inference: InferenceCost = Field(default_factory=InferenceCost)
    params_total: int = 0
    params_trainable: int = 0
    params_changed: int = 0  # how many base-model parameters this rung altered
    data: dict[str, Any] = Field(default_factory=dict)
    artifacts: dict[str, str] = Field(default_factory=dict)
    loss_curve: list[tuple[int, float]] = Field(default_factory=list)
    val_curve: list[tuple[int, float]] = Field(default_factory=list)
    # The validation metric that picked the checkpoint (``training_run["select_by"]``) at each
    # validation; empty when the loss picked it (val_curve is that curve).
    select_curve: list[tuple[int, float]] = Field(default_factory=list)
    # A trained rung run with several training seeds (the thorough profile): one entry per seed,
    # {"seed", "quality", "extra_metrics", "training_cost", "steps", "best_step"}; ``quality`` is
    # then their mean (``combine_seeds``). Empty for a single training.
    seeds: list[dict[str, Any]] = Field(default_factory=list)

    def total_usd(self, requests: int) -> float:
        return self.training.usd + self.inference.usd_per_1k_requests * requests / 1000.0

    @property
    def measured(self) -> bool:
        return self.status == "ok" and self.quality is not None


def seed_spread(r: RungResult) -> dict[str, float] | None:
    """min, max and (population) sd of a rung's per-seed qualities; None for one training."""
    qs = [float(x["quality"]) for x in r.seeds]
    if len(qs) < 2:
        return None
    return {"n": len(qs), "min": min(qs), "max": max(qs), "sd": pstdev(qs)}


def combine_seeds(
    runs: list[tuple[int, RungResult]], *, n_boot: int = 1000, seed: int = 0
) -> RungResult:
    """One rung trained once per seed, as one result.

    Its quality is the mean of the seeds' qualities and each test item's score the mean of its
    scores over the seeds, so the paired bootstrap against another rung resamples the seed-
    averaged answers (``recommend.compare`` reads ``per_item``); the interval is the bootstrap
    of those means over the items. Macro-F1 is not a mean over items: its interval is the mean
    of the seeds' intervals and its comparisons read the first seed's answers. The answers,
    flags, curves and inference cost shown are the first seed's; the training cost is the
    first seed's too — deploying the rung trains once; the other seeds are the cost of
    measuring it, kept per seed in ``seeds``.
    """
    first = runs[0][1]
    if len(runs) == 1:
        return first
    results = [r for _, r in runs]
    r = first.model_copy(deep=True)
    r.quality = fmean(float(x.quality) for x in results)
    if first.metric == "macro_f1":
        cis = [x.ci for x in results if x.ci]
        r.ci = (fmean(c[0] for c in cis), fmean(c[1] for c in cis)) if cis else None
    else:
        r.per_item = [fmean(col) for col in zip(*(x.per_item for x in results), strict=True)]
        lo, hi = bootstrap_ci(r.per_item, n=n_boot, seed=seed)
        r.ci = (lo, hi)
    r.extra_metrics = {k: fmean(x.extra_metrics[k] for x in results) for k in first.extra_metrics}
    r.extra_ci = {
        k: (fmean(x.extra_ci[k][0] for x in results), fmean(x.extra_ci[k][1] for x in results))
        for k in first.extra_ci
    }
    r.seeds = [
        {
            "seed": s,
            "quality": x.quality,
            "extra_metrics": x.extra_metrics,
            "training_cost": x.training.model_dump(),
            "steps": x.training_run.get("steps"),
            "best_step": x.training_run.get("best_step"),
        }
        for s, x in runs
    ]
    return r
