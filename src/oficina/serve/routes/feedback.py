"""``POST /v1/feedback``: a rating and/or correction of one answer, stored by
``oficina.serve.feedback`` (``oficina feedback export`` turns them into training data)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from oficina.serve.errors import APIError
from oficina.serve.protocol import FeedbackRequest
from oficina.serve.routes import BAD
from oficina.serve.state import ServerState, server_state

router = APIRouter()


@router.post("/feedback", tags=["feedback"], responses={400: BAD, 401: BAD, 404: BAD, 413: BAD})
def feedback(req: FeedbackRequest, state: ServerState = Depends(server_state)) -> dict:
    from oficina.serve import feedback as fb

    state.requests["feedback"] += 1
    if req.model not in state.engines:
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
