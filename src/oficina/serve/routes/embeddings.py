"""``POST /v1/embeddings``: vectors from the server's embedding model (``--embeddings``), loaded on
first use and run on the scheduler thread so it never competes with a generation batch."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Depends, Request

from oficina.serve import protocol
from oficina.serve.errors import APIError
from oficina.serve.limits import Slot
from oficina.serve.protocol import EmbeddingRequest
from oficina.serve.routes import RESPONSES
from oficina.serve.state import ServerState, server_state

router = APIRouter()


def _check_model(state: ServerState, model: str) -> None:
    if state.embedding_name and model == state.embedding_name:
        return
    if model in state.engines:
        raise APIError(
            400,
            f"'{model}' is a generation model; embeddings come from '{state.embedding_name}'",
            param="model",
            code="wrong_model_type",
        )
    raise APIError(
        404,
        f"embedding model '{model}' is not served here"
        + (f"; use '{state.embedding_name}'" if state.embedding_name else " (embeddings are off)"),
        param="model",
        code="model_not_found",
    )


@router.post("/embeddings", tags=["embeddings"], responses=RESPONSES)
async def embeddings(
    req: EmbeddingRequest, request: Request, state: ServerState = Depends(server_state)
):
    state.requests["embeddings"] += 1
    _check_model(state, req.model)
    inp = req.input
    if isinstance(inp, str):
        items: list = [inp]
    elif inp and isinstance(inp[0], int):
        items = [inp]
    else:
        items = list(inp)

    def work():
        emb = state.embedder()
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

    async def handler(slot: Slot) -> dict:
        vecs, tokens = await state.call(work, request)
        out: list[Any] = []
        for v in vecs:
            if req.encoding_format == "base64":
                out.append(base64.b64encode(v.astype("<f4").tobytes()).decode("ascii"))
            else:
                out.append([float(x) for x in v])
        return protocol.embedding_list(req.model, out, tokens)

    return await state.admitted(handler)
