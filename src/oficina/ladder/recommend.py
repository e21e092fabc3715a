"""The ladder's decision: the cheapest rung that meets the target, read with its statistics.

Pure functions on measured ``RungResult``s, so they are tested on hand-made per-item answers.

- ``compare``: a paired bootstrap of one rung against another on the *same* test items (each
  resample draws the same items for both; ``oficina.evals.metrics.paired_bootstrap``): the
  difference of their quality and its 95% interval. An interval that contains 0 means these
  items cannot tell the two apart: they are *tied*.
- ``recommend``: among the rungs whose quality meets the target, the one with the lowest total
  cost (training once + inference at the expected request volume); equal costs go to the simpler
  rung (the ladder's order). If none meets the target, the best rung and the rungs tied with it
  are the candidates, and the cheapest of them that did not collapse to one label is named.
  Either way every other rung is compared with the pick, the tied ones are listed
  (``tied_with``), and the reasoning says in words why the pick beats each near alternative
  (cost, a real difference, or the target).
- A trained rung run with several training seeds (``combine_seeds``) enters as its mean over
  the seeds, item by item; when it is the pick, the reasoning gives its seeds' range and says so
  if its worst seed misses the target.
"""

from __future__ import annotations

from oficina.evals.metrics import macro_f1_stat, paired_bootstrap
from oficina.ladder.result import RungResult, seed_spread


def _items(r: RungResult, metric: str) -> list:
    """What the bootstrap resamples for ``metric``: (prediction, gold) pairs for macro-F1 (not
    a mean over items), else each item's score."""
    if metric == "macro_f1":
        return list(zip(r.predictions, r.golds, strict=True))
    return list(r.per_item)


def compare(
    a: RungResult, b: RungResult, metric: str = "accuracy", *, n: int = 1000, seed: int = 0
) -> dict | None:
    """quality(a) - quality(b) on the same items, with its paired-bootstrap interval.

    Returns ``{"diff", "ci", "tied", "p_value", "n"}`` (``tied``: the interval contains 0), or
    None when the two were not scored on the same items (no per-item answers, other golds).
    """
    if not a.per_item or a.item_ids != b.item_ids or len(a.per_item) != len(b.per_item):
        return None
    if metric == "macro_f1" and (a.golds != b.golds or len(a.predictions) != len(b.predictions)):
        return None
    return paired(_items(a, metric), _items(b, metric), metric, n=n, seed=seed)


def paired(items_a: list, items_b: list, metric: str, *, n: int = 1000, seed: int = 0) -> dict:
    """``metric`` of A minus B on the same items (per-item scores, or (prediction, gold) pairs
    for macro-F1), with its paired-bootstrap interval: ``{"diff", "ci", "tied", "p_value", "n"}``.
    Rungs on the test split (``compare``) and a training's checkpoints on the validation rows
    (``rungs.Budget.last_rise``) are compared by it."""
    stat = macro_f1_stat() if metric == "macro_f1" else None
    res = paired_bootstrap(items_a, items_b, stat, n=n, seed=seed)
    lo, hi = res["ci"]
    return {
        "diff": res["diff"],
        "ci": [lo, hi],
        "tied": not res["distinguishable"],
        "p_value": res["p_value"],
        "n": res["n"],
    }


def _ci_text(ci) -> str:
    return f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else ""


def _diff_text(c: dict) -> str:
    return f"difference {c['diff']:+.3f}, 95% CI {c['ci'][0]:+.3f} to {c['ci'][1]:+.3f}"


def recommend(
    rungs: list[RungResult],
    target: float,
    requests: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """The cheapest rung that meets the target, its statistical ties, and the reasoning in words.

    Returns ``{"rung", "met_target", "reasoning", "tied_with", "comparisons"}``;
    ``comparisons[name]`` is ``compare(rung, pick)`` for every other measured rung.
    """
    measured = [r for r in rungs if r.measured]
    if not measured:
        return {
            "rung": None,
            "met_target": False,
            "reasoning": "no rung produced a quality figure",
            "tied_with": [],
            "comparisons": {},
        }
    order = {r.name: i for i, r in enumerate(rungs)}
    metric = measured[0].metric

    def cost_key(r: RungResult) -> tuple:
        return (round(r.total_usd(requests), 6), order[r.name])

    def vs(a: RungResult, b: RungResult) -> dict | None:
        return compare(a, b, metric, n=n_boot, seed=seed)

    meeting = [r for r in measured if r.quality >= target]
    lines: list[str] = []
    if meeting:
        pick = min(meeting, key=cost_key)
        lines.append(
            f"'{pick.name}' is the cheapest rung that meets the target {target:.2f}: "
            f"quality {pick.quality:.3f}{_ci_text(pick.ci)}, ${pick.training.usd:.4f} to train and "
            f"${pick.inference.usd_per_1k_requests:.4f} per 1k requests "
            f"(${pick.total_usd(requests):.2f} for {requests:,} requests)."
        )
    else:
        best = max(measured, key=lambda r: (r.quality, -order[r.name]))
        tied_best = [r for r in measured if r is not best and (c := vs(r, best)) and c["tied"]]
        # A rung that learned nothing (one label for everything) is no place to start from,
        # however cheap: on few items it can still be "tied" with the best.
        learned = [r for r in (best, *tied_best) if "collapsed" not in r.flags]
        pick = min(learned or [best, *tied_best], key=cost_key)
        lines.append(
            f"No rung reached the target {target:.2f}. The best was '{best.name}' at "
            f"{best.quality:.3f}{_ci_text(best.ci)}."
        )
        if pick is not best:
            c = vs(pick, best)
            lines.append(
                f"'{pick.name}' ({pick.quality:.3f}) cannot be told apart from it on these "
                f"{c['n']} items ({_diff_text(c)}) and costs less (${pick.total_usd(requests):.2f} "
                f"vs ${best.total_usd(requests):.2f} for {requests:,} requests): start from it."
            )
        lines.append("Add labelled data, train longer, or start from a larger base model.")

    comparisons = {r.name: c for r in measured if r is not pick and (c := vs(r, pick))}
    tied = [r for r in measured if r.name in comparisons and comparisons[r.name]["tied"]]

    spread = seed_spread(pick)
    if spread:
        worst = min(pick.seeds, key=lambda x: x["quality"])
        lines.append(
            f"Its quality is the mean over {spread['n']} training seeds (from {spread['min']:.3f} "
            f"to {spread['max']:.3f}, sd {spread['sd']:.3f})"
            + (
                f"; seed {worst['seed']} alone misses the target: expect a retraining to land "
                "below it at times."
                if meeting and spread["min"] < target
                else "."
            )
        )
    if "collapsed" in pick.flags:
        lines.append(f"Beware: '{pick.name}' {pick.flag_text}; a constant answer scores as much.")
    if meeting and pick.ci and pick.ci[0] < target:
        lines.append(
            f"Its confidence interval dips below the target ({pick.ci[0]:.3f}): measure on more "
            "held-out data before relying on it."
        )
    if tied:
        n_items = comparisons[tied[0].name]["n"]
        lines.append(
            f"Statistically tied with it on these {n_items} items (the difference's interval "
            "contains 0): "
            + "; ".join(
                f"{r.name} {r.quality:.3f} ({_diff_text(comparisons[r.name])}"
                + (
                    ", misses the target"
                    if r.quality < target
                    else f", ${r.total_usd(requests):.2f} in total"
                )
                + ")"
                for r in tied
            )
            + ("; the tie goes to the cheapest that meets the target." if meeting else ".")
        )
    cheaper_missing = [
        r
        for r in measured
        if r.total_usd(requests) < pick.total_usd(requests) and r.quality < target and r not in tied
    ]
    if meeting and cheaper_missing:
        lines.append(
            "Cheaper rungs miss the target: "
            + ", ".join(f"{r.name} {r.quality:.3f}" for r in cheaper_missing)
            + "."
        )
    learned_nothing = [r for r in measured if "collapsed" in r.flags and r is not pick]
    if learned_nothing:
        lines.append(
            "Learned nothing usable: "
            + "; ".join(f"{r.name} {r.flag_text}" for r in learned_nothing)
            + "."
        )
    better = [
        r
        for r in measured
        if r.quality > pick.quality and r not in tied and r.quality >= target and r is not pick
    ]
    if meeting and better:
        b = max(better, key=lambda r: r.quality)
        c = comparisons.get(b.name)
        lines.append(
            f"'{b.name}' is more accurate ({b.quality:.3f}"
            + (f"; {_diff_text(c)}" if c else "")
            + f") but costs ${b.total_usd(requests):.2f} in total; raise the target if that "
            "margin matters."
        )
    return {
        "rung": pick.name,
        "met_target": bool(meeting),
        "reasoning": " ".join(lines),
        "tied_with": [r.name for r in tied],
        "comparisons": comparisons,
    }
