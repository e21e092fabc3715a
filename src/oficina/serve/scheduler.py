"""The batching scheduler: one thread that gathers queued requests and runs them as one batch.

HTTP handlers (on the asyncio event loop) ``submit`` a ``Job``: one or more prompts for one
model, each with its own sampling parameters. The scheduler thread takes the oldest job, waits
for more jobs for the same model (until ``max_batch`` rows, or until none has arrived for
``batch_wait_s``, at most 4x that in all), and calls
``engine.generate`` once for all of them. Text deltas travel back through ``on_token`` to each
job's ``asyncio.Queue`` (via ``call_soon_threadsafe``); returning False from ``on_token``
cancels a row whose client went away or whose deadline passed, so the batch stops paying for it.

Why one thread: on a CPU the model already uses every core for one batch, so running two
batches at once would only make both slower; batching is where the throughput comes from.
``max_batch=1`` turns batching off (the peer the benchmark compares against).

Other model work (embeddings, exact-token scoring) runs on the same thread as ``call`` jobs,
so nothing competes with a running batch for the cores.
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
from oficina.serve.errors import APIError, from_user_error

log = logging.getLogger("oficina.serve")


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


class Scheduler:
    """Owns the model thread; see the module docstring."""

    def __init__(self, engines: dict, max_batch: int = 16, batch_wait_s: float = 0.01):
        self.engines = engines
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

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="oficina-batcher", daemon=True)
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
            # Wait until no new request has come for batch_wait_s (clients that start together
            # arrive a few ms apart), but never more than 4x that in all.
            now = time.monotonic()
            quiet_until, cap = now + self.batch_wait_s, now + 4 * self.batch_wait_s
            while rows < self.max_batch:
                took = False
                for job in list(self._queue):
                    if (
                        job.fn is None
                        and job.model == first.model
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
            job.push(
                (
                    "error",
                    APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"),
                )
            )

    def _generate(self, batch: list[Job]) -> None:
        engine = self.engines[batch[0].model]
        prompts: list[str] = []
        params: list = []
        owners: list[tuple[Job, int]] = []
        for job in batch:
            for k, (p, sp) in enumerate(zip(job.prompts, job.params, strict=True)):
                prompts.append(p)
                params.append(sp)
                owners.append((job, k))
        n = len(prompts)
        self.batches += 1
        self.rows += n
        self.max_rows = max(self.max_rows, n)
        self.recent_batch_rows.append(n)

        def on_token(i: int, delta: str) -> bool | None:
            job, k = owners[i]
            if job.cancelled.is_set():
                return False
            if time.monotonic() > job.deadline:
                job.timed_out = True
                return False
            if job.stream and delta:
                job.push(("delta", k, delta))
            return None

        try:
            completions = engine.generate(prompts, params, on_token)
        except UserError as e:  # handlers validate first, so this is rare: fail this batch only
            for job in batch:
                job.push(("error", from_user_error(e)))
            return
        except Exception as e:
            log.exception("generation failed")
            for job in batch:
                job.push(
                    (
                        "error",
                        APIError(
                            500, f"internal error: {type(e).__name__}: {e}", type="server_error"
                        ),
                    )
                )
            return
        start = 0
        for job in batch:
            mine = completions[start : start + len(job.prompts)]
            start += len(job.prompts)
            for c in mine:
                self.generated_tokens += c.completion_tokens
                if c.finish_reason == "cancelled":
                    self.cancelled_rows += 1
            job.push(("done", mine))
