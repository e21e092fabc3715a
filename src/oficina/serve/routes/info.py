"""The informational routes: ``GET /health``, the chat page ``GET /``, ``GET /favicon.ico``
(``root``), and ``GET /v1/models``, ``GET /v1/models/{model}`` (``v1``)."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from oficina.infer.prefix_cache import shared_prefix_cache
from oficina.serve import protocol
from oficina.serve.errors import APIError
from oficina.serve.routes import BAD
from oficina.serve.state import ServerState, server_state

STATIC = Path(__file__).resolve().parent.parent / "static"

root = APIRouter()
v1 = APIRouter()


@root.get("/health", tags=["info"])
async def health(state: ServerState = Depends(server_state)) -> dict:
    return {
        "status": "ok",
        "models": list(state.engines),
        "embeddings": state.embedding_name,
        "uptime_s": round(time.time() - state.started, 1),
        "active": state.admission.active,
        "waiting": state.admission.waiting,
        "rejected": state.admission.rejected,
        "disconnects": state.disconnects,
        "requests": state.requests,
        **state.scheduler.stats(),
        "prefix_cache": shared_prefix_cache().stats(),
    }


@root.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


@root.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    return Response(status_code=204)


def model_card(state: ServerState, name: str) -> dict:
    """The card of a served generation model, or else of the embedding model."""
    if name in state.engines:
        e = state.engines[name]
        return protocol.model_card(
            name,
            state.created,
            "chat" if e.has_chat_template else "completion",
            max_model_len=e.context_length,
            parent=None if e.adapter is None else str(e.path),
        )
    return protocol.model_card(name, state.created, "embedding")


@v1.get("/models", tags=["info"], responses={401: BAD})
async def list_models(state: ServerState = Depends(server_state)) -> dict:
    names = [*state.engines, *([state.embedding_name] if state.embedding_name else [])]
    return protocol.model_list([model_card(state, n) for n in names])


@v1.get("/models/{model}", tags=["info"], responses={401: BAD, 404: BAD})
async def get_model(model: str, state: ServerState = Depends(server_state)) -> dict:
    if model in state.engines or model == state.embedding_name:
        return model_card(state, model)
    raise APIError(
        404, f"model '{model}' is not served here", param="model", code="model_not_found"
    )
