"""The HTML page of ``oficina tune``: one self-contained file (plots inlined as base64 PNG).

Three plots and a table: the optimisation history (each trial's value, pruned trials at their
last validation, the best so far), parameter importances (Optuna's default evaluator, PED-ANOVA in
5.0, over the complete trials) and the learning curves of the best trials beside the pruned ones.
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

from oficina.evals.plots import png_base64
from oficina.workspace import atomic_write_text


def _history(rows: list[dict], summary: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    pruned = [r for r in rows if r["state"] == "PRUNED" and r["curve"]]
    if done:
        ax.plot([r["number"] for r in done], [r["value"] for r in done], "o", label="complete")
        better = min if summary["direction"] == "minimize" else max
        best, xs, ys = None, [], []
        for r in sorted(done, key=lambda r: r["number"]):
            best = r["value"] if best is None else better(best, r["value"])
            xs.append(r["number"])
            ys.append(best)
        last = max(r["number"] for r in rows)
        xs.append(last)  # the best so far holds until the last trial, pruned ones included
        ys.append(best)
        ax.step(xs, ys, where="post", color="C2", label="best so far")
    if pruned:
        ax.plot(
            [r["number"] for r in pruned],
            [r["curve"][-1][1] for r in pruned],
            "x",
            color="C3",
            label="pruned (last validation)",
        )
    ax.set_xlabel("trial")
    ax.set_ylabel(summary["metric"])
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend()
    fig.tight_layout()
    return png_base64(fig)


def _importances(study) -> tuple[str | None, dict[str, float]]:
    import optuna

    try:
        with warnings.catch_warnings():  # "quantiles select the same trials": few trials
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None, {}  # fewer than two complete trials, or one distinct point
    if not imp:
        return None, {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(imp)))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="C0")
    ax.set_xlabel("importance (Optuna's default evaluator, sums to 1)")
    fig.tight_layout()
    return png_base64(fig), dict(imp)


def _curves(rows: list[dict], summary: dict, top: int = 5) -> str | None:
    done = [r for r in rows if r["state"] == "COMPLETE" and r["curve"]]
    if not done and not any(r["curve"] for r in rows):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rev = summary["direction"] == "maximize"
    best = sorted(done, key=lambda r: r["value"], reverse=rev)[:top]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for r in rows:
        if r["state"] == "PRUNED" and r["curve"]:
            ax.plot(*zip(*r["curve"], strict=True), "x-", color="0.7", lw=1, ms=4)
    for r in best:
        ax.plot(*zip(*r["curve"], strict=True), "o-", ms=3, label=f"#{r['number']}")
    ax.set_xlabel("trial-step" + (" (folds run one after another)" if summary.get("cv") else ""))
    ax.set_ylabel(summary["metric"])
    ax.set_title(f"best {len(best)} trials; grey: pruned")
    ax.grid(alpha=0.3)
    if best:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png_base64(fig)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def write_report(path: Path, study, rows: list[dict], summary: dict) -> None:
    hist = _history(rows, summary)
    imp_png, imp = _importances(study)
    curves = _curves(rows, summary)
    keys = sorted({k for r in rows for k in r["params"]})
    best = summary.get("best") or {}
    head = "".join(
        f"<th>{html.escape(h)}</th>" for h in ["#", "state", summary["metric"], "steps", *keys]
    )
    body = []
    for r in rows:
        val = "-" if r["value"] is None else f"{r['value']:.4f}"
        if r.get("cv_std") is not None and r["value"] is not None:
            val += f" ± {r['cv_std']:.4f}"
        cls = ' class="best"' if r["number"] == best.get("number") else ""
        cells = [str(r["number"]), r["state"].lower(), val, str(r["cost"])]
        cells += [_cell(r["params"].get(k, "")) for k in keys]
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    img = lambda b64, alt: f'<img alt="{alt}" src="data:image/png;base64,{b64}">' if b64 else ""  # noqa: E731
    best_line = (
        f"trial #{best['number']}: {summary['metric']} {best['value']:.6g}"
        + (
            f" ± {best['cv_std']:.4f} over {summary['cv']} folds"
            if best.get("cv_std") is not None
            else ""
        )
        + f" with {html.escape(str(best['params']))}"
        if best
        else "no trial has completed yet"
    )
    imp_txt = ", ".join(f"{k} {v:.2f}" for k, v in imp.items()) or "not enough complete trials"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>oficina tune: {html.escape(summary["study"])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}tr.best{{background:#dfd}}</style>
</head><body>
<h1>Hyperparameter search: {html.escape(summary["verb"])}</h1>
<p>Study <code>{html.escape(summary["study"])}</code> in <code>{html.escape(summary["storage"])}</code>;
objective {html.escape(summary["metric"])} ({summary["direction"]}).
{summary["finished"]} of {summary["planned"]} planned trials finished: {summary["complete"]} complete,
{summary["pruned"]} pruned, {summary["failed"]} failed.</p>
<p><b>Best</b>: {best_line}.</p>
<p><b>Compute</b>: {summary["trial_steps"]:,} trial-steps run; {summary["trial_steps_unpruned"]:,} had
every trial run its full budget: pruning saved {100 * summary["pruning_saved"]:.0f}%.</p>
<h2>Optimisation history</h2>{img(hist, "history")}
<h2>Parameter importances</h2><p>{html.escape(imp_txt)}</p>{img(imp_png, "importances")}
<h2>Learning curves</h2>{img(curves, "curves")}
<h2>Trials</h2><table><tr>{head}</tr>{"".join(body)}</table>
</body></html>
"""
    atomic_write_text(path, page)
