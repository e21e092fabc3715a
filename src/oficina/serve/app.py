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

Where things are: this module builds the app (``create_app``: state, middleware, routers) and
runs the verb; ``config`` has the options and model arguments, ``state`` the shared
``ServerState`` and request plumbing, ``routes/`` one module per route family, ``protocol`` the
request bodies and every response shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from fastapi import APIRouter, Depends, FastAPI

from oficina.errors import UserError
from oficina.serve import errors
from oficina.serve.auth import require_key
from oficina.serve.config import (
    ModelArg,
    ServeConfig,
    load_engines,
    parse_model_arg,
    parse_model_args,
)
from oficina.serve.limits import BodySizeLimit
from oficina.serve.routes import cache, completions, embeddings, feedback, info
from oficina.serve.state import ServerState

# The verb's entry points; the config and model arguments are re-exported for callers of this module.
__all__ = [
    "ModelArg",
    "ServeConfig",
    "ServerState",
    "create_app",
    "load_engines",
    "parse_model_arg",
    "parse_model_args",
    "run",
]

log = logging.getLogger("oficina.serve")


def create_app(cfg: ServeConfig, engines: dict | None = None) -> FastAPI:
    """The FastAPI app for ``cfg``; engines are loaded from ``cfg.models`` unless given."""
    if engines is None:
        engines = load_engines(parse_model_args(cfg.models), cfg.dtype)
    if not engines:
        raise UserError("no model to serve")
    state = ServerState.from_config(cfg, engines)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.scheduler.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.scheduler.stop)

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
    app.state.server = state  # what routes receive through Depends(server_state)
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes)
    # The key check (and its security scheme in /openapi.json) exists only when a key is set.
    v1 = APIRouter(
        prefix="/v1", dependencies=[Depends(require_key(state.api_keys))] if state.api_keys else []
    )
    for routes in (info.v1, completions.router, embeddings.router, feedback.router, cache.router):
        v1.include_router(routes)
    app.include_router(info.root)
    app.include_router(v1)
    _publish_model_ids(app, [*state.engines], state.embedding_name)
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
        srv: ServerState = app.state.server
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
            """uvicorn, whose SIGTERM/SIGINT first starts Oficina's drain (see ServerState.begin_drain).

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
