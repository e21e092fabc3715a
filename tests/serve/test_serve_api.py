"""The OpenAI-compatible API, driven by the real ``openai`` client against a real uvicorn server."""

from __future__ import annotations

import concurrent.futures as cf
import json
import math

import openai
import pytest
from serve_helpers import health, http, wait_for


def client(url: str, key: str = "unused", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60, **kw)


def test_models_completion_chat_and_streaming(serve, tiny_engine):
    url = serve()
    c = client(url)
    ids = [m.id for m in c.models.list().data]
    assert ids[0] == "tiny" and "minilm-l6" in ids

    comp = c.completions.create(
        model="tiny", prompt="The yield statement", max_tokens=7, temperature=0
    )
    direct = tiny_engine.generate(["The yield statement"], _params(7))[0]
    assert comp.choices[0].text == direct.text  # the server adds nothing to what the engine says
    assert comp.usage.prompt_tokens == tiny_engine.count_tokens("The yield statement")
    assert comp.usage.completion_tokens == direct.completion_tokens
    assert comp.usage.total_tokens == comp.usage.prompt_tokens + comp.usage.completion_tokens

    messages = [{"role": "user", "content": "What does yield do?"}]
    chat = c.chat.completions.create(model="tiny", messages=messages, max_tokens=9, temperature=0)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length")
    expected = tiny_engine.generate([tiny_engine.render_chat(messages)], _params(9))[0].text
    assert chat.choices[0].message.content == expected

    stream = c.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=9,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == expected
    assert (
        sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) >= 2
    )  # really streamed
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    finish = [
        ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason
    ]
    assert finish == [chat.choices[0].finish_reason]

    # Raw SSE: the stream ends with [DONE].
    with http.stream(
        "POST",
        url + "/v1/completions",
        json={"model": "tiny", "prompt": "x", "max_tokens": 4, "stream": True},
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)


def _params(n: int, **kw):
    from oficina.infer.engine import SamplingParams

    return SamplingParams(max_new_tokens=n, temperature=0, **kw)


def test_invalid_requests_are_400_with_openai_bodies(serve):
    url = serve(max_tokens=64)
    c = client(url)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="x", max_tokens=1000)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=7
        )
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[])
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="no-such-model", prompt="x")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        c.embeddings.create(model="tiny", input="x")  # a generation model is not an embedder

    # max_tokens against the context: 512-token context, ~600-token prompt
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="word " * 600, max_tokens=1)
    assert e.value.body["code"] == "context_length_exceeded"

    for body, param in [
        (b"{not json", None),
        (json.dumps({"model": "tiny"}).encode(), "prompt"),
        (json.dumps({"model": "tiny", "prompt": [10**9]}).encode(), "prompt"),
        (json.dumps({"model": "tiny", "prompt": "x", "n": 0}).encode(), "n"),
    ]:
        r = http.post(
            url + "/v1/completions", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, (body, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        assert err["param"] == param
    r = http.get(url + "/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = http.delete(url + "/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_body_size_limit_is_413(serve):
    url = serve(max_body_bytes=2048)
    r = http.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x" * 5000})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b"x" * 1000

    r = http.post(
        url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_api_key(serve):
    url = serve(api_key="s3cret-key")
    with pytest.raises(openai.AuthenticationError):
        client(url, key="wrong").models.list()
    assert http.get(url + "/v1/models").status_code == 401
    assert [m.id for m in client(url, key="s3cret-key").models.list().data][0] == "tiny"
    # the page and the health check stay open; the page asks for the key
    assert http.get(url + "/").status_code == 200
    assert http.get(url + "/health").status_code == 200


def test_overload_is_429_with_retry_after(serve):
    url = serve(max_concurrent=1, max_queue=0)
    # A long streaming request (480 forced tokens per choice) holds the only slot.
    with http.stream(
        "POST",
        url + "/v1/completions",
        json={
            "model": "tiny",
            "prompt": "a",
            "max_tokens": 480,
            "ignore_eos": True,  # 4 x 480 tokens whatever the random model generates
            "n": 4,
            "stream": True,
            "temperature": 0,
        },
    ) as held:
        lines = held.iter_lines()  # keep the iterator: dropping it closes the connection
        next(lines)
        with pytest.raises(openai.RateLimitError) as e:
            client(url).completions.create(model="tiny", prompt="b", max_tokens=2)
        assert e.value.response.headers["retry-after"] == "1"
        assert e.value.body["code"] == "rate_limit_exceeded"
    # Closing the stream frees the slot.
    assert wait_for(lambda: health(url)["active"] == 0)
    assert client(url).completions.create(model="tiny", prompt="b", max_tokens=2).choices


def test_queue_timeout_is_429(serve):
    # 0.05 s in the queue against >= 4 x 480 decode steps of the holder: any CPU takes longer.
    url = serve(max_concurrent=1, max_queue=4, queue_timeout_s=0.05)
    with http.stream(
        "POST",
        url + "/v1/completions",
        json={
            "model": "tiny",
            "prompt": "a",
            "max_tokens": 480,
            "ignore_eos": True,  # 4 x 480 tokens whatever the random model generates
            "n": 4,
            "stream": True,
            "temperature": 0,
        },
    ) as held:
        lines = held.iter_lines()
        next(lines)
        r = http.post(
            url + "/v1/completions", json={"model": "tiny", "prompt": "b", "max_tokens": 2}
        )
        assert r.status_code == 429 and "waited 0.05s" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "1"


def test_queue_waits_then_runs(serve):
    """With a queue, requests beyond max_concurrent wait their turn instead of failing."""
    url = serve(max_concurrent=1, max_queue=8)
    c = client(url)
    with cf.ThreadPoolExecutor(4) as ex:
        outs = list(
            ex.map(
                lambda i: c.completions.create(model="tiny", prompt=f"q{i}", max_tokens=3), range(4)
            )
        )
    assert all(o.choices[0].text is not None for o in outs)
    assert health(url)["rejected"] == 0


def test_concurrent_requests_are_batched_and_match_single_runs(serve, tiny_engine):
    url = serve(batch_wait_ms=200, max_batch=8)
    c = client(url)
    prompts = [
        f"The {w} statement" for w in ("yield", "return", "import", "global", "while", "raise")
    ]
    with cf.ThreadPoolExecutor(len(prompts)) as ex:
        outs = list(
            ex.map(
                lambda p: c.completions.create(model="tiny", prompt=p, max_tokens=6, temperature=0),
                prompts,
            )
        )
    h = health(url)
    assert h["max_batch_rows"] > 1, h  # several clients shared one engine.generate call
    assert h["batches"] < len(prompts)
    for p, o in zip(prompts, outs, strict=True):
        assert o.choices[0].text == tiny_engine.generate([p], _params(6))[0].text


def test_n_choices_and_seeds(serve):
    c = client(serve())
    out = c.completions.create(model="tiny", prompt="x", max_tokens=6, n=3, temperature=1.0, seed=7)
    again = c.completions.create(
        model="tiny", prompt="x", max_tokens=6, n=3, temperature=1.0, seed=7
    )
    assert [ch.index for ch in out.choices] == [0, 1, 2]
    assert [ch.text for ch in out.choices] == [ch.text for ch in again.choices]
    assert len({ch.text for ch in out.choices}) > 1  # each choice its own seed


def test_echo_logprobs_match_engine_loglikelihood(serve, tiny_engine):
    """lm-eval's local-completions: token-id prompt, echo, logprobs=1, max_tokens=1."""
    url = serve()
    ctx, cont = "The yield statement is used", " in generator functions"
    ctx_ids = tiny_engine.encode(ctx)
    whole = tiny_engine.encode(ctx + cont)
    assert whole[: len(ctx_ids)] == ctx_ids
    r = http.post(
        url + "/v1/completions",
        json={
            "model": "tiny",
            "prompt": [whole],
            "max_tokens": 1,
            "echo": True,
            "logprobs": 1,
            "temperature": 0,
            "seed": 1234,
        },
    ).json()
    lp = r["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(whole) + 1  # prompt tokens + the one generated token
    assert lp["token_logprobs"][0] is None
    got = sum(lp["token_logprobs"][len(ctx_ids) : -1])  # exactly lm-eval's parse_logprobs slice
    want, greedy = tiny_engine.loglikelihood([(ctx, cont)])[0]
    assert math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-4)
    tops = lp["top_logprobs"][len(ctx_ids) : -1]
    is_greedy = all(
        t == max(top.values())
        for t, top in zip(lp["token_logprobs"][len(ctx_ids) : -1], tops, strict=True)
    )
    assert is_greedy == greedy

    # Text prompt, echo, max_tokens=0: the prompt scored, nothing generated.
    r = http.post(
        url + "/v1/completions",
        json={"model": "tiny", "prompt": ctx, "max_tokens": 0, "echo": True, "logprobs": 2},
    ).json()
    ch = r["choices"][0]
    assert ch["text"] == ctx
    assert len(ch["logprobs"]["tokens"]) == len(ctx_ids) and r["usage"]["completion_tokens"] == 0
    assert all(len(t) <= 2 for t in ch["logprobs"]["top_logprobs"][1:])

    # Chat logprobs in the chat format.
    c = client(url)
    chat = c.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_client_disconnect_cancels_generation(serve):
    url = serve()
    with http.stream(
        "POST",
        url + "/v1/completions",
        json={
            "model": "tiny",
            "prompt": "a",
            "max_tokens": 500,
            "ignore_eos": True,  # cannot end on its own before the client leaves
            "stream": True,
            "temperature": 1,
            "seed": 3,
        },
    ) as r:
        it = r.iter_lines()
        next(it)
        next(it)
    # closed after two events: the row is cancelled, long before 500 tokens
    assert wait_for(lambda: health(url)["cancelled_rows"] == 1), health(url)
    h = health(url)
    assert h["generated_tokens"] < 500 and h["active"] == 0 and h["disconnects"] == 1


def test_timeouts(serve):
    # 480 forced tokens (ignore_eos) take far longer than 0.02 s on any CPU, and the deadline is
    # checked on every decode step: the verdict depends on neither the machine nor the weights.
    url = serve(request_timeout_s=0.02)
    body = {
        "model": "tiny",
        "prompt": "a",
        "max_tokens": 480,
        "ignore_eos": True,
        "temperature": 1,
        "seed": 3,
    }
    r = http.post(url + "/v1/completions", json=body)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    # mid-stream: an error event, then [DONE]
    with http.stream("POST", url + "/v1/completions", json={**body, "stream": True}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.status_code == 200
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][len("data: ") :])["error"]["code"] == "timeout"


def test_health_openapi_and_page(serve):
    url = serve()
    spec = http.get(url + "/openapi.json").json()
    for path in (
        "/v1/models",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/feedback",
    ):
        assert path in spec["paths"]
    page = http.get(url + "/")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline


@pytest.mark.integration
def test_embeddings_with_minilm(serve):
    c = client(serve())
    out = c.embeddings.create(
        model="minilm-l6", input=["the yield statement", "yield in generators", "tax law"]
    )
    vecs = [d.embedding for d in out.data]  # the client asked for base64 and decoded it
    assert len(vecs) == 3 and len(vecs[0]) == 384
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    assert math.isclose(dot(vecs[0], vecs[0]), 1.0, rel_tol=1e-4)
    assert dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2])
    assert out.usage.prompt_tokens > 0
    floats = http.post(
        c.base_url.join("embeddings").__str__(),
        json={"model": "minilm-l6", "input": "the yield statement", "encoding_format": "float"},
    ).json()
    assert all(
        math.isclose(a, b, abs_tol=1e-6)
        for a, b in zip(floats["data"][0]["embedding"], vecs[0], strict=True)
    )
    with pytest.raises(openai.BadRequestError):
        c.embeddings.create(model="minilm-l6", input="x", dimensions=12)


def test_lm_eval_local_completions_scores_like_the_engine(serve, tiny_lm, tiny_engine):
    """lm-evaluation-harness's own client (local-completions) against this server."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    url = serve()
    lm = LocalCompletionsAPI(
        base_url=url + "/v1/completions",
        model="tiny",
        tokenizer=str(tiny_lm),
        tokenizer_backend="huggingface",
        max_retries=1,
    )
    reqs = [("The yield statement is used", " in generator functions"), ("Answer:", " yes")]
    got = lm.loglikelihood(
        [
            Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i)
            for i, r in enumerate(reqs)
        ]
    )
    for (g, g_greedy), (w, w_greedy) in zip(got, tiny_engine.loglikelihood(reqs), strict=True):
        assert math.isclose(g, w, rel_tol=1e-4, abs_tol=1e-4) and g_greedy == w_greedy


def test_alternatives_that_decode_to_the_same_text_are_all_kept():
    """Byte pieces of one character both decode to U+FFFD: chat keeps both, legacy the likelier."""
    from oficina.infer.engine import TokenLogprob
    from oficina.serve.logprobs import chat_logprobs, legacy_logprobs

    items = [TokenLogprob("\ufffd", 7, -0.5, [("\ufffd", -0.5), ("\ufffd", -1.5), ("a", -2.0)])]
    chat = chat_logprobs(items)["content"][0]["top_logprobs"]
    assert [(t["token"], t["logprob"]) for t in chat] == [
        ("\ufffd", -0.5),
        ("\ufffd", -1.5),
        ("a", -2.0),
    ]
    assert legacy_logprobs(items)["top_logprobs"] == [{"\ufffd": -0.5, "a": -2.0}]


def test_ignore_eos_and_min_tokens_fields(serve):
    """vLLM's length fields: ignore_eos runs to max_tokens; min_tokens above max_tokens is a 400."""
    url = serve()
    body = {"model": "tiny", "prompt": "a", "max_tokens": 30, "temperature": 0, "ignore_eos": True}
    r = http.post(url + "/v1/completions", json=body).json()
    assert r["usage"]["completion_tokens"] == 30 and r["choices"][0]["finish_reason"] == "length"
    chat = http.post(
        url + "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 25,
            "min_tokens": 25,
            "temperature": 0,
        },
    ).json()
    assert chat["usage"]["completion_tokens"] == 25
    bad = http.post(url + "/v1/completions", json={**body, "min_tokens": 31})
    assert bad.status_code == 400 and "min_tokens" in bad.json()["error"]["message"]
