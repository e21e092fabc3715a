"""The ladder's report: ``summary.json`` (the interface other tools read), ``summary.md`` and
one self-contained HTML page (plots inlined as base64 PNG, so it can be mailed or archived).

The decision itself is ``oficina.ladder.recommend``; this module only lays it out.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from oficina.evals.plots import png_base64
from oficina.ladder.result import RungResult, seed_spread
from oficina.workspace import atomic_write_json, atomic_write_text

# ---------------------------------------------------------------------------- plots


def _scatter(
    rungs: list[RungResult],
    x_of,
    xlabel: str,
    target: float,
    title: str,
    references: dict[str, float] | None = None,
    frontier: bool = False,
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for r in rungs:
        if r.status != "ok" or r.quality is None:
            continue
        x = x_of(r)
        err = [[r.quality - r.ci[0]], [r.ci[1] - r.quality]] if r.ci else None
        line = ax.errorbar([x], [r.quality], yerr=err, fmt="o", capsize=3)
        if len(r.seeds) > 1:  # each training seed's quality beside the mean
            qs = [s["quality"] for s in r.seeds]
            ax.plot([x] * len(qs), qs, "_", ms=10, c=line[0].get_color(), alpha=0.8)
        ax.annotate(r.name, (x, r.quality), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if frontier:  # the rungs no other rung beats on both quality and cost
        pts = sorted((x_of(r), r.quality) for r in rungs if r.measured)
        front, best = [], float("-inf")
        for x, q in pts:
            if q > best:
                front.append((x, q))
                best = q
        ax.step(*zip(*front, strict=True), where="post", c="seagreen", lw=1, alpha=0.7)
    ax.axhline(target, ls="--", c="gray", lw=1)
    ax.text(ax.get_xlim()[0], target, " target", va="bottom", fontsize=8, color="gray")
    for name, y in (references or {}).items():  # what learning nothing scores
        ax.axhline(y, ls=":", c="firebrick", lw=1)
        ax.text(ax.get_xlim()[0], y, f" {name}", va="bottom", fontsize=7, color="firebrick")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("quality")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return png_base64(fig)


def _curves(rungs: list[RungResult]) -> str | None:
    with_curves = [r for r in rungs if r.loss_curve]
    if not with_curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for r in with_curves:
        steps, losses = zip(*r.loss_curve, strict=False)
        line = ax.plot(steps, losses, label=f"{r.name} train", lw=1.2)[0]
        if r.val_curve:
            vs, vl = zip(*r.val_curve, strict=False)
            ax.plot(vs, vl, "--o", ms=3, color=line.get_color(), label=f"{r.name} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss curves", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return png_base64(fig)


def flops_curves(r: RungResult) -> list[tuple[str, list[float], list[float], bool]]:
    """A trained rung's validation values that picked its checkpoints (the loss, or the task's
    metric: ``select_by``) against the training FLOPs spent to reach them:
    (label, FLOPs, losses, is the rung's model) per search trial, the trials one after the
    other (a trial starts where the last ended: the x axis is what the search has spent), then
    the final training when it was trained again. FLOPs per step are a training's FLOPs over
    its steps."""
    out: list[tuple[str, list[float], list[float], bool]] = []
    spent = 0.0
    search = r.search or {}
    for t in search.get("trials", []):
        curve, steps, flops = t.get("curve") or [], int(t.get("steps") or 0), t.get("flops", 0.0)
        if curve and steps and flops:
            per = float(flops) / steps
            xs = [spent + per * float(step) for step, _ in curve]
            lr = (t.get("params") or {}).get("lr")
            label = f"#{t['number']}" + (f" lr {lr:.2g}" if isinstance(lr, float) else "")
            reused = bool(search.get("reused")) and search.get("best") == t["number"]
            out.append((label, xs, [float(v) for _, v in curve], reused))
        spent += float(flops or 0.0)
    final = (r.training_run or {}).get("final_cost") or {}
    steps = int((r.training_run or {}).get("steps") or 0)
    curve = r.select_curve or r.val_curve  # what the search's trials were judged by too
    if curve and steps and final.get("flops"):  # trained again (or never searched)
        per = float(final["flops"]) / steps
        out.append(("final", [spent + per * s for s, _ in curve], [v for _, v in curve], True))
    return out


def _flops_plot(rungs: list[RungResult]) -> str | None:
    """One panel per trained rung: its validation loss (or metric) against cumulative training
    FLOPs."""
    panels = [(r, c) for r in rungs if r.measured for c in [flops_curves(r)] if c]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(2.9 * len(panels) + 0.6, 3.6), squeeze=False)
    for ax, (r, curves) in zip(axes[0], panels, strict=True):
        for label, xs, ys, chosen in curves:
            ax.plot(xs, ys, "-o", ms=2.5, lw=2.2 if chosen else 0.9, alpha=1 if chosen else 0.55,
                    label=label + (" (model)" if chosen else ""))  # fmt: skip
        ax.set_title(r.name, fontsize=9)
        ax.set_xlabel("training FLOPs, search included", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    judged = {(r.training_run or {}).get("select_by", "loss") for r, _ in panels}
    name = "validation loss" if judged == {"loss"} else "validation " + "/".join(sorted(judged))
    axes[0][0].set_ylabel(name)
    fig.suptitle(f"{name} vs training compute (each search trial, then the model)", fontsize=9)
    fig.tight_layout()
    return png_base64(fig)


def md_table(rows: list[dict], cols: list[str]) -> list[str]:
    """Markdown table lines: a header, then one line per row (a missing cell is empty)."""
    line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    return [line(cols), "|" + "---|" * len(cols)] + [
        line(str(r.get(c, "")) for c in cols) for r in rows
    ]


def trials_value_column(rungs: list[RungResult]) -> str:
    """The trials table's value column, named by what judged the searches ("val loss", "val
    accuracy"; "val value" if they differ): a classifier's trials are judged by accuracy."""
    judged = {
        (r.search.get("judged_by") or "validation loss").split(" (")[0]
        for r in rungs
        if r.search and r.search.get("trials")
    }
    if len(judged) != 1:
        return "val value"
    return judged.pop().replace("validation ", "val ", 1)


def trials_rows(rungs: list[RungResult]) -> list[dict]:
    """Every search trial of every trained rung: what it tried and what it got."""
    rows = []
    value = trials_value_column(rungs)
    for r in rungs:
        search = r.search or {}
        for t in search.get("trials", []):
            params = t.get("params") or {}
            rows.append(
                {
                    "rung": r.name,
                    "trial": t["number"],
                    **{k: _short(v) for k, v in params.items()},
                    "state": t.get("state", ""),
                    value: "-" if t.get("value") is None else f"{t['value']:.4f}",
                    "steps": t.get("steps", ""),
                    "time": _fmt_s(float(t.get("seconds") or 0.0)),
                    "chosen": "yes" if search.get("best") == t["number"] else "",
                }
            )
    return rows


# ---------------------------------------------------------------------------- writers


def _fmt_s(s: float) -> str:
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}m"


def _ci(ci) -> str:
    return "-" if not ci else f"{ci[0]:.3f}–{ci[1]:.3f}"


def _vs_pick(c: dict | None) -> str:
    if not c:
        return "-"
    return f"{c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]" + (
        " tied" if c["tied"] else ""
    )


def _second(metric: str) -> tuple[str, str]:
    """The metric shown beside the quality: (key, column title)."""
    return {
        "accuracy": ("macro_f1", "macro-F1"),
        "macro_f1": ("macro_f1", "macro-F1"),
        "exact_match": ("token_f1", "token F1"),
        "token_f1": ("exact_match", "exact match"),
    }[metric]


def reference_points(baselines: dict | None, metric: str) -> list[tuple[str, dict]]:
    """(title, baseline) of what learning nothing scores: always the majority label and a
    uniform guess (classification), or the empty and the most frequent answer (generation)."""
    if not baselines:
        return []
    if "majority" in baselines:
        maj = baselines["majority"]
        return [(f"always '{maj['label']}'", maj), ("uniform random", baselines["uniform"])]
    top = baselines["most_frequent"]
    said = top["label"] if len(top["label"]) <= 40 else top["label"][:37] + "..."
    return [("empty answer", baselines["empty"]), (f"always '{said}'", top)]


def _spread_text(r: RungResult) -> str:
    sp = seed_spread(r)
    if sp is None:
        return "-"
    return f"{sp['n']}: {sp['min']:.3f}–{sp['max']:.3f} (sd {sp['sd']:.3f})"


def table_rows(
    rungs: list[RungResult],
    baselines: dict | None = None,
    metric: str = "accuracy",
    rec: dict | None = None,
) -> list[dict]:
    """The table's rows: the reference points first (what learning nothing scores), then rungs."""
    rows = []
    blank = dict.fromkeys(
        ["train time", "train FLOPs", "train $", "latency/item", "prompt tokens", "$/1k req",
         "params", "changed params", "labelled data"], "-"
    )  # fmt: skip
    key2, title2 = _second(metric)
    seeded = any(len(r.seeds) > 1 for r in rungs)  # the thorough profile: a column for them
    for title, b in reference_points(baselines, metric):
        rows.append(
            {
                "rung": f"baseline: {title}",
                "status": "reference",
                "quality": f"{b[metric]:.3f}",
                "95% CI": _ci((b.get("ci") or {}).get(metric)),
                title2: f"{b[key2]:.3f}",
                **blank,
                "flags": "",
            }
        )
    for r in rungs:
        f1 = r.extra_metrics.get(key2)
        rows.append(
            {
                "rung": r.name,
                "status": r.status if r.status == "ok" else f"{r.status}: {r.reason}",
                "quality": "-" if r.quality is None else f"{r.quality:.3f}",
                "95% CI": _ci(r.ci),
                **({"seeds": _spread_text(r)} if seeded else {}),
                title2: "-" if f1 is None else f"{f1:.3f}",
                "vs recommended": "recommended"
                if rec and r.name == rec.get("rung")
                else _vs_pick((rec or {}).get("comparisons", {}).get(r.name)),
                "train time": (_fmt_s(r.training.wall_time_s) if r.training.wall_time_s else "0")
                + (f" (with {r.built_on}'s)" if r.built_on else ""),
                "train FLOPs": f"{r.training.flops:.2e}" if r.training.flops else "0",
                "train $": f"{r.training.usd:.4f}",
                "train memory": f"{r.training.peak_memory_mb:,.0f} MB"
                if r.training.peak_memory_mb
                else "-",
                "latency/item": f"{r.inference.latency_s_per_item * 1000:.0f} ms",
                "prompt tokens": f"{r.inference.prompt_tokens_mean:.0f}",
                "$/1k req": f"{r.inference.usd_per_1k_requests:.4f}",
                "inference memory": f"{r.inference.peak_memory_mb:,.0f} MB"
                if r.inference.peak_memory_mb
                else "-",
                "params": f"{r.params_total / 1e6:.1f}M" if r.params_total else "-",
                "changed params": f"{r.params_changed / 1e6:.2f}M",
                "labelled data": str(r.data.get("labelled_examples", 0)),
                "flags": ", ".join(r.flags),
            }
        )
    cols = list(rows[-1]) if rows else []
    return [{c: row.get(c, "-") for c in cols} for row in rows]


def claims(rungs: list[RungResult]) -> list[str]:
    """The seeds' claims, checked against this run's numbers (each line states what was measured)."""
    by = {r.name: r for r in rungs if r.status == "ok"}
    out = []
    base = by.get("zero_shot")
    if base:
        for name in ("lora", "full"):
            if name in by:
                r = by[name]
                same = r.params_total == base.params_total
                out.append(
                    f"Fine-tuning keeps the parameter count: {name} has {r.params_total:,} parameters, the base {base.params_total:,} — {'same' if same else 'DIFFERENT'}."
                )
        if "distill" in by:
            r = by["distill"]
            out.append(
                f"Distillation reduces it: the student has {r.params_total:,} parameters, {r.params_total / base.params_total:.0%} of the base."
            )
        for name in ("few_shot", "rag"):
            if name in by:
                r = by[name]
                out.append(
                    f"Prompting changes no parameters: {name} altered {r.params_changed:,} and pays {r.inference.prompt_tokens_mean:.0f} prompt tokens per request instead of {base.inference.prompt_tokens_mean:.0f}."
                )
    bigger = [r for r in by.values() if r.params_total]
    if len(bigger) >= 2:
        small = min(bigger, key=lambda r: r.params_total)
        large = max(bigger, key=lambda r: r.params_total)
        if (
            small is not large
            and small.inference.latency_s_per_item
            and large.inference.latency_s_per_item
        ):
            out.append(
                f"Larger models cost more: {large.name} ({large.params_total / 1e6:.0f}M) takes {large.inference.latency_s_per_item * 1000:.0f} ms per item, "
                f"{small.name} ({small.params_total / 1e6:.0f}M) {small.inference.latency_s_per_item * 1000:.0f} ms."
            )
    return out


def _answers_html(rungs: list[RungResult], labels: list[str]) -> str:
    """Per rung: how often each label was answered, and the confusion matrix (rows gold)."""
    e = html.escape
    ok = [r for r in rungs if r.status == "ok" and r.confusion]
    if not ok or not labels:
        return ""
    parts = ["<h2>What each rung answered</h2>"]
    flagged = [r for r in ok if r.flags]
    if flagged:
        parts.append(
            "<ul>"
            + "".join(
                f"<li><b>{e(r.name)}</b> ({e(', '.join(r.flags))}): {e(r.flag_text)}</li>"
                for r in flagged
            )
            + "</ul>"
        )
    for r in ok:
        head = "".join(f"<th>{e(lab)}</th>" for lab in labels)
        body = ""
        for i, gold in enumerate(labels):
            cells = "".join(
                f'<td class="{"hit" if i == j else ""}">{n}</td>'
                for j, n in enumerate(r.confusion[i])
            )
            body += f"<tr><th>{e(gold)}</th>{cells}</tr>"
        counts = "".join(f"<td>{r.predicted_label_counts.get(lab, 0)}</td>" for lab in labels)
        parts.append(
            f'<table class="cm"><caption>{e(r.name)}</caption>'
            f"<tr><th>gold \\ predicted</th>{head}</tr>{body}"
            f"<tr><th>answered</th>{counts}</tr></table>"
        )
    return "".join(parts)


def _items_text(meta: dict) -> str:
    """'96 held-out items', or '16 of 96 ...' when a limit cut the test split (never silently)."""
    n, of = meta.get("test_items"), meta.get("test_split_items")
    if of is not None and n != of:
        return f"{n} of {of} held-out items (limit_test)"
    return f"{n} held-out items"


def settings_lines(rungs: list[RungResult]) -> list[str]:
    """What each measured rung ran with, and where those values came from."""
    out = []
    for r in rungs:
        if not r.measured or not r.hyperparameters:
            continue
        values = ", ".join(f"{k}={_short(v)}" for k, v in r.hyperparameters.items())
        if r.search:
            s = r.search
            c = s.get("cost") or {}
            source = (
                f"lr{' and rank' if 'rank' in s.get('space', {}) else ''} chosen by a search of "
                f"{len(s.get('trials', []))} trials on the {s.get('judged_by', 'validation loss')} "
                f"({s.get('pruned', 0)} "
                f"pruned, {s.get('trial_steps', 0)} trial-steps, {_fmt_s(c.get('wall_time_s', 0))}, "
                f"${c.get('usd', 0):.4f} counted in its training cost); {s.get('final', '')}"
            )
        else:
            source = "the config's values (no search)"
        out.append(f"{r.name}: {values} — {source}")
        t = r.training_run
        if t:
            out.append(
                f"{r.name}: {t['rule']}; stopped by {t['stopped']} at step {t['steps']} of "
                f"{t['max_steps']}, best at step {t['best_step']} (epoch {t['best_epoch']})"
                + _budget_text(t)
                + _cooldown_text(t.get("cooldown"))
            )
    return out


def _budget_text(t: dict) -> str:
    """Whether the budget ended a curve still rising, and on what evidence."""
    r = t.get("last_rise")
    if r:
        rise = (
            f"{r['diff']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] over step {r['from_step']} "
            f"on the same {r['rows']} validation rows"
        )
        if t.get("best_at_budget"):
            return f" — the budget, not the curve, chose it: its last rise, {rise}, is beyond noise"
        return f" — the last evaluation, but its rise, {rise}, is within noise: flat"
    return " — the budget, not the curve, chose it" if t.get("best_at_budget") else ""


def _cooldown_text(c: dict | None) -> str:
    if not c:
        return ""
    verdict = "kept" if c["kept"] else "not kept: no better than the best"
    metrics = "".join(f", {k} {v:.4f}" for k, v in c.items() if k in ("accuracy", "macro_f1"))
    return (
        f"; annealed {c['steps']} steps from there: validation loss {c['val_loss']:.4f}{metrics} "
        f"({verdict})"
    )


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


SELECTION_RULE = (
    "Selection rule: among the rungs whose quality meets the target, the one with the lowest total "
    "cost (training once + inference at the expected request volume; equal costs go to the simpler "
    "rung). Every other rung is compared with it by a paired bootstrap on the same test items; a "
    "rung whose difference's 95% interval contains 0 is reported as tied. If no rung meets the "
    "target, the cheapest of the best rung and the rungs tied with it that did not collapse to one "
    "label is named."
)


def write(
    out: Path, rungs: list[RungResult], rec: dict, meta: dict, task: dict | None = None
) -> dict[str, Path]:
    """summary.json, summary.md and report.html in ``out``; ``task`` is the task's description
    (kind, labels, split sizes) as summary.json's ``task``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metric = str(meta.get("metric", "accuracy"))
    baselines = meta.get("baselines")
    requests = int(meta.get("requests") or 0)
    rows = table_rows(rungs, baselines, metric, rec)
    latency_line = str((meta.get("latency") or {}).get("method") or "")
    claim_lines = claims(rungs)
    references = {title: b[metric] for title, b in reference_points(baselines, metric)} or None
    summary = {
        "meta": meta,
        "task": task or {},
        "target": meta.get("target"),
        "recommended": rec["rung"],
        "met_target": rec["met_target"],
        "reasoning": rec["reasoning"],
        "selection_rule": SELECTION_RULE,
        "tied_with": rec.get("tied_with", []),
        "comparisons": rec.get("comparisons", {}),
        "claims": claim_lines,
        "baselines": baselines,
        "rungs": [
            {
                "name": r.name,
                "status": r.status,
                "reason": r.reason,
                "metric": r.metric,
                "quality": r.quality,
                "ci": list(r.ci) if r.ci else None,
                "hyperparameters": r.hyperparameters,
                "search": r.search,
                "training_run": r.training_run,
                "seeds": r.seeds,
                "seed_spread": seed_spread(r),
                "total_usd": r.total_usd(requests) if r.measured else None,
                "training_cost": r.training.model_dump(),
                "built_on": r.built_on,
                "inference_cost": r.inference.model_dump(),
                "parameters": r.params_total,
                "params_trainable": r.params_trainable,
                "params_changed": r.params_changed,
                "data": r.data,
                "artifacts": r.artifacts,
                "extra_metrics": r.extra_metrics,
                "extra_ci": {k: list(v) for k, v in r.extra_ci.items()},
                "predicted_label_counts": r.predicted_label_counts,
                "confusion": r.confusion,
                "flags": r.flags,
                "flag_text": r.flag_text,
                "predictions": r.predictions,
                "loss_curve": [list(p) for p in r.loss_curve],
                "val_curve": [list(p) for p in r.val_curve],
                "select_curve": [list(p) for p in r.select_curve],
                "description": r.description,
            }
            for r in rungs
        ],
    }
    atomic_write_json(out / "summary.json", summary)

    cols = list(rows[0]) if rows else []
    md = [f"# Adaptation ladder — {meta.get('task', '')}", ""]
    md.append(
        f"Base model `{meta.get('base_model')}`, target {meta.get('metric', 'accuracy')} ≥ {meta.get('target')}, "
        f"{_items_text(meta)}, costs on `{meta.get('hardware')}` at ${meta.get('usd_per_hour')}/h"
        + (
            ", every prompt sent as the user turn of the model's chat template."
            if meta.get("chat")
            else "."
        )
    )
    md += [""] + md_table(rows, cols)
    flagged = [r for r in rungs if r.flags]
    if flagged:
        md += [""] + [f"- ⚠ **{r.name}** ({', '.join(r.flags)}): {r.flag_text}" for r in flagged]
    md += ["", f"**Recommendation: {rec['rung']}** — {rec['reasoning']}", "", SELECTION_RULE, ""]
    if latency_line:
        md += [latency_line, ""]
    settings = settings_lines(rungs)
    if settings:
        md += ["## What each rung ran with", ""] + [f"- {x}" for x in settings] + [""]
    trials = trials_rows(rungs)
    trial_cols = list(dict.fromkeys(k for t in trials for k in t))
    if trials:
        md += ["## Search trials", ""] + md_table(trials, trial_cols) + [""]
    if claim_lines:
        md += ["## The seeds' claims, measured", ""] + [f"- {c}" for c in claim_lines]
    atomic_write_text(out / "summary.md", "\n".join(md) + "\n")

    ok = [r for r in rungs if r.measured]
    target = float(meta.get("target") or 0)
    plots = []
    if ok:
        plots.append(
            (
                "Quality vs total cost",
                _scatter(
                    ok,
                    lambda r: r.total_usd(requests),
                    f"total cost, $ (training + {requests:,} requests)",
                    target,
                    "quality vs total cost (Pareto front in green)",
                    references,
                    frontier=True,
                ),
            )
        )
        plots.append(
            (
                "Quality vs training cost",
                _scatter(
                    ok,
                    lambda r: r.training.wall_time_s,
                    "training wall time (s)",
                    target,
                    "quality vs training cost",
                    references,
                ),
            )
        )
        plots.append(
            (
                "Quality vs inference cost",
                _scatter(
                    ok,
                    lambda r: r.inference.latency_s_per_item * 1000,
                    "latency per request (ms)",
                    target,
                    "quality vs inference cost",
                    references,
                ),
            )
        )
    curves = _curves(rungs)
    if curves:
        plots.append(("Loss curves", curves))
    by_flops = _flops_plot(rungs)
    if by_flops:
        plots.append(("Validation loss vs training FLOPs", by_flops))
    e = html.escape
    table_html = "<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>"
    for r in rows:
        cls = (
            ' class="pick"'
            if r["rung"] == rec["rung"]
            else ' class="ref"'
            if r["status"] == "reference"
            else ' class="flag"'
            if r["flags"]
            else ""
        )
        table_html += f"<tr{cls}>" + "".join(f"<td>{e(str(r[c]))}</td>" for c in cols) + "</tr>"
    table_html += "</table>"
    trials_html = ""
    if trials:
        trials_html = (
            "<h2>Search trials</h2><table><tr>"
            + "".join(f"<th>{e(c)}</th>" for c in trial_cols)
            + "</tr>"
            + "".join(
                "<tr>" + "".join(f"<td>{e(str(t.get(c, '')))}</td>" for c in trial_cols) + "</tr>"
                for t in trials
            )
            + "</table>"
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Oficina ladder — {e(str(meta.get("task", "")))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
tr.pick {{ background: #e7f6e7; font-weight: 600; }} tr.ref {{ color: #777; font-style: italic; }}
tr.flag td {{ background: #fff3f0; }} .cm {{ display: inline-block; vertical-align: top; margin: 0 1.5em 1em 0; }}
.cm td.hit {{ background: #e7f6e7; }} .cm caption {{ text-align: left; font-weight: 600; }}
.rec {{ border-left: 4px solid #2a7; background: #f4fbf6; padding: .8em 1em; margin: 1em 0; }}
.plots img {{ max-width: 48%; margin: 0 1% 1em 0; border: 1px solid #eee; }}
</style></head><body>
<h1>Which adaptation is cheapest?</h1>
<p>Base model <code>{e(str(meta.get("base_model")))}</code> · task <code>{e(str(meta.get("task")))}</code> ·
target {e(str(meta.get("metric", "accuracy")))} ≥ {e(str(meta.get("target")))} on {e(_items_text(meta))} ·
costs on <code>{e(str(meta.get("hardware")))}</code> at ${e(str(meta.get("usd_per_hour")))}/h for {e(f"{meta.get('requests', 0):,}")} requests ·
profile {e(str(meta.get("profile")))} · evaluated in {e(str(meta.get("dtype", "?")))}{" · prompts sent as chat turns" if meta.get("chat") else ""} · {e(str(meta.get("finished", "")))}</p>
<div class="rec"><b>Recommendation: {e(str(rec["rung"]))}</b><br>{e(rec["reasoning"])}</div>
<p style="font-size:13px">{e(SELECTION_RULE)}</p>
<p style="font-size:13px">{e(latency_line)}</p>
<h2>Rungs</h2>{table_html}
<h2>What each rung ran with</h2><ul>{"".join(f"<li>{e(x)}</li>" for x in settings)}</ul>
{trials_html}
{_answers_html(rungs, meta.get("labels") or [])}
<h2>Plots</h2><div class="plots">{"".join(f'<img alt="{e(t)}" title="{e(t)}" src="data:image/png;base64,{b}">' for t, b in plots)}</div>
<h2>The seeds' claims, measured</h2><ul>{"".join(f"<li>{e(c)}</li>" for c in claim_lines)}</ul>
<p style="color:#777;font-size:12px">Generated by oficina ladder. Quality intervals are 95% percentile bootstrap over test items.</p>
</body></html>
"""
    atomic_write_text(out / "report.html", page)
    return {
        "html": out / "report.html",
        "markdown": out / "summary.md",
        "json": out / "summary.json",
    }


def load_summary(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
