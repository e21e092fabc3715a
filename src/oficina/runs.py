"""``oficina runs list | show ID | compare ID ID``: read the workspace registry.

oficina runs list --verb pretrain
oficina runs show pretrain-20261122-101500-a1b2c3
oficina runs compare RUN_A RUN_B --json
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from pydantic import Field
from rich.console import Console
from rich.table import Table

from oficina import workspace
from oficina.config import VerbConfig
from oficina.errors import UserError


class RunsListConfig(VerbConfig):
    """List recorded runs, newest first."""

    verb: str | None = Field(None, description="only runs of this verb")
    limit: int = Field(30, ge=1, description="how many runs to show")
    json_: bool = Field(False, alias="json", description="print JSON instead of a table")


class RunsShowConfig(VerbConfig):
    """Show one run: status, config, last metrics, inputs and outputs with content hashes."""

    positionals = ("run_id",)
    run_id: str = Field(description="run id or a unique prefix of it")
    json_: bool = Field(False, alias="json", description="print JSON")


class RunsCompareConfig(VerbConfig):
    """Compare runs side by side: config differences and summary metrics."""

    positionals = ("run_ids",)
    run_ids: list[str] = Field(min_length=2, description="two or more run ids (or prefixes)")
    json_: bool = Field(False, alias="json", description="print JSON")


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _duration(r: dict) -> str:
    if not r.get("ended"):
        return "-"
    s = r["ended"] - r["started"]
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}m"


def list_cmd(cfg: RunsListConfig) -> int:
    rows = workspace.list_runs(verb=cfg.verb, limit=cfg.limit)
    if cfg.json_:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    table = Table(title=f"runs in {workspace.home()}")
    for col in ("id", "verb", "status", "started", "took"):
        table.add_column(col)
    for r in rows:
        style = {"failed": "red", "running": "yellow", "stopped": "yellow"}.get(r["status"], "")
        table.add_row(
            r["id"], r["verb"], r["status"], _when(r["started"]), _duration(r), style=style
        )
    Console().print(table)
    return 0


def _load(run_id: str) -> dict:
    try:
        run = workspace.get_run(run_id)
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
    run["config"] = json.loads(run["config"] or "{}")
    run["summary"] = json.loads(run["summary"] or "{}")
    metrics_path = Path(run["dir"]) / "metrics.jsonl"
    last: dict = {}
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            try:
                last.update(json.loads(line))
            except json.JSONDecodeError:
                continue
    run["last_metrics"] = last
    return run


def show(cfg: RunsShowConfig) -> int:
    run = _load(cfg.run_id)
    if cfg.json_:
        print(json.dumps(run, indent=2, default=str))
        return 0
    c = Console()
    c.print(
        f"[bold]{run['id']}[/]  {run['verb']}  [{'red' if run['status'] == 'failed' else 'green'}]{run['status']}[/]"
    )
    c.print(f"started {_when(run['started'])}, took {_duration(run)}, folder {run['dir']}")
    if run.get("error"):
        c.print(f"[red]error:[/] {run['error']}")
    for role in ("input", "output"):
        arts = [a for a in run["artifacts"] if a["role"] == role]
        if arts:
            c.print(f"[bold]{role}s[/]")
            for a in arts:
                c.print(f"  {a['name']}: {a['path']}  sha256:{(a['sha256'] or '')[:12]}")
    if run["summary"]:
        c.print("[bold]summary[/]")
        for k, v in run["summary"].items():
            c.print(f"  {k}: {v}")
    return 0


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def compare(cfg: RunsCompareConfig) -> int:
    runs = [_load(r) for r in cfg.run_ids]
    configs = [_flatten(r["config"]) for r in runs]
    keys = sorted(set().union(*configs))
    differing = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]
    metric_keys = sorted(
        set().union(*(r["summary"].keys() for r in runs))
        | set().union(*(r["last_metrics"].keys() for r in runs)) - {"time", "step"}
    )
    if cfg.json_:
        print(
            json.dumps(
                {
                    "runs": [r["id"] for r in runs],
                    "config_diff": {k: [c.get(k) for c in configs] for k in differing},
                    "metrics": {
                        k: [r["summary"].get(k, r["last_metrics"].get(k)) for r in runs]
                        for k in metric_keys
                    },
                },
                indent=2,
                default=str,
            )
        )
        return 0
    table = Table(title="run comparison")
    table.add_column("")
    for r in runs:
        table.add_column(r["id"])
    table.add_row("verb", *[r["verb"] for r in runs])
    table.add_row("status", *[r["status"] for r in runs])
    table.add_row("took", *[_duration(r) for r in runs])
    for k in differing:
        table.add_row(f"config.{k}", *[str(c.get(k)) for c in configs])
    for k in metric_keys:
        vals = [r["summary"].get(k, r["last_metrics"].get(k)) for r in runs]
        table.add_row(k, *[f"{v:.4g}" if isinstance(v, float) else str(v) for v in vals])
    Console().print(table)
    return 0
