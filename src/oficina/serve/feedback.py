"""User feedback on served answers, and its export as training data.

The chat page (and any client) sends ``POST /v1/feedback`` with the prompt, the answer, the
model, a rating (1 thumbs up, -1 thumbs down) and optionally a typed correction. Each record
is a row of the ``feedback`` table in the workspace SQLite database; sending the returned
``id`` again updates that row (a user may rate first and correct later).

``oficina feedback export --out DIR`` turns the table into two JSONL files:

* ``sft.jsonl`` — ``{"messages": [...prompt, {"role": "assistant", "content": BEST}]}`` where
  BEST is the user's correction, or the answer itself when it was rated up without one
  (the SFT format ``oficina finetune`` reads);
* ``preferences.jsonl`` — ``{"prompt": [...messages], "chosen": [assistant msg],
  "rejected": [assistant msg]}`` (TRL's conversational preference format, for DPO): a
  correction is preferred over the answer it corrects, and for the same prompt and model an
  answer rated up is preferred over one rated down.

    oficina feedback export --out data/feedback
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import Field

from oficina.config import VerbConfig
from oficina.errors import UserError
from oficina.workspace import atomic_write_text, connect, start_run

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  created REAL NOT NULL,
  updated REAL NOT NULL,
  model TEXT NOT NULL,
  prompt TEXT NOT NULL,          -- JSON: a list of chat messages (a text prompt becomes one user message)
  answer TEXT NOT NULL,
  rating INTEGER CHECK (rating IN (-1, 0, 1)),
  correction TEXT,
  response_id TEXT
);
CREATE INDEX IF NOT EXISTS feedback_model ON feedback(model);
"""


def _db():
    con = connect()
    con.executescript(SCHEMA)
    return con


def as_messages(prompt: str | list[dict]) -> list[dict]:
    """The prompt as chat messages: text becomes one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m.get("content") or ""} for m in prompt]


def store(
    *,
    model: str,
    prompt: str | list[dict],
    answer: str,
    rating: int | None = None,
    correction: str | None = None,
    response_id: str | None = None,
    id: int | None = None,
) -> dict:
    """Insert a feedback record (or update record ``id``); returns ``{"id", "created"}``.

    Raises KeyError when ``id`` names no record.
    """
    now = time.time()
    messages = json.dumps(as_messages(prompt), ensure_ascii=False)
    correction = correction if correction and correction.strip() else None
    con = _db()
    try:
        if id is not None:
            row = con.execute("SELECT created FROM feedback WHERE id=?", (id,)).fetchone()
            if row is None:
                raise KeyError(id)
            con.execute(
                "UPDATE feedback SET updated=?, model=?, prompt=?, answer=?, rating=?, correction=?,"
                " response_id=COALESCE(?, response_id) WHERE id=?",
                (now, model, messages, answer, rating, correction, response_id, id),
            )
            return {"id": id, "created": row["created"]}
        cur = con.execute(
            "INSERT INTO feedback (created, updated, model, prompt, answer, rating, correction, response_id)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (now, now, model, messages, answer, rating, correction, response_id),
        )
        return {"id": int(cur.lastrowid), "created": now}
    finally:
        con.close()


def records(model: str | None = None) -> list[dict]:
    """All feedback rows, oldest first, with ``prompt`` decoded to messages."""
    con = _db()
    try:
        q = "SELECT * FROM feedback" + (" WHERE model=?" if model else "") + " ORDER BY id"
        rows = [dict(r) for r in con.execute(q, (model,) if model else ())]
    finally:
        con.close()
    for r in rows:
        r["prompt"] = json.loads(r["prompt"])
    return rows


def build_datasets(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(sft rows, preference rows) from feedback records; see the module docstring."""
    sft: list[dict] = []
    prefs: list[dict] = []
    seen_sft: set[str] = set()
    seen_pref: set[str] = set()

    def add_sft(messages: list[dict], content: str) -> None:
        row = {"messages": [*messages, {"role": "assistant", "content": content}]}
        key = json.dumps(row, sort_keys=True)
        if key not in seen_sft:
            seen_sft.add(key)
            sft.append(row)

    def add_pref(messages: list[dict], chosen: str, rejected: str) -> None:
        if chosen.strip() == rejected.strip():
            return
        row = {
            "prompt": messages,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
        key = json.dumps(row, sort_keys=True)
        if key not in seen_pref:
            seen_pref.add(key)
            prefs.append(row)

    by_prompt: dict[tuple[str, str], dict] = {}
    for r in rows:
        messages, answer, correction, rating = (
            r["prompt"],
            r["answer"],
            r["correction"],
            r["rating"],
        )
        if correction:
            add_sft(messages, correction)
            add_pref(messages, correction, answer)
        elif rating == 1:
            add_sft(messages, answer)
        if rating in (1, -1):
            group = by_prompt.setdefault(
                (r["model"], json.dumps(messages, sort_keys=True)),
                {"messages": messages, "up": [], "down": []},
            )
            group["up" if rating == 1 else "down"].append(answer)
    for group in by_prompt.values():
        for good in group["up"]:
            for bad in group["down"]:
                add_pref(group["messages"], good, bad)
    return sft, prefs


class FeedbackExportConfig(VerbConfig):
    """Export ratings and corrections from the chat page as SFT data and DPO preference pairs."""

    out: Path = Field(description="output folder for sft.jsonl and preferences.jsonl")
    model: str | None = Field(None, description="only feedback on this served model id")


def export(cfg: FeedbackExportConfig) -> int:
    with start_run("feedback export", cfg) as run:
        rows = records(cfg.model)
        if not rows:
            raise UserError(
                "no feedback recorded"
                + (f" for model '{cfg.model}'" if cfg.model else "")
                + " in this workspace (rate answers on the chat page of `oficina serve` first)"
            )
        sft, prefs = build_datasets(rows)
        cfg.out.mkdir(parents=True, exist_ok=True)
        sft_path, pref_path = cfg.out / "sft.jsonl", cfg.out / "preferences.jsonl"
        atomic_write_text(sft_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sft))
        atomic_write_text(
            pref_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in prefs)
        )
        run.add_output("sft", sft_path)
        run.add_output("preferences", pref_path)
        counts = {
            "records": len(rows),
            "rated_up": sum(r["rating"] == 1 for r in rows),
            "rated_down": sum(r["rating"] == -1 for r in rows),
            "corrections": sum(bool(r["correction"]) for r in rows),
            "sft_rows": len(sft),
            "preference_pairs": len(prefs),
        }
        run.summary.update(counts)
        print(
            f"{counts['records']} feedback records ({counts['rated_up']} up, {counts['rated_down']} down, "
            f"{counts['corrections']} corrections) -> {len(sft)} SFT rows in {sft_path}, "
            f"{len(prefs)} preference pairs in {pref_path}"
        )
    return 0
