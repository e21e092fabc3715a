"""The generation routes: ``POST /v1/completions`` and ``POST /v1/chat/completions``.

Each request is checked (model, prompt length against the context and ``max_tokens``) before
it takes an admission slot, then becomes one scheduler ``Job`` with a prompt and sampling
parameters per choice. ``"stream": true`` answers with server-sent events (see
``ServerState.sse_events``); otherwise one JSON body. A completion whose prompt is token ids,
with ``echo``, ``logprobs`` and at most one new token, is lm-eval's loglikelihood request: those
ids are scored exactly as sent (``score_ids``) instead of being generated from.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from fastapi import APIRouter, Depends, Request

from oficina.errors import UserError
from oficina.serve import protocol
from oficina.serve.errors import APIError
from oficina.serve.limits import Slot
from oficina.serve.logprobs import chat_logprobs, legacy_logprobs, score_ids
from oficina.serve.protocol import ChatCompletionRequest, CompletionRequest
from oficina.serve.routes import RESPONSES
from oficina.serve.scheduler import Job
from oficina.serve.state import ServerState, server_state

router = APIRouter()


def completion_prompts(engine, req: CompletionRequest) -> list[tuple[str, list[int] | None]]:
    """The request's prompts as (text, token ids or None): a text, texts, ids or lists of ids."""
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


def _include_usage(req) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


@router.post("/completions", tags=["generation"], responses=RESPONSES)
async def completions(
    req: CompletionRequest, request: Request, state: ServerState = Depends(server_state)
):
    state.requests["completions"] += 1
    engine = state.engine(req.model)
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
    max_news = [state.max_new_tokens(engine, n, req.max_tokens, None) for n in counts]
    created, rid = int(time.time()), "cmpl-" + secrets.token_hex(12)

    def body(choices: list[dict], usage: dict | None = None) -> dict:
        return protocol.completion(rid, created, req.model, choices, usage)

    async def handler(slot: Slot):
        if exact:
            ids_list = [ids for _, ids in prompts for _ in range(req.n)]
            scored = await state.call(
                lambda: score_ids(
                    engine, ids_list, req.logprobs, max_news[0] == 1, req.temperature, req.seed
                ),
                request,
            )
            choices, completion_tokens = [], 0
            for k, ((items, new), (text, _)) in enumerate(
                zip(scored, [p for p in prompts for _ in range(req.n)], strict=True)
            ):
                completion_tokens += len(new)
                choices.append(
                    protocol.completion_choice(
                        k,
                        text + "".join(t.token for t in new),
                        legacy_logprobs(items + new),
                        "length",
                    )
                )
            return body(choices, protocol.usage(sum(counts), completion_tokens))
        texts, params = [], []
        for i, (text, _) in enumerate(prompts):
            for j in range(req.n):
                texts.append(text)
                params.append(
                    state.sampling(req, max_news[i], req.logprobs, req.echo and want_lp, j)
                )
        job = Job(
            loop=asyncio.get_running_loop(),
            model=req.model,
            prompts=texts,
            params=params,
            stream=req.stream,
            deadline=time.monotonic() + state.cfg.request_timeout_s,
        )

        def choice_logprobs(c) -> dict | None:
            if not want_lp:
                return None
            items = (c.prompt_logprobs or []) if req.echo else []
            return legacy_logprobs(items + (c.logprobs or []))

        def usage(comps: list) -> dict:
            return protocol.usage(sum(counts), sum(c.completion_tokens for c in comps))

        if not req.stream:
            _, comps = await state.run_job(job, request)
            choices = [
                protocol.completion_choice(
                    k,
                    (texts[k] if req.echo else "") + c.text,
                    choice_logprobs(c),
                    c.finish_reason,
                )
                for k, c in enumerate(comps)
            ]
            return body(choices, usage(comps))

        events = state.sse_events(
            job,
            body,
            head=[protocol.completion_choice(k, t) for k, t in enumerate(texts) if req.echo],
            delta_choice=protocol.completion_choice,
            final_choice=lambda k, c: protocol.completion_choice(
                k, "", choice_logprobs(c), c.finish_reason
            ),
            usage=usage if _include_usage(req) else None,
        )
        return state.stream_response(job, slot, events)

    return await state.admitted(handler)


def chat_prompt(engine, req: ChatCompletionRequest) -> str:
    """The messages rendered with the model's chat template (``developer`` counts as system)."""
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in req.messages
    ]
    try:
        return engine.render_chat(messages)
    except UserError as e:
        raise APIError(400, str(e), param="messages") from None
    except Exception as e:  # jinja templates raise their own errors ("roles must alternate")
        raise APIError(
            400, f"the model's chat template rejected the messages: {e}", param="messages"
        ) from None


@router.post("/chat/completions", tags=["generation"], responses=RESPONSES)
async def chat_completions(
    req: ChatCompletionRequest, request: Request, state: ServerState = Depends(server_state)
):
    state.requests["chat"] += 1
    engine = state.engine(req.model)
    prompt = chat_prompt(engine, req)
    n_prompt = await asyncio.to_thread(engine.count_tokens, prompt)
    asked = req.max_completion_tokens or req.max_tokens
    max_new = state.max_new_tokens(engine, n_prompt, asked, state.cfg.default_max_tokens)
    top = (req.top_logprobs or 0) if req.logprobs else None
    created, rid = int(time.time()), "chatcmpl-" + secrets.token_hex(12)

    def usage(comps: list) -> dict:
        return protocol.usage(n_prompt, sum(c.completion_tokens for c in comps))

    async def handler(slot: Slot):
        params = [state.sampling(req, max_new, top, False, j) for j in range(req.n)]
        job = Job(
            loop=asyncio.get_running_loop(),
            model=req.model,
            prompts=[prompt] * req.n,
            params=params,
            stream=req.stream,
            deadline=time.monotonic() + state.cfg.request_timeout_s,
        )
        if not req.stream:
            _, comps = await state.run_job(job, request)
            choices = [
                protocol.chat_choice(k, c.text, chat_logprobs(c.logprobs), c.finish_reason)
                for k, c in enumerate(comps)
            ]
            return protocol.chat_completion(rid, created, req.model, choices, usage(comps))

        def chunk(choices: list[dict], usage: dict | None = None) -> dict:
            return protocol.chat_chunk(rid, created, req.model, choices, usage)

        events = state.sse_events(
            job,
            chunk,
            head=[
                protocol.chat_delta(k, {"role": "assistant", "content": ""}) for k in range(req.n)
            ],
            delta_choice=lambda k, d: protocol.chat_delta(k, {"content": d}),
            final_choice=lambda k, c: protocol.chat_delta(
                k, {}, chat_logprobs(c.logprobs), c.finish_reason
            ),
            usage=usage if _include_usage(req) else None,
        )
        return state.stream_response(job, slot, events)

    return await state.admitted(handler)
