"""The HTML page of a ``data prepare`` report: one self-contained file (inline PNG, no links).

Counts per stage and reason, malformed records per reason, length histograms of kept and
removed documents, the language / source / licence mix, and a few removed examples per reason.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from oficina.workspace import atomic_write_text

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.num{text-align:right}.bar{background:#4a7bd0;height:10px;display:inline-block}
pre{white-space:pre-wrap;background:#f8f8f8;padding:6px;max-height:12em;overflow:auto;font-size:85%}
"""


def _histogram_png(report: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = report["length_histogram"]
    edges = h["edges"]
    fig, ax = plt.subplots(figsize=(8, 3), dpi=90)
    for key, color in (("kept", "#4a7bd0"), ("removed", "#d0634a")):
        counts = h[key]
        if counts and sum(counts):
            ax.stairs(counts, edges, label=f"{key} ({sum(counts)})", color=color, linewidth=2)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("document length (characters, log scale)")
    ax.set_ylabel("documents")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _mix_table(title: str, counts: dict) -> str:
    total = sum(counts.values()) or 1
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td class=num>{v}</td>"
        f"<td><span class=bar style='width:{200 * v / total:.0f}px'></span> {100 * v / total:.1f}%</td></tr>"
        for k, v in counts.items()
    )
    return (
        f"<h3>{title}</h3><table><tr><th>{title}</th><th>docs</th><th>share</th></tr>{rows}</table>"
    )


def render_html(report: dict) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>oficina data report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Data preparation report</h1>",
        f"<p>{report['docs_in']} documents read ({report['bytes_in'] / 1e6:.2f} MB), "
        f"<b>{report['docs_kept']} kept</b> ({report['bytes_kept'] / 1e6:.2f} MB), "
        f"{report['docs_removed']} removed, {report['malformed_total']} malformed records "
        f"quarantined. Engine: {e(report['engine'])}. Inputs: {e(', '.join(report['inputs'][:10]))}"
        f"{' …' if len(report['inputs']) > 10 else ''}</p>",
        "<h2>Stages</h2><table><tr><th>#</th><th>stage</th><th>type</th><th>in</th><th>kept</th>"
        "<th>removed</th><th>reasons</th><th>modified</th></tr>",
    ]
    for i, s in enumerate(report["stages"], 1):
        reasons = "<br>".join(f"{e(k)}: {v}" for k, v in s["removed"].items())
        mods = "<br>".join(f"{e(k)}: {v}" for k, v in s["modified"].items())
        parts.append(
            f"<tr><td>{i}</td><td>{e(s['name'])}</td><td>{e(s['type'])}</td><td class=num>{s['in']}</td>"
            f"<td class=num>{s['kept']}</td><td class=num>{s['removed_total']}</td><td>{reasons}</td><td>{mods}</td></tr>"
        )
    parts.append("</table>")
    parts.append("<h2>Malformed input</h2>")
    if report["malformed"]:
        parts.append(
            "<table><tr><th>reason</th><th>records</th></tr>"
            + "".join(
                f"<tr><td>{e(k)}</td><td class=num>{v}</td></tr>"
                for k, v in report["malformed"].items()
            )
            + "</table><p>Each one is in <code>quarantine.jsonl</code>.</p>"
        )
    else:
        parts.append("<p>None.</p>")
    parts.append("<h2>Document lengths</h2>")
    if report["docs_in"]:
        parts.append(
            f"<img alt='length histogram' src='data:image/png;base64,{_histogram_png(report)}'>"
        )
    parts.append("<h2>Mix of kept documents</h2>")
    for title, key in (("language", "languages"), ("source", "sources"), ("licence", "licences")):
        parts.append(_mix_table(title, report[key]))
    parts.append("<h2>Removed examples</h2>")
    if not report["examples"]:
        parts.append("<p>Nothing was removed.</p>")
    for key, items in report["examples"].items():
        parts.append(f"<h3>{e(key)}</h3>")
        for it in items:
            dup = (
                f" — duplicate of <code>{e(it['duplicate_of'])}</code>"
                if "duplicate_of" in it
                else ""
            )
            parts.append(
                f"<p><code>{e(it['id'])}</code> ({e(it['source'])}){dup}</p><pre>{e(it['text'])}</pre>"
            )
    th = report["throughput"]
    parts.append(
        f"<h2>Throughput</h2><p>{th['docs_processed']} documents processed in {th['wall_time_s']} s: "
        f"{th['docs_per_s']} docs/s, {th['mb_per_s']} MB/s"
        f"{'; ' + str(report.get('resumed_shards')) + ' finished shards resumed' if report.get('resumed_shards') else ''}.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: Path, report: dict) -> None:
    atomic_write_text(path, render_html(report))
