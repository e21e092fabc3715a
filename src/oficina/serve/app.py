"""``oficina serve``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) with a web chat page.

    oficina serve smollm2-135m-instruct                       # http://127.0.0.1:8000/
    oficina serve chat=smollm2-135m-instruct tiny=runs/x/model --port 8080 --api-key "$KEY"
    oficina serve smollm2-135m-instruct demo=smollm2-135m-instruct+runs/lora/adapter

Each positional is a model to serve: ``SPEC`` (its id is the spec, or a folder's name),
``NAME=SPEC`` (id NAME), or ``[NAME=]BASE+ADAPTER_DIR`` (a PEFT LoRA adapter on BASE; default
id is the adapter folder's name). The embedder ``minilm-l6`` is served for /v1/embeddings too
(loaded on first use; ``--embeddings none`` turns it off).

Routes: ``GET /v1/models``, ``POST /v1/completions`` (``echo``, ``logprobs``; a prompt given as
token ids is scored exactly as sent — what lm-eval's ``local-completions`` needs),
``POST /v1/chat/completions``, ``POST /v1/embeddings``, ``POST /v1/feedback``,
``POST /v1/cache/lookup`` (answers from ``oficina batch``'s cache alone), ``GET /health``,
``GET /`` (the chat page) and ``/openapi.json``. ``"stream": true`` answers with
server-sent events ending in ``data: [DONE]``; an error after the stream started is sent as a
``data: {"error": ...}`` event, then ``[DONE]``.

Requests from all clients go through one batching scheduler (``oficina.serve.scheduler``).
Limits: ``--max-concurrent`` requests admitted, ``--max-queue`` waiting (beyond: 429 with
Retry-After), ``--max-body-bytes`` (413), ``max_tokens`` checked against the context and
``--max-tokens`` (400), ``--request-timeout-s`` per request (504), and a client that
disconnects has its generation cancelled.

SIGTERM or Ctrl-C: stop accepting, let requests in flight run for ``--drain-timeout-s``, then cut
each (503 ``server_shutting_down``: an error event and ``[DONE]`` on a stream), exit 0 and record
the run ``stopped``. Adapters pass the weight gate (``oficina.models.safety``) before loading.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import signal
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import Field

from oficina.config import VerbConfig
from oficina.errors import UserError
from oficina.models.safety import check_adapter_dir
from oficina.serve import errors
from oficina.serve.auth import require_key
from oficina.serve.errors import APIError, from_user_error
from oficina.serve.limits import Admission, BodySizeLimit
from oficina.serve.logprobs import chat_logprobs, legacy_logprobs, score_ids
from oficina.serve.protocol import (
    CacheLookupRequest,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FeedbackRequest,
)
from oficina.serve.scheduler import Job, Scheduler

log = logging.getLogger("oficina.serve")

STATIC = Path(__file__).parent / "static"


class ServeConfig(VerbConfig):
    """Serve models behind an OpenAI-compatible API, with a web chat page that collects feedback."""

    positionals = ("models",)
    models: list[str] = Field(
        description="models to serve: SPEC, NAME=SPEC, or [NAME=]BASE+ADAPTER_DIR (LoRA)"
    )
    host: str = Field(
        "127.0.0.1", description="address to bind (0.0.0.0 exposes it to the network)"
    )
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    api_key: str | None = Field(
        None,
        description="require 'Authorization: Bearer KEY' on /v1 (default: $OFICINA_API_KEY if set)",
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="weights dtype")
    max_batch: int = Field(
        16, ge=1, le=256, description="rows per generation batch (1 = no batching)"
    )
    batch_wait_ms: float = Field(
        10.0, ge=0, le=1000, description="how long a batch waits for more requests"
    )
    scheduler: Literal["continuous", "static"] = Field(
        "continuous",
        description="continuous: requests join the running batch at the next decode step; "
        "static: a batch runs to its end before the next starts",
    )
    max_concurrent: int = Field(64, ge=1, description="requests admitted at once")
    max_queue: int = Field(128, ge=0, description="requests waiting for admission; beyond it 429")
    queue_timeout_s: float = Field(60.0, gt=0, description="longest wait for admission before 429")
    request_timeout_s: float = Field(
        600.0, gt=0, description="longest generation per request (504)"
    )
    drain_timeout_s: float = Field(
        10.0,
        ge=0,
        description="on SIGTERM or Ctrl-C: how long requests in flight may still run; then each "
        "is cut (an error event, then [DONE]) and the server exits 0",
    )
    max_body_bytes: int = Field(4_000_000, ge=1024, description="largest request body (413)")
    max_tokens: int | None = Field(
        None, ge=1, description="largest max_tokens a request may ask for (default: the context)"
    )
    default_max_tokens: int = Field(
        512, ge=1, description="chat max_tokens when the request sets none"
    )
    embeddings: str = Field(
        "minilm-l6", description="embedding model served on /v1/embeddings ('none' = off)"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="uvicorn log level"
    )


# ---------------------------------------------------------------------------- model specs


@dataclass(frozen=True)
class ModelArg:
    name: str
    spec: str
    adapter: str | None = None


def parse_model_arg(arg: str) -> ModelArg:
    """``SPEC`` | ``NAME=SPEC`` | ``[NAME=]BASE+ADAPTER_DIR`` -> ModelArg (no loading)."""
    raw = arg.strip()
    if not raw:
        raise UserError("empty model argument")
    name = None
    if "=" in raw and not Path(raw).exists():
        left, right = raw.split("=", 1)
        if not left or "/" in left or any(c.isspace() for c in left):
            raise UserError(
                f"bad model id in '{arg}': use NAME=SPEC with a NAME without '/' or spaces"
            )
        name, raw = left, right
    adapter = None
    if "+" in raw and not Path(raw).exists():
        raw, adapter = raw.rsplit("+", 1)
        if not raw or not adapter:
            raise UserError(f"bad adapter spec '{arg}': use BASE+ADAPTER_DIR")
        check_adapter_dir(adapter)  # refuse a pickle or broken adapter before any loading
    if not raw:
        raise UserError(f"no model spec in '{arg}'")
    if name is None:
        src = adapter or raw
        p = Path(src).expanduser()
        name = p.resolve().name if (p.exists() or os.sep in src) else src
    return ModelArg(name=name, spec=raw, adapter=adapter)


def parse_model_args(args: list[str]) -> list[ModelArg]:
    out = [parse_model_arg(a) for a in args]
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"two models would have the id '{dup[0]}'; give ids with NAME=SPEC")
    return out


def load_engines(margs: list[ModelArg], dtype: str = "float32") -> dict:
    from oficina.infer.engine import Engine

    engines = {}
    for m in margs:
        t0 = time.perf_counter()
        engines[m.name] = Engine.from_spec(m.spec, dtype=dtype, adapter=m.adapter, name=m.name)
        log.info("loaded %s (%s) in %.1fs", m.name, m.spec, time.perf_counter() - t0)
    return engines


# ---------------------------------------------------------------------------- response pieces


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ---------------------------------------------------------------------------- the app


class Server:
    """State shared by the routes: engines, the scheduler, limits, the embedder."""

    def __init__(self, cfg: ServeConfig, engines: dict):
        self.cfg = cfg
        self.engines = engines
        self.scheduler = Scheduler(
            engines, cfg.max_batch, cfg.batch_wait_ms / 1000.0, mode=cfg.scheduler
        )
        self.admission = Admission(cfg.max_concurrent, cfg.max_queue, cfg.queue_timeout_s)
        self.embedding_name = (
            None if cfg.embeddings.lower() in ("", "none", "off") else cfg.embeddings
        )
        self._embedder = None
        self.created = int(time.time())
        self.started = time.time()
        self.requests = {"completions": 0, "chat": 0, "embeddings": 0, "feedback": 0}
        self.disconnects = 0
        keys = [cfg.api_key] if cfg.api_key else []
        if not keys and os.environ.get("OFICINA_API_KEY"):
            keys = [os.environ["OFICINA_API_KEY"]]
        self.api_keys = keys
        self.stopping: str | None = None  # the signal that began the drain
        # jobs in flight, by id (a Job is a dataclass, so not hashable); gone once collected
        self._jobs: weakref.WeakValueDictionary[int, Job] = weakref.WeakValueDictionary()

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

    async def run_job(self, job, request) -> tuple:
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

    async def call(self, fn, request):
        """Run fn() on the scheduler thread (serialised with generation); return its result."""
        job = Job(loop=asyncio.get_running_loop(), fn=fn)
        return (await self.run_job(job, request))[1]


def create_app(cfg: ServeConfig, engines: dict | None = None):
    """The FastAPI app for ``cfg``; engines are loaded from ``cfg.models`` unless given."""
    if engines is None:
        engines = load_engines(parse_model_args(cfg.models), cfg.dtype)
    if not engines:
        raise UserError("no model to serve")
    srv = Server(cfg, engines)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        srv.scheduler.start()
        try:
            yield
        finally:
            await asyncio.to_thread(srv.scheduler.stop)

    app = FastAPI(
        title="Oficina",
        version="1",
        description="OpenAI-compatible API for the models served by `oficina serve`, with a chat page at /.",
        lifespan=lifespan,
        # The Swagger/ReDoc pages load their scripts from a CDN, which an offline machine cannot
        # reach; /openapi.json is the description.
        docs_url=None,
        redoc_url=None,
    )
    app.state.server = srv
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes)
    # The key check (and its security scheme in /openapi.json) exists only when a key is set.
    v1 = APIRouter(
        prefix="/v1", dependencies=[Depends(require_key(srv.api_keys))] if srv.api_keys else []
    )
    bad = {"model": dict, "description": "OpenAI-style error body"}
    err_responses: dict = {
        200: {
            "content": {"application/json": {}, "text/event-stream": {}},
            "description": "JSON, or server-sent events with stream=true",
        },
        400: bad,
        401: bad,
        404: bad,
        413: bad,
        429: bad,
    }

    # ------------------------------------------------------------------ info
    @app.get("/health", tags=["info"])
    async def health() -> dict:
        return {
            "status": "ok",
            "models": list(srv.engines),
            "embeddings": srv.embedding_name,
            "uptime_s": round(time.time() - srv.started, 1),
            "active": srv.admission.active,
            "waiting": srv.admission.waiting,
            "rejected": srv.admission.rejected,
            "disconnects": srv.disconnects,
            "requests": srv.requests,
            **srv.scheduler.stats(),
        }

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    def model_card(name: str) -> dict:
        if name in srv.engines:
            e = srv.engines[name]
            return {
                "id": name,
                "object": "model",
                "created": srv.created,
                "owned_by": "oficina",
                "type": "chat" if e.has_chat_template else "completion",
                "max_model_len": e.context_length,
                "parent": None if e.adapter is None else str(e.path),
            }
        return {
            "id": name,
            "object": "model",
            "created": srv.created,
            "owned_by": "oficina",
            "type": "embedding",
        }

    @v1.get("/models", tags=["info"], responses={401: bad})
    async def list_models() -> dict:
        names = [*srv.engines, *([srv.embedding_name] if srv.embedding_name else [])]
        return {"object": "list", "data": [model_card(n) for n in names]}

    @v1.get("/models/{model}", tags=["info"], responses={401: bad, 404: bad})
    async def get_model(model: str) -> dict:
        if model in srv.engines or model == srv.embedding_name:
            return model_card(model)
        raise APIError(
            404, f"model '{model}' is not served here", param="model", code="model_not_found"
        )

    # ------------------------------------------------------------------ generation
    async def admitted(handler, request: Request):
        """Run handler(slot) holding an admission slot; a streaming response releases it itself."""
        if srv.stopping:  # a keep-alive connection may still send one after the drain began
            raise APIError(
                503,
                "the server is shutting down",
                type="server_error",
                code="server_shutting_down",
            )
        slot = await srv.admission.acquire()
        try:
            response = await handler(slot)
        except BaseException:
            slot.release()
            raise
        if not isinstance(response, StreamingResponse):
            slot.release()
        return response

    def stream_response(job: Job, slot, events: AsyncIterator[str]) -> StreamingResponse:
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
                yield "data: [DONE]\n\n"
                finished = True
            finally:
                if not finished:
                    srv.disconnects += 1
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

    async def job_events(job: Job) -> AsyncIterator[tuple]:
        srv.submit(job)
        while True:
            item = await job.events.get()
            if item[0] == "error":
                raise item[1]
            yield item
            if item[0] == "done":
                if job.timed_out:
                    raise srv.cut_error()
                return

    async def sse_events(
        job: Job,
        chunk: Callable[[list[dict]], dict],
        head: list[dict],
        delta_choice: Callable[[int, str], dict],
        final_choice: Callable[[int, Any], dict],
        usage: Callable[[list], dict] | None,
    ) -> AsyncIterator[str]:
        """The SSE stream both generation routes send: head chunks, one chunk per text delta,
        one closing chunk per choice, the usage chunk if asked, then ``[DONE]``."""
        for choice in head:
            yield _sse(chunk([choice]))
        async for item in job_events(job):
            if item[0] == "delta":
                _, k, delta = item
                yield _sse(chunk([delta_choice(k, delta)]))
                continue
            comps = item[1]
            for k, c in enumerate(comps):
                yield _sse(chunk([final_choice(k, c)]))
            if usage is not None:
                yield _sse({**chunk([]), "usage": usage(comps)})
        yield "data: [DONE]\n\n"

    # -- /v1/completions ------------------------------------------------------------
    def completion_prompts(engine, req: CompletionRequest) -> list[tuple[str, list[int] | None]]:
        p = req.prompt
        if isinstance(p, str):
            items: list = [p]
        elif p and isinstance(p[0], str):
            items = list(p)
        elif p and isinstance(p[0], int):
            items = [p]
        else:
            items = list(p)
        out = []
        vocab = len(engine.tokenizer)
        for it in items:
            if isinstance(it, str):
                out.append((it, None))
            else:
                if max(it) >= vocab:
                    raise APIError(
                        400,
                        f"token id {max(it)} is outside the vocabulary (size {vocab})",
                        param="prompt",
                    )
                out.append((engine.tokenizer.decode(it, skip_special_tokens=False), list(it)))
        return out

    @v1.post("/completions", tags=["generation"], responses=err_responses)
    async def completions(req: CompletionRequest, request: Request):
        srv.requests["completions"] += 1
        engine = srv.engine(req.model)
        prompts = completion_prompts(engine, req)
        want_lp = req.logprobs is not None
        # lm-eval's loglikelihood request: token ids, echo, logprobs, at most one new token.
        # Those ids are scored exactly as sent; anything else goes through the engine as text,
        # so its length is counted the way the engine will tokenize it.
        exact = (
            req.echo
            and want_lp
            and all(ids is not None for _, ids in prompts)
            and req.max_tokens is not None
            and req.max_tokens <= 1
        )
        # Tokenizing a long prompt takes a while: keep it off the event loop.
        counts = await asyncio.to_thread(
            lambda: [len(ids) if exact else engine.count_tokens(text) for text, ids in prompts]
        )
        max_news = [srv.max_new_tokens(engine, n, req.max_tokens, None) for n in counts]
        created, rid = int(time.time()), "cmpl-" + secrets.token_hex(12)

        async def handler(slot):
            if exact:
                ids_list = [ids for _, ids in prompts for _ in range(req.n)]
                scored = await srv.call(
                    lambda: score_ids(
                        engine, ids_list, req.logprobs, max_news[0] == 1, req.temperature, req.seed
                    ),
                    request,
                )
                choices, completion_tokens = [], 0
                for k, ((items, new), (text, _)) in enumerate(
                    zip(scored, [p for p in prompts for _ in range(req.n)], strict=True)
                ):
                    gen_text = "".join(t.token for t in new)
                    completion_tokens += len(new)
                    choices.append(
                        {
                            "index": k,
                            "text": text + gen_text,
                            "logprobs": legacy_logprobs(items + new),
                            "finish_reason": "length",
                        }
                    )
                return {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": req.model,
                    "choices": choices,
                    "usage": _usage(sum(counts), completion_tokens),
                }
            texts, params = [], []
            for i, (text, _) in enumerate(prompts):
                for j in range(req.n):
                    texts.append(text)
                    params.append(
                        srv.sampling(req, max_news[i], req.logprobs, req.echo and want_lp, j)
                    )
            job = Job(
                loop=asyncio.get_running_loop(),
                model=req.model,
                prompts=texts,
                params=params,
                stream=req.stream,
                deadline=time.monotonic() + cfg.request_timeout_s,
            )

            def choice_logprobs(c) -> dict | None:
                if not want_lp:
                    return None
                items = (c.prompt_logprobs or []) if req.echo else []
                return legacy_logprobs(items + (c.logprobs or []))

            if not req.stream:
                _, comps = await srv.run_job(job, request)
                choices = [
                    {
                        "index": k,
                        "text": (texts[k] if req.echo else "") + c.text,
                        "logprobs": choice_logprobs(c),
                        "finish_reason": c.finish_reason,
                    }
                    for k, c in enumerate(comps)
                ]
                return {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": req.model,
                    "choices": choices,
                    "usage": _usage(sum(counts), sum(c.completion_tokens for c in comps)),
                }

            def chunk(choices: list[dict]) -> dict:
                return {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": req.model,
                    "choices": choices,
                }

            events = sse_events(
                job,
                chunk,
                head=[
                    {"index": k, "text": t, "logprobs": None, "finish_reason": None}
                    for k, t in enumerate(texts)
                    if req.echo
                ],
                delta_choice=lambda k, d: {
                    "index": k,
                    "text": d,
                    "logprobs": None,
                    "finish_reason": None,
                },
                final_choice=lambda k, c: {
                    "index": k,
                    "text": "",
                    "logprobs": choice_logprobs(c),
                    "finish_reason": c.finish_reason,
                },
                usage=(
                    (lambda comps: _usage(sum(counts), sum(c.completion_tokens for c in comps)))
                    if req.stream_options and req.stream_options.include_usage
                    else None
                ),
            )
            return stream_response(job, slot, events)

        return await admitted(handler, request)

    # -- /v1/chat/completions -------------------------------------------------------
    @v1.post("/chat/completions", tags=["generation"], responses=err_responses)
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        srv.requests["chat"] += 1
        engine = srv.engine(req.model)
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in req.messages
        ]
        try:
            prompt = engine.render_chat(messages)
        except UserError as e:
            raise APIError(400, str(e), param="messages") from None
        except Exception as e:  # jinja templates raise their own errors ("roles must alternate")
            raise APIError(
                400, f"the model's chat template rejected the messages: {e}", param="messages"
            ) from None
        n_prompt = await asyncio.to_thread(engine.count_tokens, prompt)
        asked = req.max_completion_tokens or req.max_tokens
        max_new = srv.max_new_tokens(engine, n_prompt, asked, cfg.default_max_tokens)
        top = (req.top_logprobs or 0) if req.logprobs else None
        created, rid = int(time.time()), "chatcmpl-" + secrets.token_hex(12)

        async def handler(slot):
            params = [srv.sampling(req, max_new, top, False, j) for j in range(req.n)]
            job = Job(
                loop=asyncio.get_running_loop(),
                model=req.model,
                prompts=[prompt] * req.n,
                params=params,
                stream=req.stream,
                deadline=time.monotonic() + cfg.request_timeout_s,
            )
            if not req.stream:
                _, comps = await srv.run_job(job, request)
                return {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": req.model,
                    "choices": [
                        {
                            "index": k,
                            "message": {"role": "assistant", "content": c.text},
                            "logprobs": chat_logprobs(c.logprobs),
                            "finish_reason": c.finish_reason,
                        }
                        for k, c in enumerate(comps)
                    ],
                    "usage": _usage(n_prompt, sum(c.completion_tokens for c in comps)),
                }

            def chunk(choices: list[dict]) -> dict:
                return {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": req.model,
                    "choices": choices,
                }

            events = sse_events(
                job,
                chunk,
                head=[
                    {
                        "index": k,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    for k in range(req.n)
                ],
                delta_choice=lambda k, d: {
                    "index": k,
                    "delta": {"content": d},
                    "logprobs": None,
                    "finish_reason": None,
                },
                final_choice=lambda k, c: {
                    "index": k,
                    "delta": {},
                    "logprobs": chat_logprobs(c.logprobs),
                    "finish_reason": c.finish_reason,
                },
                usage=(
                    (lambda comps: _usage(n_prompt, sum(c.completion_tokens for c in comps)))
                    if req.stream_options and req.stream_options.include_usage
                    else None
                ),
            )
            return stream_response(job, slot, events)

        return await admitted(handler, request)

    # -- /v1/embeddings -------------------------------------------------------------
    @v1.post("/embeddings", tags=["embeddings"], responses=err_responses)
    async def embeddings(req: EmbeddingRequest, request: Request):
        srv.requests["embeddings"] += 1
        if not srv.embedding_name or req.model != srv.embedding_name:
            if req.model in srv.engines:
                raise APIError(
                    400,
                    f"'{req.model}' is a generation model; embeddings come from '{srv.embedding_name}'",
                    param="model",
                    code="wrong_model_type",
                )
            raise APIError(
                404,
                f"embedding model '{req.model}' is not served here"
                + (
                    f"; use '{srv.embedding_name}'"
                    if srv.embedding_name
                    else " (embeddings are off)"
                ),
                param="model",
                code="model_not_found",
            )
        inp = req.input
        if isinstance(inp, str):
            items: list = [inp]
        elif inp and isinstance(inp[0], int):
            items = [inp]
        else:
            items = list(inp)

        def work():
            emb = srv.embedder()
            texts = []
            for it in items:
                if isinstance(it, str):
                    texts.append(it)
                else:
                    if max(it) >= len(emb.tokenizer):
                        raise APIError(
                            400, f"token id {max(it)} is outside the vocabulary", param="input"
                        )
                    texts.append(emb.tokenizer.decode(it, skip_special_tokens=True))
            if req.dimensions is not None and req.dimensions != emb.dim:
                raise APIError(
                    400,
                    f"'{req.model}' has {emb.dim} dimensions; it cannot return {req.dimensions}",
                    param="dimensions",
                )
            vecs = emb.encode(texts)
            tokens = sum(min(emb.count_tokens(t), emb.max_length) for t in texts)
            return vecs, tokens

        async def handler(slot):
            vecs, tokens = await srv.call(work, request)
            data = []
            for i, v in enumerate(vecs):
                if req.encoding_format == "base64":
                    emb_value: Any = base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
                else:
                    emb_value = [float(x) for x in v]
                data.append({"object": "embedding", "index": i, "embedding": emb_value})
            return {
                "object": "list",
                "data": data,
                "model": req.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }

        return await admitted(handler, request)

    # -- /v1/feedback ------------------------------------------------------------------
    @v1.post("/feedback", tags=["feedback"], responses={400: bad, 401: bad, 404: bad, 413: bad})
    def feedback(req: FeedbackRequest) -> dict:
        from oficina.serve import feedback as fb

        srv.requests["feedback"] += 1
        if req.model not in srv.engines:
            raise APIError(
                404,
                f"model '{req.model}' is not served here",
                param="model",
                code="model_not_found",
            )
        prompt = (
            req.prompt
            if isinstance(req.prompt, str)
            else [{"role": m.role, "content": m.text()} for m in req.prompt]
        )
        try:
            saved = fb.store(
                model=req.model,
                prompt=prompt,
                answer=req.answer,
                rating=req.rating,
                correction=req.correction,
                response_id=req.response_id,
                id=req.id,
            )
        except KeyError:
            raise APIError(
                404, f"no feedback record with id {req.id}", param="id", code="not_found"
            ) from None
        return {"id": saved["id"], "object": "feedback", "created": int(saved["created"])}

    # -- /v1/cache/lookup (bulk-inference cache, when that module exists) --------------
    _add_cache_route(v1, srv, err_responses)

    app.include_router(v1)
    _publish_model_ids(app, [*srv.engines], srv.embedding_name)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    return app


def _publish_model_ids(app: FastAPI, generation: list[str], embedding: str | None) -> None:
    """Name this server's model ids in /openapi.json (an enum on each request's ``model``).

    Clients and fuzzers then know the valid values; validation itself stays in the routes
    (an unknown id is a 404 ``model_not_found``, as OpenAI answers).
    """
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            comps = schema.get("components", {}).get("schemas", {})
            for name, ids in (
                ("CompletionRequest", generation),
                ("ChatCompletionRequest", generation),
                ("FeedbackRequest", generation),
                ("CacheLookupRequest", generation),
                ("EmbeddingRequest", [embedding] if embedding else []),
            ):
                prop = comps.get(name, {}).get("properties", {}).get("model")
                if prop is not None and ids:
                    prop["enum"] = list(ids)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _release_soon(loop, slot, job) -> None:
    job.cancel()
    try:
        loop.call_soon_threadsafe(slot.release)
    except RuntimeError:  # loop closed: nothing left to release
        pass


def _add_cache_route(router: APIRouter, srv: Server, responses: dict) -> None:
    """POST /v1/cache/lookup: answer from ``oficina batch``'s cache alone (precompute, then serve).

    The key is the batch cache's own (model content hash, rendered prompt, sampling
    parameters), and the prompt is rendered by the batch module's own function, so a row
    computed offline is found here exactly.
    """
    from oficina.infer import batch

    @router.post(
        "/cache/lookup", tags=["cache"], responses={k: v for k, v in responses.items() if k != 200}
    )
    def cache_lookup(req: CacheLookupRequest) -> dict:
        from oficina.infer.engine import SamplingParams

        engine = srv.engine(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "send exactly one of 'prompt' or 'messages'", param="prompt")
        row: dict = {"prompt": req.prompt}
        if req.messages is not None:
            row = {"messages": [{"role": m.role, "content": m.text()} for m in req.messages]}
        try:
            prompt = batch._render(row, engine.tokenizer, req.chat)
        except UserError as e:
            raise APIError(400, str(e), param="messages" if req.messages else "chat") from None
        except Exception as e:  # jinja errors from the chat template
            raise APIError(
                400, f"the model's chat template rejected the messages: {e}", param="messages"
            ) from None
        params = SamplingParams(
            max_new_tokens=req.max_new_tokens,
            temperature=float(req.temperature),
            top_k=req.top_k,
            top_p=float(req.top_p),
            repetition_penalty=float(req.repetition_penalty),
            stop=list(req.stop),
            seed=req.seed,
        )
        hit = batch.lookup_row(engine.model_hash, prompt, params)
        return {
            "object": "cache.lookup",
            "model": req.model,
            "hit": hit is not None,
            "text": hit["text"] if hit else None,
            "finish_reason": hit["finish_reason"] if hit else None,
            "usage": _usage(hit["prompt_tokens"] or 0, hit["completion_tokens"] or 0)
            if hit
            else None,
        }


# ---------------------------------------------------------------------------- the verb


def _check_port_free(host: str, port: int) -> None:
    """Fail in one line before loading any model if the address cannot be bound."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UserError(f"cannot resolve host '{host}'") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise UserError(
                f"cannot listen on {host}:{port} ({e.strerror}); choose another --port"
            ) from None


def run(cfg: ServeConfig) -> int:
    import uvicorn

    from oficina.workspace import start_run

    logging.basicConfig(level=getattr(logging, cfg.log_level.upper()), format="%(message)s")
    margs = parse_model_args(cfg.models)
    _check_port_free(cfg.host, cfg.port)
    # The key never reaches the run folder: config.yaml records only whether one was set.
    recorded = cfg.model_copy(update={"api_key": "***" if cfg.api_key else None})
    with start_run("serve", recorded) as run_:
        for m in margs:
            run_.add_input(m.name, m.spec)
            if m.adapter:
                run_.add_input(m.name + ":adapter", m.adapter)
        t0 = time.perf_counter()
        engines = load_engines(margs, cfg.dtype)
        app = create_app(cfg, engines)
        srv: Server = app.state.server
        where = f"http://{cfg.host}:{cfg.port}"
        print(
            f"serving {', '.join(engines)} ({time.perf_counter() - t0:.1f}s to load) on {where}/  "
            f"(chat page; API at {where}/v1, schema at {where}/openapi.json"
            + (", API key required" if srv.api_keys else "")
            + ")",
            flush=True,
        )
        if cfg.host not in ("127.0.0.1", "localhost", "::1") and not srv.api_keys:
            print(
                f"warning: listening on {cfg.host} with no --api-key: anyone who can reach it can use it"
            )

        class DrainingServer(uvicorn.Server):
            """uvicorn, whose SIGTERM/SIGINT first starts Oficina's drain (see Server.begin_drain).

            uvicorn re-raises a handled signal once it has shut down, which for SIGTERM kills the
            process with -15 after the fact. The signal is fully handled here — stopping is a
            server's normal end — so it is recorded instead (run ``stopped``, exit 0).
            """

            def handle_exit(self, sig: int, frame) -> None:
                srv.begin_drain(signal.Signals(sig).name)
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True  # a second Ctrl-C: stop waiting
                self.should_exit = True

        server = DrainingServer(
            uvicorn.Config(
                app,
                host=cfg.host,
                port=cfg.port,
                log_level=cfg.log_level,
                # Streams cut at the drain deadline still need a moment to send their last events.
                timeout_graceful_shutdown=cfg.drain_timeout_s + 5,
            )
        )
        try:
            server.run()
        except KeyboardInterrupt:  # a signal that came before uvicorn took the handlers
            srv.stopping = srv.stopping or "SIGINT"
        run_.stopped_by = srv.stopping
        print(f"server stopped ({srv.stopping or 'shut down'})", flush=True)
        run_.summary.update(
            {
                "requests": srv.requests,
                "rejected_429": srv.admission.rejected,
                "disconnects": srv.disconnects,
                "uptime_s": round(time.time() - srv.started, 1),
                **srv.scheduler.stats(),
            }
        )
    return 0
