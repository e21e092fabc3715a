"""Run folders, the SQLite run registry, and lineage (content hashes of inputs and outputs).

Every verb that does work runs inside ``start_run``:

    with start_run("pretrain", cfg) as run:
        run.add_input("model", "mini")          # a spec, file or directory
        run.log({"loss": 2.3}, step=10)         # -> metrics.jsonl
        run.add_output("model", out_dir)        # hashed -> lineage
        run.summary["val_loss"] = 2.1           # -> run.json and the registry

This writes ``$OFICINA_HOME/runs/<verb>-<time>-<id>/`` with ``config.yaml``, ``metrics.jsonl``
and ``run.json``, and one row in ``$OFICINA_HOME/oficina.db`` (SQLite in WAL mode, so two runs
started at once both land). An exception marks the run ``failed``; Ctrl-C or SIGTERM marks it
``stopped``; a run whose process was killed is found by ``reap_stale`` (its pid is gone) and
marked ``failed`` too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import socket
import sqlite3
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from oficina.config import dump_yaml
from oficina.errors import UserError


def home() -> Path:
    """The workspace root: ``$OFICINA_HOME`` or ``./workspace``."""
    return Path(os.environ.get("OFICINA_HOME", "workspace")).resolve()


def cache_dir() -> Path:
    """Converted models and other re-creatable things: ``$OFICINA_CACHE`` or ~/.cache/oficina."""
    return Path(os.environ.get("OFICINA_CACHE", Path.home() / ".cache" / "oficina")).resolve()


# ---------------------------------------------------------------------------- atomic files


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt: leave the old file and no stray temp
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


@contextmanager
def staged_dir(path: str | Path) -> Iterator[Path]:
    """A temporary sibling folder to save into (``save_pretrained`` writes many files in place).

    On success each file is renamed into ``path`` (which may hold other things, such as
    ``checkpoints/``); on any failure — a full disk, an interrupt — the stage is removed, so
    ``path`` never holds half a save.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        path.mkdir(exist_ok=True)
        for f in sorted(tmp.iterdir()):
            if f.is_dir() and (path / f.name).is_dir():
                shutil.rmtree(path / f.name)
            os.replace(f, path / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- hashing


def hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def content_hash(path: str | Path) -> str:
    """sha256 of a file, or of a directory's (relative path, file hash) list.

    Memoised on (path, size, mtime) so hashing a 500 MB model twice in one process is free.
    """
    p = Path(path)
    if p.is_file():
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _HASH_MEMO:
            _HASH_MEMO[key] = hash_file(p)
        return _HASH_MEMO[key]
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(".")):
            h.update(str(f.relative_to(p)).encode())
            h.update(content_hash(f).encode())
        return h.hexdigest()
    # Not a path: a preset name, a hub id... its identity is the string itself.
    return hashlib.sha256(str(path).encode()).hexdigest()


# ---------------------------------------------------------------------------- registry

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, verb TEXT NOT NULL, status TEXT NOT NULL,
  started REAL NOT NULL, ended REAL, dir TEXT NOT NULL,
  host TEXT, pid INTEGER, config TEXT, summary TEXT, error TEXT
);
CREATE TABLE IF NOT EXISTS artifacts (
  run_id TEXT NOT NULL REFERENCES runs(id), role TEXT NOT NULL CHECK (role IN ('input','output')),
  name TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT, bytes INTEGER
);
CREATE INDEX IF NOT EXISTS artifacts_run ON artifacts(run_id);
CREATE INDEX IF NOT EXISTS artifacts_hash ON artifacts(sha256);
"""


def connect(root: Path | None = None) -> sqlite3.Connection:
    """Open (creating if needed) the workspace database in WAL mode with a busy timeout.

    WAL lets readers and one writer proceed together; the timeout makes a second writer wait
    instead of failing with "database is locked" when two runs start at the same moment.
    """
    root = root or home()
    root.mkdir(parents=True, exist_ok=True)
    return open_wal(root / "oficina.db", SCHEMA, isolation_level=None)


def open_wal(path: Path, schema: str, **connect_args: Any) -> sqlite3.Connection:
    """Open an SQLite file in WAL mode with a 30 s busy timeout and create its schema.

    WAL is a property of the file, kept once set (header bytes 18-19 are 2). Switching takes an
    exclusive lock and, racing another process's open, SQLite can answer SQLITE_BUSY without
    calling the busy handler (CI, two spawned workers: "database is locked" at the pragma; three
    processes opening 200 new files at once lost 3-7 opens). So only a file not yet in WAL is
    switched, and that and the schema are retried on a lock for the same 30 s.
    """
    con = sqlite3.connect(path, timeout=30.0, **connect_args)  # the busy timeout
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA foreign_keys=ON")
    if not _is_wal(path):
        retry_locked(lambda: con.execute("PRAGMA journal_mode=WAL"))
    retry_locked(lambda: con.executescript(schema))
    return con


def _is_wal(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18] == 2 and header[19] == 2


def retry_locked(step: Any, seconds: float = 30.0) -> Any:
    """Call ``step()`` again while SQLite says the database is locked, for up to ``seconds``."""
    deadline = time.monotonic() + seconds
    delay = 0.005
    while True:
        try:
            return step()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state where /proc exists.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return True


def reap_stale(con: sqlite3.Connection) -> int:
    """Mark runs 'failed' whose process on this host is gone (killed, OOM, power cut)."""
    host = socket.gethostname()
    n = 0
    for row in con.execute(
        "SELECT id, pid, dir FROM runs WHERE status='running' AND host=?", (host,)
    ).fetchall():
        if row["pid"] and not _pid_alive(row["pid"]):
            con.execute(
                "UPDATE runs SET status='failed', ended=?, error=? WHERE id=? AND status='running'",
                (time.time(), "process ended without finishing (killed?)", row["id"]),
            )
            run_json = Path(row["dir"]) / "run.json"
            if run_json.is_file():
                try:
                    meta = json.loads(run_json.read_text())
                    meta.update(status="failed", error="process ended without finishing (killed?)")
                    atomic_write_json(run_json, meta)
                except (OSError, json.JSONDecodeError):
                    pass
            n += 1
    return n


# ---------------------------------------------------------------------------- a run


class Run:
    """One recorded execution of a verb. Use through ``start_run``."""

    def __init__(self, verb: str, config: BaseModel | dict | None, root: Path | None = None):
        self.root = root or home()
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.id = f"{verb.replace(' ', '-')}-{stamp}-{secrets.token_hex(3)}"
        self.verb = verb
        self.dir = self.root / "runs" / self.id
        self.dir.mkdir(parents=True, exist_ok=False)
        self.config = config
        self.started = time.time()
        self.status = "running"
        self.stopped_by: str | None = None  # a signal name, set by a verb that handles its own
        self.summary: dict[str, Any] = {}
        self.inputs: list[dict] = []
        self.outputs: list[dict] = []
        self.error: str | None = None
        cfg_dict = (
            config.model_dump(mode="json") if isinstance(config, BaseModel) else (config or {})
        )
        if isinstance(config, BaseModel):
            atomic_write_text(self.dir / "config.yaml", dump_yaml(config))
        else:
            import yaml

            atomic_write_text(self.dir / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
        (self.dir / "metrics.jsonl").touch()
        con = connect(self.root)
        try:
            reap_stale(con)
            con.execute(
                "INSERT INTO runs (id, verb, status, started, dir, host, pid, config) VALUES (?,?,?,?,?,?,?,?)",
                (
                    self.id,
                    verb,
                    "running",
                    self.started,
                    str(self.dir),
                    socket.gethostname(),
                    os.getpid(),
                    json.dumps(cfg_dict, default=str),
                ),
            )
        finally:
            con.close()
        self._write_meta()

    # -- recording ------------------------------------------------------------
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Append one line to metrics.jsonl (flushed at once, so a crash keeps what was logged)."""
        row = {
            "time": round(time.time() - self.started, 3),
            **({"step": step} if step is not None else {}),
            **metrics,
        }
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=float) + "\n")

    def _artifact(self, role: str, name: str, path: str | Path) -> dict:
        p = Path(path)
        exists = p.exists()
        entry = {
            "name": name,
            "path": str(p.resolve()) if exists else str(path),
            "sha256": content_hash(p) if exists else content_hash(str(path)),
            "bytes": (
                p.stat().st_size
                if p.is_file()
                else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            )
            if exists
            else None,
        }
        con = connect(self.root)
        try:
            con.execute(
                "INSERT INTO artifacts (run_id, role, name, path, sha256, bytes) VALUES (?,?,?,?,?,?)",
                (self.id, role, name, entry["path"], entry["sha256"], entry["bytes"]),
            )
        finally:
            con.close()
        return entry

    def add_input(self, name: str, path: str | Path) -> dict:
        e = self._artifact("input", name, path)
        self.inputs.append(e)
        self._write_meta()
        return e

    def add_output(self, name: str, path: str | Path) -> dict:
        e = self._artifact("output", name, path)
        self.outputs.append(e)
        self._write_meta()
        return e

    def _write_meta(self) -> None:
        atomic_write_json(
            self.dir / "run.json",
            {
                "id": self.id,
                "verb": self.verb,
                "status": self.status,
                "started": dt.datetime.fromtimestamp(self.started).isoformat(timespec="seconds"),
                "ended": dt.datetime.fromtimestamp(self.ended).isoformat(timespec="seconds")
                if getattr(self, "ended", None)
                else None,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "inputs": self.inputs,
                "outputs": self.outputs,
                "summary": self.summary,
                "error": self.error,
            },
        )

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        """Record the run's end in run.json and the database. A signal that lands during these
        writes (Ctrl-C twice; a supervisor's second SIGTERM while a stopping server records
        itself) is held until the record is whole, then goes on: it had left a served run
        'running' with exit 0 (2026-12-02). Both writes are idempotent, so a cut one is redone."""
        self.status, self.error, self.ended = status, error, time.time()
        interrupted: KeyboardInterrupt | None = None
        while True:
            try:
                self._write_meta()
                con = connect(self.root)
                try:
                    con.execute(
                        "UPDATE runs SET status=?, ended=?, summary=?, error=? WHERE id=?",
                        (status, self.ended, json.dumps(self.summary, default=str), error, self.id),
                    )
                finally:
                    con.close()
                break
            except KeyboardInterrupt as e:  # errors.Stopped (SIGTERM) is one too
                interrupted = e
        if interrupted is not None:
            raise interrupted


@contextmanager
def start_run(
    verb: str, config: BaseModel | dict | None = None, root: Path | None = None
) -> Iterator[Run]:
    run = Run(verb, config, root)
    try:
        yield run
    except KeyboardInterrupt as e:
        # Ctrl-C or SIGTERM (errors.Stopped): stopped on purpose, not failed; what the verb
        # saved as it went (checkpoints, shards, the cache) is where a rerun resumes.
        run.finish("stopped", f"stopped by {getattr(e, 'signame', 'SIGINT')}")
        raise
    except BaseException as e:
        # SystemExit counts as a failure too: the run did not finish.
        msg = f"{type(e).__name__}: {e}"
        (run.dir / "error.txt").write_text(traceback.format_exc())
        run.finish("failed", msg)
        raise
    else:
        if run.stopped_by:  # a server's normal end: a signal, handled by the verb itself
            run.finish("stopped", f"stopped by {run.stopped_by}")
        else:
            run.finish("completed")


# ---------------------------------------------------------------------------- queries


def list_runs(root: Path | None = None, verb: str | None = None, limit: int = 50) -> list[dict]:
    con = connect(root)
    try:
        reap_stale(con)
        q = (
            "SELECT * FROM runs"
            + (" WHERE verb=?" if verb else "")
            + " ORDER BY started DESC LIMIT ?"
        )
        rows = con.execute(q, ((verb, limit) if verb else (limit,))).fetchall()
        return [dict(r) for r in rows]
    finally:
        con.close()


def get_run(run_id: str, root: Path | None = None) -> dict:
    """A run by id or unique id prefix, with its artifacts."""
    con = connect(root)
    try:
        reap_stale(con)
        rows = con.execute(
            "SELECT * FROM runs WHERE id LIKE ? ORDER BY started DESC", (run_id + "%",)
        ).fetchall()
        if not rows:
            raise KeyError(f"no run with id '{run_id}' in {root or home()}")
        if len(rows) > 1 and rows[0]["id"] != run_id:
            raise KeyError(
                f"run id '{run_id}' is ambiguous: {', '.join(r['id'] for r in rows[:5])}"
            )
        run = dict(rows[0])
        run["artifacts"] = [
            dict(a)
            for a in con.execute(
                "SELECT role, name, path, sha256, bytes FROM artifacts WHERE run_id=?", (run["id"],)
            )
        ]
        return run
    finally:
        con.close()


def run_dir(ref: str) -> Path:
    """The folder of an earlier run, given its id (or unique id prefix) or its folder."""
    p = Path(ref).expanduser()
    if p.is_dir():
        return p
    try:
        return Path(get_run(ref)["dir"])
    except KeyError as e:
        raise UserError(str(e.args[0])) from None


def runs_producing(sha256: str, root: Path | None = None) -> list[str]:
    """Lineage upward: which runs wrote an artifact with this content hash."""
    con = connect(root)
    try:
        return [
            r[0]
            for r in con.execute(
                "SELECT run_id FROM artifacts WHERE role='output' AND sha256=?", (sha256,)
            )
        ]
    finally:
        con.close()
