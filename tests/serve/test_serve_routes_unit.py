"""The response shapes and a route on their own: ``protocol``'s builders against the OpenAI wire
format, and the chat route called directly with a ``ServerState`` whose engine and scheduler are
fakes (no model, no HTTP server), so a wrong field shows here and not only through a client."""

from __future__ import annotations

import asyncio
import json

import pytest

from oficina.infer.engine import Completion
from oficina.serve import protocol
from oficina.serve.app import ServeConfig
from oficina.serve.errors import APIError
from oficina.serve.limits import Admission
from oficina.serve.protocol import ChatCompletionRequest, CompletionRequest
from oficina.serve.routes.completions import chat_completions, completions
from oficina.serve.state import ServerState

# ---------------------------------------------------------------------------- shapes


def test_usage_totals_the_two_counts():
    assert protocol.usage(7, 5) == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def test_completion_body_and_chunk():
    choice = protocol.completion_choice(0, "hi", None, "length")
    assert choice == {"index": 0, "text": "hi", "logprobs": None, "finish_reason": "length"}
    body = protocol.completion("cmpl-1", 42, "m", [choice], protocol.usage(3, 1))
    assert body == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 42,
        "model": "m",
        "choices": [choice],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    chunk = protocol.completion("cmpl-1", 42, "m", [protocol.completion_choice(1, "x")])
    assert "usage" not in chunk  # only the closing usage chunk of a stream carries usage
    assert chunk["choices"] == [{"index": 1, "text": "x", "logprobs": None, "finish_reason": None}]


def test_chat_body_chunk_and_deltas():
    lp = {"content": []}
    body = protocol.chat_completion(
        "chatcmpl-1", 42, "m", [protocol.chat_choice(0, "Hello", lp, "stop")], protocol.usage(2, 1)
    )
    assert body == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 42,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "logprobs": lp,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }
    chunk = protocol.chat_chunk("chatcmpl-1", 42, "m", [protocol.chat_delta(0, {"content": "He"})])
    assert chunk == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 42,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"content": "He"}, "logprobs": None, "finish_reason": None}
        ],
    }
    closing = protocol.chat_chunk("chatcmpl-1", 42, "m", [], protocol.usage(2, 1))
    assert closing["choices"] == [] and closing["usage"]["total_tokens"] == 3


def test_error_body_model_cards_embeddings_and_sse():
    err = APIError(404, "no such model", param="model", code="model_not_found")
    assert err.body() == protocol.error_body(
        "no such model", "not_found_error", "model", "model_not_found"
    )
    assert err.body() == {
        "error": {
            "message": "no such model",
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    card = protocol.model_card("tiny", 5, "chat", max_model_len=128, parent=None)
    assert card == {
        "id": "tiny",
        "object": "model",
        "created": 5,
        "owned_by": "oficina",
        "type": "chat",
        "max_model_len": 128,
        "parent": None,
    }
    emb = protocol.model_card("minilm", 5, "embedding")
    assert "max_model_len" not in emb and emb["type"] == "embedding"
    assert protocol.model_list([card]) == {"object": "list", "data": [card]}
    out = protocol.embedding_list("minilm", [[0.5, 1.0], "AAAA"], 6)
    assert out["data"] == [
        {"object": "embedding", "index": 0, "embedding": [0.5, 1.0]},
        {"object": "embedding", "index": 1, "embedding": "AAAA"},
    ]
    assert out["usage"] == {"prompt_tokens": 6, "total_tokens": 6} and out["model"] == "minilm"
    assert protocol.sse({"a": "é"}) == 'data: {"a": "é"}\n\n'
    assert protocol.SSE_DONE == "data: [DONE]\n\n"


# ---------------------------------------------------------------------------- a route alone


class FakeTokenizer:
    def __len__(self) -> int:
        return 100

    def decode(self, ids, skip_special_tokens=False) -> str:
        return " ".join(map(str, ids))


class FakeEngine:
    """Just what the generation routes ask of an engine before handing work to the scheduler."""

    name = "fake"
    context_length = 64
    tokenizer = FakeTokenizer()

    def render_chat(self, messages: list[dict]) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)

    def count_tokens(self, text: str) -> int:
        return len(text.split())


class FakeScheduler:
    """Answers each job at once with fixed pieces, as the real scheduler's events would."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces
        self.jobs: list = []

    def submit(self, job) -> None:
        self.jobs.append(job)
        comps = []
        for k, _ in enumerate(job.prompts):
            if job.stream:
                for piece in self.pieces:
                    job.push(("delta", k, piece))
            text = "".join(self.pieces)
            comps.append(
                Completion(
                    text=text,
                    token_ids=list(range(len(self.pieces))),
                    finish_reason="length",
                    prompt_tokens=3,
                    completion_tokens=len(self.pieces),
                )
            )
        job.push(("done", comps))

    def stats(self) -> dict:
        return {}


class FakeRequest:
    async def is_disconnected(self) -> bool:
        return False


def fake_state(pieces: list[str]) -> ServerState:
    return ServerState(
        cfg=ServeConfig(models=["fake"], default_max_tokens=4),
        engines={"fake": FakeEngine()},
        scheduler=FakeScheduler(pieces),
        admission=Admission(max_concurrent=2, max_queue=0, queue_timeout_s=1),
    )


CHAT = {"model": "fake", "messages": [{"role": "user", "content": "say hi now"}]}


def test_chat_route_answers_with_the_scheduler_text_and_counts():
    state = fake_state(["Hel", "lo"])
    req = ChatCompletionRequest(**CHAT, max_tokens=2, n=2, seed=7)
    body = asyncio.run(chat_completions(req, FakeRequest(), state=state))
    job = state.scheduler.jobs[0]
    assert job.prompts == ["<user>say hi now"] * 2
    assert [(p.max_new_tokens, p.seed) for p in job.params] == [(2, 7), (2, 8)]  # a seed a choice
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [protocol.chat_choice(k, "Hello", None, "length") for k in (0, 1)]
    # the prompt is counted by the engine (3 words), the completions by the scheduler (2 x 2)
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert state.requests["chat"] == 1 and state.admission.active == 0  # the slot is freed


def test_chat_route_streams_role_deltas_finish_usage_then_done():
    state = fake_state(["Hel", "lo"])
    req = ChatCompletionRequest(
        **CHAT, stream=True, n=2, stream_options={"include_usage": True}, temperature=0
    )

    async def collect() -> list[str]:
        response = await chat_completions(req, FakeRequest(), state=state)
        assert state.admission.active == 1  # the stream holds its slot until it ends
        return [part async for part in response.body_iterator]

    events = asyncio.run(collect())
    assert events[-1] == protocol.SSE_DONE and state.admission.active == 0
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    choices = [(c["choices"][0]["index"], c["choices"][0]) for c in chunks if c["choices"]]
    for k in (0, 1):
        mine = [ch for i, ch in choices if i == k]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert [ch["delta"]["content"] for ch in mine[1:-1]] == ["Hel", "lo"]
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == "length"
        assert all(ch["finish_reason"] is None for ch in mine[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_completion_route_echo_and_limits_checked_before_any_work():
    state = fake_state(["!"])
    req = CompletionRequest(model="fake", prompt="one two", max_tokens=1, echo=True)
    body = asyncio.run(completions(req, FakeRequest(), state=state))
    assert body["object"] == "text_completion"
    assert body["choices"] == [protocol.completion_choice(0, "one two!", None, "length")]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}

    too_long = CompletionRequest(model="fake", prompt="one two", max_tokens=63)
    with pytest.raises(APIError) as e:
        asyncio.run(completions(too_long, FakeRequest(), state=state))
    assert e.value.status == 400 and e.value.code == "context_length_exceeded"
    assert len(state.scheduler.jobs) == 1  # the refused request never reached the scheduler
    with pytest.raises(APIError) as e:
        asyncio.run(
            completions(CompletionRequest(model="nope", prompt="x"), FakeRequest(), state=state)
        )
    assert e.value.status == 404 and e.value.code == "model_not_found"
