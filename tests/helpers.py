"""Helpers shared by tests in several folders (import as ``from helpers import ...``: pytest puts
tests/ on the path through the root conftest).

``nll_naive``: the sliding-window perplexity by its definition, one token at a time, sharing no
code with ``oficina.infer.scoring`` (the engine's kernel) — tests compare that kernel, and every
verb that reports a perplexity, with it.
"""

from __future__ import annotations

import math

import torch


def nll_naive(model, tok, text: str, window: int, stride: int) -> tuple[float, int]:
    """(NLL, tokens) of one text: each token alone, from the context its window gives it.

    Token t (1-based after BOS) of the first window (t < window) sees ids[0:t]; a later token
    falls in the window ending at window + k*stride (the first such end >= t + 1, capped at the
    text's end), which starts ``window`` tokens before that end.
    """
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    nll = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            if t < window:
                start = 0
            else:
                k = math.ceil((t + 1 - window) / stride)
                start = min(len(ids), window + k * stride) - window
            logits = model(torch.tensor([ids[start:t]])).logits[0, -1].float()
            nll -= float(torch.log_softmax(logits, -1)[ids[t]])
    return nll, len(ids) - 1
