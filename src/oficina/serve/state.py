"""What every route of ``oficina serve`` shares: ``ServerState`` (engines, the scheduler,
admission, counters, the drain) and the request plumbing built on it — admission slots, running a
job until its answer, and the server-sent-event stream of a generation.

Routes receive the state as an argument (FastAPI's ``Depends(server_state)``), never from a
closure, so a test can call a route function with a state of its own making.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from oficina.errors import UserError
from oficina.serve import protocol
from oficina.serve.config import ServeConfig
from oficina.serve.errors import APIError, from_user_error
from oficina.serve.limits import Admission, Slot
from oficina.serve.scheduler import Job, Scheduler

log = logging.getLogger("oficina.serve")


@dataclass
class ServerState:
    """State shared by the routes: engines, the scheduler, limits, the embedder, counters."""

    cfg: ServeConfig
    engines: dict
    scheduler: Any  # a Scheduler: anything with submit(job), stats(), start(), stop()
    admission: Admission
    embedding_name: str | None = None
    api_keys: list[str] = field(default_factory=list)
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.time)
    requests: dict = field(
        default_factory=lambda: {"completions": 0, "chat": 0, "embeddings": 0, "feedback": 0}
    )
    disconnects: int = 0
    stopping: str | None = None  # the signal that began the drain
    _embedder: Any = None
    # jobs in flight, by id (a Job is a dataclass, so not hashable); gone once collected
    _jobs: weakref.WeakValueDictionary[int, Job] = field(
        default_factory=weakref.WeakValueDictionary
    )

    @classmethod
    def from_config(cls, cfg: ServeConfig, engines: dict) -> ServerState:
        """The state ``create_app`` serves: a scheduler and admission gate sized by ``cfg``."""
        keys = [cfg.api_key] if cfg.api_key else []
        if not keys and os.environ.get("OFICINA_API_KEY"):
            keys = [os.environ["OFICINA_API_KEY"]]
        return cls(
            cfg=cfg,
            engines=engines,
            scheduler=Scheduler(
                engines, cfg.max_batch, cfg.batch_wait_ms / 1000.0, mode=cfg.scheduler
            ),
            admission=Admission(cfg.max_concurrent, cfg.max_queue, cfg.queue_timeout_s),
            embedding_name=(
                None if cfg.embeddings.lower() in ("", "none", "off") else cfg.embeddings
            ),
            api_keys=keys,
        )

    # -- shutdown ---------------------------------------------------------------
    def begin_drain(self, signame: str) -> None:
        """Stop admitting work; give every job in flight ``drain_timeout_s`` more to finish."""
        if self.stopping is None:
            self.stopping = signame
            cut = time.monotonic() + self.cfg.drain_timeout_s
            for job in list(self._jobs.values()):
                job.deadline = min(job.deadline, cut)
            log.info(
                "%s: draining %d job(s) for %gs", signame, len(self._jobs), self.cfg.drain_timeout_s
            )

    def submit(self, job: Job) -> None:
        self._jobs[id(job)] = job
        self.scheduler.submit(job)

    def cut_error(self) -> APIError:
        """Why a job's generation was cut at its deadline: shutdown (503) or its timeout (504)."""
        if self.stopping:
            return APIError(
                503,
                f"the server is shutting down ({self.stopping}); the answer was cut after the "
                f"{self.cfg.drain_timeout_s:g}s drain",
                type="server_error",
                code="server_shutting_down",
            )
        return APIError(
            504,
            f"generation took longer than the server's limit of {self.cfg.request_timeout_s:g}s",
            code="timeout",
        )

    # -- lookups ----------------------------------------------------------------
    def engine(self, model: str):
        if model in self.engines:
            return self.engines[model]
        if self.embedding_name and model == self.embedding_name:
            raise APIError(
                400,
                f"'{model}' is an embedding model; use /v1/embeddings",
                param="model",
                code="wrong_model_type",
            )
        raise APIError(
            404,
            f"model '{model}' is not served here; served: {', '.join(self.engines)}",
            param="model",
            code="model_not_found",
        )

    def embedder(self):
        """The embedder, loaded on first use (called on the scheduler thread)."""
        if self._embedder is None:
            from oficina.models.embed import Embedder

            self._embedder = Embedder(self.embedding_name)
        return self._embedder

    # -- shared request plumbing ------------------------------------------------
    def max_new_tokens(
        self, engine, prompt_tokens: int, asked: int | None, default: int | None
    ) -> int:
        ctx = engine.context_length
        if prompt_tokens > ctx:
            raise APIError(
                400,
                f"the prompt has {prompt_tokens} tokens; the context of '{engine.name}' is {ctx} tokens",
                param="messages" if default is not None else "prompt",
                code="context_length_exceeded",
            )
        room = ctx - prompt_tokens
        if asked is None:
            want = room if default is None else min(default, room)
            return min(want, self.cfg.max_tokens) if self.cfg.max_tokens else want
        if self.cfg.max_tokens and asked > self.cfg.max_tokens:
            raise APIError(
                400,
                f"max_tokens={asked} is above this server's limit of {self.cfg.max_tokens}",
                param="max_tokens",
                code="invalid_value",
            )
        if asked > room:
            raise APIError(
                400,
                f"max_tokens={asked} plus the prompt's {prompt_tokens} tokens exceeds the context "
                f"of '{engine.name}' ({ctx} tokens); at most {room} fit",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return asked

    def sampling(self, req, max_new: int, logprobs: int | None, echo: bool, choice: int):
        from oficina.infer.engine import SamplingParams

        seed = None if req.seed is None else (req.seed + choice) % (2**63)
        p = SamplingParams(
            max_new_tokens=max_new,
            temperature=float(req.temperature),
            top_k=max(0, int(req.top_k)),
            top_p=float(req.top_p),
            repetition_penalty=float(req.repetition_penalty),
            stop=req.stop_list(),
            seed=seed,
            logprobs=logprobs,
            echo=echo,
            min_tokens=req.min_tokens,
            ignore_eos=req.ignore_eos,
        )
        try:
            p.validate()
        except UserError as e:
            raise from_user_error(e) from None
        return p

    async def run_job(self, job: Job, request: Request) -> tuple:
        """Wait for a non-streaming job's final event; cancel it if the client leaves."""
        self.submit(job)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(job.events.get(), timeout=0.5)
                except TimeoutError:
                    if await request.is_disconnected():
                        job.cancel()
                        self.disconnects += 1
                        raise APIError(
                            400, "client disconnected", code="client_disconnected"
                        ) from None
                    continue
                if item[0] == "error":
                    raise item[1]
                if item[0] in ("done", "result"):
                    if job.timed_out:
                        raise self.cut_error()
                    return item
        except asyncio.CancelledError:
            job.cancel()
            raise

    async def call(self, fn: Callable[[], Any], request: Request) -> Any:
        """Run fn() on the scheduler thread (serialised with generation); return its result."""
        job = Job(loop=asyncio.get_running_loop(), fn=fn)
        return (await self.run_job(job, request))[1]

    async def admitted(self, handler: Callable[[Slot], Awaitable[Any]]) -> Any:
        """Run handler(slot) holding an admission slot; a streaming response releases it itself."""
        if self.stopping:  # a keep-alive connection may still send one after the drain began
            raise APIError(
                503,
                "the server is shutting down",
                type="server_error",
                code="server_shutting_down",
            )
        slot = await self.admission.acquire()
        try:
            response = await handler(slot)
        except BaseException:
            slot.release()
            raise
        if not isinstance(response, StreamingResponse):
            slot.release()
        return response

    # -- streaming --------------------------------------------------------------
    def stream_response(
        self, job: Job, slot: Slot, events: AsyncIterator[str]
    ) -> StreamingResponse:
        """SSE response whose end (normal, error, or client gone) cancels the job and frees the slot."""
        loop = asyncio.get_running_loop()

        async def body() -> AsyncIterator[str]:
            finished = False
            try:
                async for chunk in events:
                    yield chunk
                finished = True
            except APIError as e:
                yield e.sse()
                yield protocol.SSE_DONE
                finished = True
            finally:
                if not finished:
                    self.disconnects += 1
                job.cancel()
                slot.release()

        gen = body()
        # If the client leaves before the body is ever iterated, free the slot when it is collected.
        weakref.finalize(gen, _release_soon, loop, slot, job)
        return StreamingResponse(
            gen,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def job_events(self, job: Job) -> AsyncIterator[tuple]:
        """Submit ``job`` and yield its events up to and including ``done``."""
        self.submit(job)
        while True:
            item = await job.events.get()
            if item[0] == "error":
                raise item[1]
            yield item
            if item[0] == "done":
                if job.timed_out:
                    raise self.cut_error()
                return

    async def sse_events(
        self,
        job: Job,
        chunk: Callable[..., dict],
        head: list[dict],
        delta_choice: Callable[[int, str], dict],
        final_choice: Callable[[int, Any], dict],
        usage: Callable[[list], dict] | None,
    ) -> AsyncIterator[str]:
        """The SSE stream both generation routes send: head chunks, one chunk per text delta,
        one closing chunk per choice, the usage chunk if asked, then ``[DONE]``.

        ``chunk(choices, usage=None)`` builds one event (``protocol.completion`` or
        ``protocol.chat_chunk`` with the request's id); the choices come from the other callables.
        """
        for choice in head:
            yield protocol.sse(chunk([choice]))
        async for item in self.job_events(job):
            if item[0] == "delta":
                _, k, delta = item
                yield protocol.sse(chunk([delta_choice(k, delta)]))
                continue
            comps = item[1]
            for k, c in enumerate(comps):
                yield protocol.sse(chunk([final_choice(k, c)]))
            if usage is not None:
                yield protocol.sse(chunk([], usage(comps)))
        yield protocol.SSE_DONE


async def server_state(request: Request) -> ServerState:
    """FastAPI dependency: the state of the app serving this request (async: a plain function
    would be sent to the thread pool on every request)."""
    return request.app.state.server


def _release_soon(loop, slot: Slot, job: Job) -> None:
    job.cancel()
    try:
        loop.call_soon_threadsafe(slot.release)
    except RuntimeError:  # loop closed: nothing left to release
        pass
