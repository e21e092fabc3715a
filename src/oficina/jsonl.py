"""Reading JSONL datasets: one JSON object per line, malformed lines counted and set aside.

Every verb that takes a JSONL of rows (training sets, task splits, prediction files) reads it
here, so "a bad line" means the same everywhere: blank lines are skipped, a line that is not
JSON or not an object is counted, never fatal — the caller decides whether to report it.

    rows, bad = read_jsonl("examples/demo/task/train.jsonl", what="training file")
"""

from __future__ import annotations

import json
from pathlib import Path

from oficina.errors import NotFound


def read_jsonl(path: str | Path, what: str = "data file") -> tuple[list[dict], int]:
    """The rows of ``path`` that parse as JSON objects, and how many lines did not."""
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"{what} not found: {p}")
    rows: list[dict] = []
    bad = 0
    with open(p, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                rows.append(obj)
            else:
                bad += 1
    return rows, bad
