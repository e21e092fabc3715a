"""``POST /v1/cache/lookup``: answer from ``oficina batch``'s cache alone (precompute, then serve).

The key is the batch cache's own (model content hash, rendered prompt, sampling parameters), and
the prompt is rendered by the batch module's own function, so a row computed offline is found
here exactly. The model is never run.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from oficina.errors import UserError
from oficina.infer import batch
from oficina.serve import protocol
from oficina.serve.errors import APIError
from oficina.serve.protocol import CacheLookupRequest
from oficina.serve.routes import ERRORS
from oficina.serve.state import ServerState, server_state

router = APIRouter()


@router.post("/cache/lookup", tags=["cache"], responses=ERRORS)
def cache_lookup(req: CacheLookupRequest, state: ServerState = Depends(server_state)) -> dict:
    from oficina.infer.engine import SamplingParams

    engine = state.engine(req.model)
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
        "usage": protocol.usage(hit["prompt_tokens"] or 0, hit["completion_tokens"] or 0)
        if hit
        else None,
    }
