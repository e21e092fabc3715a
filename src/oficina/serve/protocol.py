"""The OpenAI-compatible wire format, both ways: request bodies and the response shapes.

Requests are pydantic models (they also make /openapi.json). Field ranges are declared here so a
bad value is a 400 before any model work, and so the published schema tells clients (and
schemathesis) what is allowed. Fields this server does not implement (``presence_penalty``,
``logit_bias``...) are ignored, as vLLM does; ``top_k`` and ``repetition_penalty`` are the usual
vLLM extensions.

Responses are plain dicts built by the functions at the end of this file, and only there: the
completion and chat bodies, their streamed chunks, ``usage``, model cards, embedding lists and
the error body. A route assembles its answer from these, so a field is named in one place.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
Text = Annotated[str, Field(max_length=1_000_000)]


class _Body(BaseModel):
    # strict: false is not a rating, 1.0 is not a count (JSON ints still count as floats)
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str = Field(description="a model id from GET /v1/models")
    temperature: float = Field(1.0, ge=0, le=2, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1, description="0 or -1 = off (vLLM extension)")
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="vLLM extension")
    n: int = Field(1, ge=1, le=8, description="choices per prompt")
    stop: str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=8)] | None = (
        None
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    min_tokens: int = Field(
        0,
        ge=0,
        description="vLLM extension: no end-of-sequence or stop string before this many tokens",
    )
    ignore_eos: bool = Field(
        False, description="vLLM extension: keep generating past end-of-sequence up to max_tokens"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]


class CompletionRequest(_Sampling):
    prompt: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=64)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=64)]
    ) = Field(description="text, texts, token ids, or lists of token ids")
    max_tokens: int | None = Field(
        16, ge=0, description="tokens to generate (0 with echo: score only)"
    )
    logprobs: int | None = Field(None, ge=0, le=20, description="top-N alternatives per token")
    echo: bool = Field(False, description="return the prompt too (with its logprobs if asked)")


class TextPart(_Body):
    type: Literal["text"] = "text"
    text: Text


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=512)]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class EmbeddingRequest(_Body):
    model: str
    input: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=2048)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=2048)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class FeedbackRequest(_Body):
    """A rating and/or a correction of one answer. Send ``id`` to update an earlier record."""

    id: int | None = Field(None, ge=1, le=2**62, description="update this feedback record")
    model: Annotated[str, Field(min_length=1, max_length=200)]
    prompt: Text | Annotated[list[ChatMessage], Field(min_length=1, max_length=512)] = Field(
        description="the prompt text, or the chat messages that led to the answer"
    )
    answer: Text
    rating: Annotated[int, Field(ge=-1, le=1)] | None = Field(
        None, description="1 thumbs up, -1 thumbs down, 0 no rating"
    )
    correction: Text | None = Field(None, description="what the answer should have been")
    response_id: Annotated[str, Field(max_length=200)] | None = None


class CacheLookupRequest(_Body):
    """One row as ``oficina batch`` takes it: the answer comes from its cache, never the model."""

    model: str
    prompt: Text | None = Field(
        None, description="text prompt (wrapped in the chat template unless chat=false)"
    )
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=512)] | None = None
    chat: bool | None = Field(
        None, description="wrap 'prompt' in the chat template (default: when the model has one)"
    )
    max_new_tokens: int = Field(128, ge=0)
    temperature: float = Field(0.0, ge=0, le=2)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=8)] = Field(
        default_factory=list
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


# ---------------------------------------------------------------------------- response shapes
# Key order follows OpenAI's own responses (clients do not depend on it; people reading do).

SSE_DONE = "data: [DONE]\n\n"  # the last event of every stream


def sse(obj: Any) -> str:
    """One server-sent event carrying ``obj`` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_body(message: str, type: str, param: str | None, code: str | None) -> dict:
    """``{"error": {...}}``, the body of every error answer (and of an error event in a stream)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _envelope(
    obj: str, rid: str, created: int, model: str, choices: list[dict], usage: dict | None
) -> dict:
    out = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def completion(
    rid: str, created: int, model: str, choices: list[dict], usage: dict | None = None
) -> dict:
    """A /v1/completions answer; without ``usage`` it is one streamed chunk (same object name)."""
    return _envelope("text_completion", rid, created, model, choices, usage)


def completion_choice(
    index: int, text: str, logprobs: dict | None = None, finish_reason: str | None = None
) -> dict:
    """One choice of a completion; a streamed delta has ``finish_reason`` None until the last."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_completion(rid: str, created: int, model: str, choices: list[dict], usage: dict) -> dict:
    """A non-streamed /v1/chat/completions answer."""
    return _envelope("chat.completion", rid, created, model, choices, usage)


def chat_choice(index: int, content: str, logprobs: dict | None, finish_reason: str | None) -> dict:
    """One choice of a non-streamed chat answer: the assistant's whole message."""
    return {
        "index": index,
        "message": {"role": "assistant", "content": content},
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }


def chat_chunk(
    rid: str, created: int, model: str, choices: list[dict], usage: dict | None = None
) -> dict:
    """One streamed chat event (``usage`` only on the closing usage chunk)."""
    return _envelope("chat.completion.chunk", rid, created, model, choices, usage)


def chat_delta(
    index: int, delta: dict, logprobs: dict | None = None, finish_reason: str | None = None
) -> dict:
    """One choice of a chat chunk: ``{"role": "assistant", "content": ""}`` first, then
    ``{"content": piece}`` per text delta, then ``{}`` with the finish reason."""
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def model_card(
    name: str,
    created: int,
    type: str,
    max_model_len: int | None = None,
    parent: str | None = None,
) -> dict:
    """An entry of GET /v1/models. Embedding models carry no context length or parent."""
    card: dict = {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "oficina",
        "type": type,
    }
    if type != "embedding":
        card["max_model_len"] = max_model_len
        card["parent"] = parent
    return card


def model_list(cards: list[dict]) -> dict:
    return {"object": "list", "data": cards}


def embedding_list(model: str, embeddings: list[Any], prompt_tokens: int) -> dict:
    """A /v1/embeddings answer; each embedding is a list of floats or a base64 string."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
