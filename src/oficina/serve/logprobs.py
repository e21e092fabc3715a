"""Log-probabilities in the OpenAI formats, and exact scoring of prompts given as token ids.

``legacy_logprobs`` builds the /v1/completions object (tokens, token_logprobs, top_logprobs,
text_offset); ``chat_logprobs`` the /v1/chat/completions one (content: token, logprob, bytes,
top_logprobs). ``score_ids`` runs one forward pass over token ids exactly as a client sent them:
lm-eval's ``local-completions`` sends context + continuation ids with ``echo`` and
``logprobs`` and slices the answer by token position, so re-tokenizing decoded text (which can
merge differently at the boundary) would shift its slice.
"""

from __future__ import annotations

import secrets

import torch


def legacy_logprobs(items: list, start_offset: int = 0) -> dict:
    """Engine TokenLogprobs -> the /v1/completions logprobs object (tokens, offsets...)."""
    tokens, lps, tops, offsets = [], [], [], []
    pos = start_offset
    for t in items:
        tokens.append(t.token)
        lps.append(t.logprob)
        tops.append(_as_dict(t.top) if t.logprob is not None else None)
        offsets.append(pos)
        pos += len(t.token)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def _as_dict(top: list[tuple[str, float]]) -> dict[str, float]:
    # The legacy format is a dict keyed by token text; when two ids share a text, keep the
    # likelier one (the list is sorted), as vLLM does.
    out: dict[str, float] = {}
    for k, v in top:
        out.setdefault(k, v)
    return out


def chat_logprobs(items: list | None) -> dict | None:
    if items is None:
        return None
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": list(t.token.encode("utf-8")),
                "top_logprobs": [
                    {"token": k, "logprob": v, "bytes": list(k.encode("utf-8"))} for k, v in t.top
                ],
            }
            for t in items
        ]
    }


def score_ids(
    engine, ids_list: list[list[int]], top: int, add_next: bool, temperature: float, seed
):
    """Exact scoring of given token ids (echo, by ``Engine.score_ids``), plus one greedy or
    sampled token if asked."""
    results = []
    for ids in ids_list:
        items, row = engine.score_ids(ids, top)
        new: list = []
        if add_next:
            if temperature > 0:
                g = torch.Generator().manual_seed(
                    seed if seed is not None else secrets.randbits(63)
                )
                tid = int(torch.multinomial(torch.softmax(row / temperature, -1), 1, generator=g))
            else:
                tid = int(torch.argmax(row))
            new.append(engine.token_logprob(row, tid, top))
        results.append((items, new))
    return results
