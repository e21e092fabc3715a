"""The batching scheduler: one thread that runs every model's generation, batched.

HTTP handlers (on the asyncio event loop) ``submit`` a ``Job``: one or more prompts for one
model, each with its own sampling parameters. Text deltas travel back to each job's
``asyncio.Queue`` (via ``call_soon_threadsafe``); a row whose client went away or whose deadline
passed is cancelled, so the batch stops paying for it. Two modes (``oficina serve --scheduler``):

  * ``continuous`` (default): each model has one running ``DecodeBatch``
    (``oficina.infer.engine``) advanced one decode step at a time — one for all the served ids
    that share a base (LoRA adapters and the bare base, ``oficina.infer.adapters``): their rows
    mix in it, each with its own adapter. A queued job joins at the next
    step (its prompts prefilled in chunks between steps, so running streams keep flowing) as
    long as the batch has fewer than ``max_batch`` rows; a finished or cancelled row leaves at
    once and its job gets its answer then, not when the whole batch ends. An idle model waits
    ``batch_wait_s`` (as below) for requests that arrive together before its first step;
  * ``static``: the thread takes the oldest job, waits for more jobs for the same model (until
    ``max_batch`` rows, or until none has arrived for ``batch_wait_s``, at most 4x that in all),
    and runs them to the end in one ``DecodeBatch`` (``Engine.run``): ids that share a base
    batch together, each row with its adapter, as in continuous mode. A request arriving
    meanwhile waits for the whole batch. Kept as the peer ``benchmarks/serve.py`` compares
    against.

Why one thread: on a CPU the model already uses every core for one batch, so running two
batches at once would only make both slower; batching is where the throughput comes from.
``max_batch=1`` turns batching off (the other peer of the benchmark).

Other model work (embeddings, exact-token scoring) runs on the same thread as ``call`` jobs,
between decode steps, so nothing competes with a running batch for the cores.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from oficina.errors import UserError
from oficina.infer.engine import DecodeBatch
from oficina.serve.errors import APIError, from_user_error

log = logging.getLogger("oficina.serve")

MODES = ("continuous", "static")


@dataclass
class Job:
    """One HTTP request's worth of model work; its results arrive on ``events``."""

    loop: asyncio.AbstractEventLoop
    model: str = ""
    prompts: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)  # SamplingParams, one per prompt
    stream: bool = False
    deadline: float = float("inf")  # time.monotonic() after which generation is cut
    fn: Callable[[], Any] | None = None  # a "call" job: run fn() on the scheduler thread
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    timed_out: bool = False

    def push(self, item: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass

    def cancel(self) -> None:
        self.cancelled.set()

    def expired(self) -> bool:
        """The client went away, or the deadline passed (then ``timed_out`` is set)."""
        if self.cancelled.is_set():
            return True
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return True
        return False

    def keep_going(self, k: int, delta: str) -> bool:
        """Deliver prompt k's new text; False when the row must stop (client gone, deadline)."""
        if self.expired():
            return False
        if self.stream and delta:
            self.push(("delta", k, delta))
        return True


def _internal_error(e: Exception) -> APIError:
    return APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")


@dataclass
class _Running:
    """A continuous-mode model's batch and the jobs whose rows are in it."""

    batch: DecodeBatch
    jobs: dict[int, tuple[Job, list]] = field(default_factory=dict)  # id(job) -> (job, rows)
    owner: dict[int, tuple[Job, int]] = field(default_factory=dict)  # id(row) -> (job, k)


class Scheduler:
    """Owns the model thread; see the module docstring."""

    def __init__(
        self,
        engines: dict,
        max_batch: int = 16,
        batch_wait_s: float = 0.01,
        mode: str = "continuous",
    ):
        if mode not in MODES:
            raise ValueError(f"scheduler mode must be one of {MODES}, got {mode!r}")
        self.engines = engines
        self.mode = mode
        self.max_batch = max(1, int(max_batch))
        self.batch_wait_s = max(0.0, float(batch_wait_s))
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # statistics (read by /health, the tests and the benchmark)
        self.batches = 0
        self.rows = 0
        self.max_rows = 0
        self.recent_batch_rows: collections.deque[int] = collections.deque(maxlen=1000)
        self.cancelled_rows = 0
        self.generated_tokens = 0
        self.busy_s = 0.0
        # continuous mode: batches are keyed by the first served id of each model object, so ids
        # that are views of one shared base (oficina.infer.adapters) run in one batch
        first: dict[int, str] = {}
        self._group = {
            name: first.setdefault(id(getattr(e.model, "shared", e.model)), name)
            for name, e in engines.items()
        }
        self._running: dict[str, _Running] = {}  # continuous mode: models with rows to run
        self._batches: dict[str, _Running] = {}  # ... and every model's batch, kept when idle

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            run = self._run if self.mode == "static" else self._run_continuous
            self._thread = threading.Thread(target=run, name="oficina-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            for job in self._queue:
                job.push(("error", APIError(503, "server is shutting down", code="shutting_down")))
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise APIError(503, "server is shutting down", code="shutting_down")
            self._queue.append(job)
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def stats(self) -> dict:
        return {
            "scheduler": self.mode,
            "batches": self.batches,
            "rows": self.rows,
            "max_batch_rows": self.max_rows,
            "queued": self.queued,
            "cancelled_rows": self.cancelled_rows,
            "generated_tokens": self.generated_tokens,
            "busy_s": round(self.busy_s, 3),
        }

    # ------------------------------------------------------------------ the thread
    def _take(self) -> list[Job]:
        """The next batch: the oldest job plus same-model jobs arriving within the wait window."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return []
            first = self._queue.popleft()
            if first.fn is not None:
                return [first]
            batch, rows = [first], len(first.prompts)
            group = self._group.get(first.model, first.model)
            # Wait until no new request has come for batch_wait_s (clients that start together
            # arrive a few ms apart), but never more than 4x that in all.
            now = time.monotonic()
            quiet_until, cap = now + self.batch_wait_s, now + 4 * self.batch_wait_s
            while rows < self.max_batch:
                took = False
                for job in list(self._queue):
                    if (
                        job.fn is None
                        and self._group.get(job.model, job.model) == group
                        and rows + len(job.prompts) <= self.max_batch
                    ):
                        self._queue.remove(job)
                        batch.append(job)
                        rows += len(job.prompts)
                        took = True
                now = time.monotonic()
                if took:
                    quiet_until = now + self.batch_wait_s
                left = min(quiet_until, cap) - now
                if rows >= self.max_batch or left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            batch = [j for j in batch if not j.cancelled.is_set()]
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                if batch[0].fn is not None:
                    self._call(batch[0])
                else:
                    self._generate(batch)
            finally:
                self.busy_s += time.perf_counter() - t0

    def _call(self, job: Job) -> None:
        try:
            job.push(("result", job.fn()))
        except APIError as e:
            job.push(("error", e))
        except UserError as e:
            job.push(("error", from_user_error(e)))
        except Exception as e:  # a bug: report it to this client, keep serving the others
            log.exception("model call failed")
            job.push(("error", _internal_error(e)))

    def _generate(self, batch: list[Job]) -> None:
        """Run a static batch: every job's rows (made by its own id's engine, so each row has
        its adapter) in one DecodeBatch of the group's engine, answered when all are done."""
        key = self._group.get(batch[0].model, batch[0].model)
        rows: list = []
        jobs: list[tuple[Job, list]] = []
        owners: dict[int, tuple[Job, int]] = {}
        for job in batch:
            try:
                job_rows = self.engines[job.model].make_rows(job.prompts, job.params)
            except UserError as e:  # handlers validate first, so this is rare: fail this job
                job.push(("error", from_user_error(e)))
                continue
            jobs.append((job, job_rows))
            for k, r in enumerate(job_rows):
                owners[id(r)] = (job, k)
            rows += job_rows
        if not rows:
            return
        n = len(rows)
        self.batches += 1
        self.rows += n
        self.max_rows = max(self.max_rows, n)
        self.recent_batch_rows.append(n)

        def on_token(r, delta: str) -> bool | None:
            job, k = owners[id(r)]
            return None if job.keep_going(k, delta) else False

        try:
            self.engines[key].run(rows, on_token)
        except UserError as e:
            for job, _ in jobs:
                job.push(("error", from_user_error(e)))
            return
        except Exception as e:
            log.exception("generation failed")
            for job, _ in jobs:
                job.push(("error", _internal_error(e)))
            return
        for job, job_rows in jobs:
            self._done(job, [self.engines[job.model].completion(r) for r in job_rows])

    def _done(self, job: Job, completions: list) -> None:
        for c in completions:
            self.generated_tokens += c.completion_tokens
            if c.finish_reason == "cancelled":
                self.cancelled_rows += 1
        job.push(("done", completions))

    # ------------------------------------------------------------------ continuous mode
    def _rows_in(self, model: str) -> int:
        r = self._running.get(model)
        return len(r.batch) if r is not None else 0

    def _wait_for_company(self) -> None:
        """An idle scheduler got a request: give the ones sent with it ``batch_wait_s`` to
        arrive (at most 4x in all), so they start together. Called with the lock held."""
        now = time.monotonic()
        quiet_until, cap = now + self.batch_wait_s, now + 4 * self.batch_wait_s
        seen = len(self._queue)
        while not self._stopping and sum(len(j.prompts) for j in self._queue) < self.max_batch:
            left = min(quiet_until, cap) - now
            if left <= 0:
                return
            self._cond.wait(left)
            now = time.monotonic()
            if len(self._queue) != seen:
                seen, quiet_until = len(self._queue), now + self.batch_wait_s

    def _admit(self) -> tuple[list[Job], list[Job]] | None:
        """Queued work that can start now: (call jobs, generation jobs that fit their model's
        batch). Waits while there is nothing to do; None once stopping with nothing running."""
        with self._cond:
            while not self._queue and not self._running and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None if not self._running else ([], [])
            if (
                not self._running
                and self.batch_wait_s > 0
                and any(j.fn is None for j in self._queue)
            ):
                self._wait_for_company()
            calls: list[Job] = []
            joins: list[Job] = []
            taken: dict[str, int] = {}
            for job in list(self._queue):
                if job.cancelled.is_set():
                    self._queue.remove(job)
                elif job.fn is not None:
                    self._queue.remove(job)
                    calls.append(job)
                else:
                    key = self._group.get(job.model, job.model)
                    rows = self._rows_in(key) + taken.get(key, 0)
                    if rows == 0 or rows + len(job.prompts) <= self.max_batch:
                        self._queue.remove(job)
                        joins.append(job)
                        taken[key] = taken.get(key, 0) + len(job.prompts)
            return calls, joins

    def _join(self, job: Job) -> None:
        engine = self.engines[job.model]
        key = self._group.get(job.model, job.model)
        try:
            rows = engine.make_rows(job.prompts, job.params)  # each row carries its adapter
            running = self._running.get(key) or self._batches.get(key)
            if running is None:  # kept across idle spells: its KV cache is reused
                batch = DecodeBatch(self.engines[key], max_rows=self.max_batch)
                running = self._batches[key] = _Running(batch)
        except UserError as e:  # handlers validate first, so this is rare: fail this job only
            job.push(("error", from_user_error(e)))
            return
        if key not in self._running:
            self._running[key] = running
            self.batches += 1
        running.jobs[id(job)] = (job, rows)
        for k, row in enumerate(rows):
            running.owner[id(row)] = (job, k)
            running.batch.add(row)
        self.rows += len(rows)
        self.max_rows = max(self.max_rows, len(running.batch))

    def _step(self, model: str, running: _Running) -> None:
        """One decode step of a model's batch; answers the jobs whose rows are all done."""
        batch = running.batch
        for job, rows in running.jobs.values():  # rows that are not yielding (waiting) too
            if job.expired():
                for row in rows:
                    batch.cancel(row)
        self.recent_batch_rows.append(len(batch))
        try:
            for row, delta in batch.step():
                job, k = running.owner[id(row)]
                if not job.keep_going(k, delta):
                    batch.cancel(row)
        except Exception as e:  # a bug: fail this model's jobs, keep serving
            log.exception("generation failed")
            for job, _ in running.jobs.values():
                job.push(("error", _internal_error(e)))
            del self._running[model]
            self._batches.pop(model, None)  # its state is unknown: start afresh
            return
        engine = self.engines[model]
        for key, (job, rows) in list(running.jobs.items()):
            if all(r.finish is not None for r in rows):
                del running.jobs[key]
                for r in rows:
                    del running.owner[id(r)]
                self._done(job, [engine.completion(r) for r in rows])
        if not batch:
            del self._running[model]

    def _run_continuous(self) -> None:
        while True:
            work = self._admit()
            if work is None:
                return
            calls, joins = work
            t0 = time.perf_counter()
            try:
                for job in calls:
                    self._call(job)
                for job in joins:
                    self._join(job)
                for model, running in list(self._running.items()):
                    self._step(model, running)
            finally:
                self.busy_s += time.perf_counter() - t0
