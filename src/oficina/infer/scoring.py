"""The engine's scoring kernels: continuation log-likelihood and perplexity, each written once.

Callers go through ``Engine`` (``score_continuations``, ``loglikelihood``, ``text_nll``,
``perplexity``); these functions take that engine and use its ``model``, ``tokenizer``,
``encode`` and ``context_length``. Per-token log-probs of a sequence are the engine's own
``score_sequence`` / ``token_logprob``.

**Context/continuation split** (one rule, lm-evaluation-harness's ``_encode_pair``): trailing
whitespace of the context moves to the continuation; the context is encoded alone and
context + continuation together; the continuation's tokens are the joint encoding's tokens
past the context's own token count; the model reads context tokens + those tokens. Why this
rule and not encoding the two separately: the continuation is scored as the tokenizer splits
it inside real text (" yes" one token with its space, not "yes" after a dangling " "), and the
numbers equal lm-eval's (``tests/evals/test_eval_lm_eval.py`` checks that). An empty context
is the start token (BOS, else EOS) and the continuation is encoded alone.

Speed: the context is the expensive part (hundreds of tokens; an answer is one to four), so a
batch of contexts is run once (left padded), its KV cache is copied to one row per
(context, continuation), and only the continuation tokens go through the model again.

**Prefix cache** (``oficina.infer.prefix_cache``, the engine's, shared with generation): each
context starts from the longest run of its 64-token blocks already cached under the engine's
``model_hash`` (so an adapter never reads its base's keys and values), only the rest is run, and
its full blocks are stored. Contexts of one call that start alike (few-shot prompts with the
same examples) have the blocks they share run once, in a pass of their own, before the first
batch that needs them (later batches find them in the cache): without it a batch of eight prompts
with the same examples would compute them eight times. The numbers equal the uncached kernel's within
float rounding (``tests/infer/test_prefix_cache.py``). Perplexity does not use the cache.

**Perplexity** (one definition, used by ``oficina eval --perplexity`` and
``oficina quantize``): each text is encoded without special tokens and preceded by the start
token, so its first token is scored too; windows of ``min(window, context length)`` tokens
advance by ``stride`` (default half a window), every token is scored exactly once, each after
the first window with at least window - stride tokens of context; perplexity =
exp(total NLL / total scored tokens) over all texts (token-weighted, not a mean of per-text
perplexities). Empty or whitespace-only texts are skipped.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from oficina.errors import UserError
from oficina.infer.kv_slots import check_supported
from oficina.infer.prefix_cache import PrefixCache


@dataclass
class ContinuationScore:
    logprob: float  # sum of the continuation tokens' log-probabilities (nats)
    n_tokens: int
    greedy: bool  # every continuation token is the argmax
    end_logprob: float | None = None  # log p(end_id | context + continuation), when asked


def start_token(engine) -> int:
    """The token a text with no context is conditioned on: BOS, else EOS."""
    bos = engine.tokenizer.bos_token_id
    return bos if bos is not None else next(iter(sorted(engine.eos_ids)), 0)


def _plain(engine, text: str) -> list[int]:
    return list(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_pair(engine, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) by the one split rule (see the module docstring)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    if not context:
        return [start_token(engine)], _plain(engine, continuation)
    ctx_ids = engine.encode(context)
    return ctx_ids, engine.encode(context + continuation)[len(ctx_ids) :]


# ---------------------------------------------------------------------------- context passes


def _prefix_cache(engine) -> tuple[PrefixCache | None, str]:
    """The engine's prefix cache and its key for this model, when scoring may use them."""
    pc = getattr(engine, "prefix_cache", None)
    # the stored blocks are plain per-layer keys and values: full-attention layers only
    if pc is None or not pc.enabled or check_supported(engine.model.config):
        return None, ""
    return pc, engine.model_hash


def _shared_prefixes(ids: Sequence[Sequence[int]], block: int) -> list[int]:
    """For each context, how many of its leading tokens (whole blocks, at least one token left)
    another context of the same call starts with too: the part worth computing once."""
    out = [0] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    # in sorted order the longest common prefix of a sequence is with one of its neighbours
    for a, b in zip(order, order[1:], strict=False):
        x, y = ids[a], ids[b]
        m = min(len(x), len(y))
        lcp = next((k for k in range(m) if x[k] != y[k]), m)
        for i in (a, b):
            cap = (len(ids[i]) - 1) // block * block
            out[i] = max(out[i], min(lcp // block * block, cap))
    return out


def _read(cache, row: int, where: torch.Tensor) -> torch.Tensor:
    """Keys and values of ``row`` at cache positions ``where``: ``[layers, 2, heads, n, dim]``
    (a copy: the prefix cache keeps it)."""
    return torch.stack(
        [torch.stack([ly.keys[row][:, where], ly.values[row][:, where]]) for ly in cache.layers]
    )


def _context_pass(model, contexts: list[list[int]], pad_id: int, device, pc, key: str):
    """Run a batch of contexts, each after its longest cached prefix, and store their blocks.

    The cached prefixes (``P`` = the longest) are right-aligned in a past cache of ``P``
    positions and the rest of each context (``R`` = the longest rest) right-aligned after it;
    padding anywhere is masked and position ids count only real tokens, so every row sees what
    it would see alone. Returns (the model output, its logits for the last position and its
    cache; the ``[rows, P + R]`` attention mask of that cache).
    """
    hits = [pc.lookup(key, c) if pc is not None else (0, None) for c in contexts]
    P = max(p for p, _ in hits)
    R = max(len(c) - p for c, (p, _) in zip(contexts, hits, strict=True))
    if P + R > max(map(len, contexts)):
        # the prefixes would widen every row's past beyond the longest context (a hit beside a
        # longer miss): attending over and copying that costs more than the hits save
        hits = [(0, None)] * len(contexts)
        P, R = 0, max(map(len, contexts))
    ids = torch.full((len(contexts), R), pad_id, dtype=torch.long)
    mask = torch.zeros((len(contexts), P + R), dtype=torch.long)
    first = next((kv for _, kv in hits if kv is not None), None)
    if first is not None:  # the cached prefixes, right-aligned in P positions
        layers, _, heads, _, dim = first.shape
        kv_all = first.new_zeros((layers, 2, len(contexts), heads, P, dim))
    for r, (c, (p, kv)) in enumerate(zip(contexts, hits, strict=True)):
        ids[r, R - (len(c) - p) :] = torch.tensor(c[p:])
        mask[r, P - p : P] = 1
        mask[r, P + R - (len(c) - p) :] = 1
        if p:
            kv_all[:, :, r, :, P - p :] = kv
    past = None
    if first is not None:
        kv_all = kv_all.to(device)
        past = DynamicCache()
        for i in range(kv_all.shape[0]):
            past.update(kv_all[i, 0], kv_all[i, 1], i)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, P:]
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        past_key_values=past,
        use_cache=True,
        logits_to_keep=1,
    )
    if pc is not None:
        for r, (c, (p, _)) in enumerate(zip(contexts, hits, strict=True)):
            # cache position of each of the context's tokens: its cached part, then its rest
            where = torch.cat([torch.arange(P - p, P), torch.arange(P + R - (len(c) - p), P + R)])
            pc.store(key, c, lambda a, b, r=r, w=where: _read(out.past_key_values, r, w[a:b]))
    return out, mask


def _prime(model, pc: PrefixCache, key: str, prefixes: list[list[int]], pad_id: int, device):
    """Compute once, into the cache, the shared prefixes a batch's contexts would otherwise each
    compute (the first time a few-shot prompt's examples come): each distinct prefix not cached
    yet and not the start of a longer one."""
    todo = {tuple(p) for p in prefixes if p and pc.cached_tokens(key, p) < len(p)}
    todo = sorted(list(p) for p in todo if not any(q != p and q[: len(p)] == p for q in todo))
    if todo:
        _context_pass(model, todo, pad_id, device, pc, key)


def score_continuations(
    engine,
    contexts: Sequence[str],
    continuations: Sequence[Sequence[str]],
    batch_size: int = 8,
    max_rows: int = 32,
    end_id: int | None = None,
) -> tuple[list[list[ContinuationScore]], list[int], int]:
    """Log-likelihood of each continuation after its context, each context run once.

    ``end_id`` (a token, e.g. EOS) is read after every continuation too: its log-prob is each
    score's ``end_logprob`` (the continuation's own ``logprob``, ``n_tokens`` and ``greedy``
    leave it out). Returns (scores[i][j] for context i, continuation j; context token count of
    each context; how many contexts were cut on the left to fit the model's context length).
    """
    model, tok = engine.model, engine.tokenizer
    max_len = engine.context_length
    ctx_ids_all: list[list[int]] = []
    cont_ids_all: list[list[list[int]]] = []
    truncated = 0
    for context, conts in zip(contexts, continuations, strict=True):
        pairs = [encode_pair(engine, context, c) for c in conts]
        ctx_ids = pairs[0][0] if pairs else encode_pair(engine, context, "")[0]
        c_ids = [c for _, c in pairs]
        if any(len(c) == 0 for c in c_ids):
            raise UserError(
                f"an empty continuation cannot be scored (continuations: {list(conts)!r})"
            )
        if end_id is not None:
            c_ids = [[*c, end_id] for c in c_ids]
        longest = max((len(c) for c in c_ids), default=0)
        if longest >= max_len:
            raise UserError(
                f"a continuation of {longest} tokens does not fit the {max_len}-token context "
                f"of '{engine.name}'"
            )
        if len(ctx_ids) + longest > max_len:  # keep the end of the context, as lm-eval does
            ctx_ids = ctx_ids[-(max_len - longest) :]
            truncated += 1
        ctx_ids_all.append(ctx_ids)
        cont_ids_all.append(c_ids)

    n = len(ctx_ids_all)
    results: list[list[ContinuationScore]] = [[] for _ in range(n)]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else start_token(engine)
    pc, key = _prefix_cache(engine)
    shared = _shared_prefixes(ctx_ids_all, pc.block) if pc is not None else [0] * n
    # Longest contexts first: similar lengths share a batch, so little padding is computed. (Not
    # grouped by shared prefix: on the demo's similar-shot prompts, 7% of tokens shared, the
    # padding that grouping adds cost more than it saved; a prefix primed for one batch is
    # found in the cache by the later batches that share it.)
    order = sorted(range(n), key=lambda i: -len(ctx_ids_all[i]))
    device = next(model.parameters()).device
    with torch.inference_mode():
        for b0 in range(0, n, batch_size):
            batch = order[b0 : b0 + batch_size]
            if pc is not None and all(shared[i] for i in batch):  # else see _context_pass
                _prime(model, pc, key, [ctx_ids_all[i][: shared[i]] for i in batch], pad_id, device)
            out, mask = _context_pass(
                model, [ctx_ids_all[i] for i in batch], pad_id, device, pc, key
            )
            lp0 = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu()
            cache = out.past_key_values
            del out

            # First continuation token: read off the context's last position.
            partial: dict[tuple[int, int], tuple[float, bool]] = {}
            ends: dict[tuple[int, int], float] = {}
            rows: list[tuple[int, int, int]] = []  # (batch row, item, continuation) needing more
            for r, i in enumerate(batch):
                top = int(lp0[r].argmax())
                for j, c in enumerate(cont_ids_all[i]):
                    partial[(i, j)] = (float(lp0[r, c[0]]), top == c[0])
                    if len(c) > 1:
                        rows.append((r, i, j))

            # The rest: one row per (context, continuation), the context's cache copied to each.
            for k0 in range(0, len(rows), max_rows):
                chunk = rows[k0 : k0 + max_rows]
                m = max(len(cont_ids_all[i][j]) for _, i, j in chunk) - 1
                inp = torch.full((len(chunk), m), pad_id, dtype=torch.long)
                for q, (_, i, j) in enumerate(chunk):
                    c = cont_ids_all[i][j][:-1]
                    inp[q, : len(c)] = torch.tensor(c)
                src = torch.tensor([r for r, _, _ in chunk])
                c_mask = torch.cat([mask[src], torch.ones((len(chunk), m), dtype=torch.long)], 1)
                c_pos = mask[src].sum(-1, keepdim=True) + torch.arange(m).unsqueeze(0)
                c_cache = copy.deepcopy(cache) if k0 + max_rows < len(rows) else cache
                c_cache.reorder_cache(src.to(device))
                out = model(
                    input_ids=inp.to(device),
                    attention_mask=c_mask.to(device),
                    position_ids=c_pos.to(device),
                    past_key_values=c_cache,
                    use_cache=True,
                )
                lps = torch.log_softmax(out.logits.float(), dim=-1).cpu()
                for q, (_, i, j) in enumerate(chunk):
                    c = cont_ids_all[i][j]
                    tgt = torch.tensor(c[1:])
                    lp_rows = lps[q, : len(c) - 1]
                    tok = lp_rows.gather(1, tgt.unsqueeze(1)).squeeze(1)
                    hit = lp_rows.argmax(-1) == tgt
                    if end_id is not None:  # the end token: its own figure, not the answer's
                        ends[(i, j)] = float(tok[-1])
                        tok, hit = tok[:-1], hit[:-1]
                    lp, g0 = partial[(i, j)]
                    partial[(i, j)] = (lp + float(tok.sum()), g0 and bool(hit.all()))
                del out, lps, c_cache
            del cache
            end = int(end_id is not None)
            for i in batch:
                results[i] = [
                    ContinuationScore(
                        partial[(i, j)][0], len(c) - end, partial[(i, j)][1], ends.get((i, j))
                    )
                    for j, c in enumerate(cont_ids_all[i])
                ]
    return results, [len(c) for c in ctx_ids_all], truncated


def loglikelihood(
    engine, requests: Sequence[tuple[str, str]], batch_size: int = 8
) -> list[tuple[float, bool]]:
    """(context, continuation) pairs -> (sum of continuation logprobs, continuation is greedy).

    Pairs sharing a context (the answers of one question) are scored with one context pass.
    """
    groups: dict[str, list[int]] = {}
    for k, (ctx, _) in enumerate(requests):
        groups.setdefault(ctx, []).append(k)
    contexts = list(groups)
    conts = [[requests[k][1] for k in groups[c]] for c in contexts]
    scores, _, _ = score_continuations(engine, contexts, conts, batch_size=batch_size)
    out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
    for c, row in zip(contexts, scores, strict=True):
        for k, s in zip(groups[c], row, strict=True):
            out[k] = (s.logprob, s.greedy)
    return out


# ---------------------------------------------------------------------------- perplexity


def windows(n_ids: int, length: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows over ids[0..n_ids) scoring every position 1..n_ids-1 exactly once.

    Each (start, end, first_target): the model reads ids[start:end] and is scored on the
    targets first_target..end-1. The first window scores up to length-1 tokens; each later
    one moves ``stride`` tokens and keeps at least length-stride tokens of context.
    """
    out, pos = [], 1
    while pos < n_ids:
        end = min(n_ids, pos + (length - 1 if pos == 1 else stride))
        start = max(0, end - length)
        out.append((start, end, pos))
        pos = end
    return out


@dataclass
class PerplexityPlan:
    """What the perplexity of some texts scores: the texts' token ids cut into windows."""

    texts: list[str]  # the non-empty texts, in order
    token_ids: list[list[int]]  # per text: start token + the text's tokens
    window: int
    stride: int
    jobs: list[tuple[int, list[int], int]]  # (text index, window ids, first scored position)


def perplexity_plan(
    engine, texts: Sequence[str], window: int | None = 1024, stride: int | None = None
) -> PerplexityPlan:
    """The windows every perplexity runtime scores (PyTorch here, llama.cpp in quantize)."""
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise UserError("no non-empty text to compute perplexity on")
    length = min(engine.context_length, window or engine.context_length)
    stride = stride or max(1, length // 2)
    if not 0 < stride < length:
        raise UserError(f"perplexity stride must be between 1 and the window ({length}) - 1")
    start = start_token(engine)
    token_ids = [[start] + _plain(engine, t) for t in texts]
    jobs = [
        (t_i, ids[s:e], p - s)
        for t_i, ids in enumerate(token_ids)
        for s, e, p in windows(len(ids), length, stride)
    ]
    return PerplexityPlan(texts, token_ids, length, stride, jobs)


@dataclass
class TextNLL:
    """Negative log-likelihood of each text under the one perplexity definition."""

    nll: list[float]  # per text, nats
    tokens: list[int]  # scored tokens per text
    texts: list[str]
    window: int
    stride: int
    windows: int
    wall_s: float

    @property
    def perplexity(self) -> float:
        """exp(total NLL / total tokens): token-weighted over all texts."""
        return math.exp(sum(self.nll) / sum(self.tokens))


def text_nll(
    engine,
    texts: Sequence[str],
    window: int | None = 1024,
    stride: int | None = None,
    batch_tokens: int = 4096,
) -> TextNLL:
    """Score ``texts`` window by window (see the module docstring); batches of equal-ish length."""
    plan = perplexity_plan(engine, texts, window, stride)
    model = engine.model
    nll = [0.0] * len(plan.texts)
    tok = engine.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else start_token(engine)
    jobs = sorted(plan.jobs, key=lambda j: -len(j[1]))
    vocab = int(getattr(model.config, "vocab_size", 50000))
    # Keep the float32 logits of a batch under ~128 MB (B x T x V x 4 bytes; log-softmax doubles it).
    budget = max(1, min(batch_tokens, (128 << 20) // (4 * vocab)))
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    with torch.inference_mode():
        k = 0
        while k < len(jobs):
            T = len(jobs[k][1])
            bs = max(1, budget // T)
            batch = jobs[k : k + bs]
            k += bs
            ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), T), dtype=torch.long)
            for r, (_, w, _) in enumerate(batch):  # right padding: positions start at 0
                ids[r, : len(w)] = torch.tensor(w)
                mask[r, : len(w)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            lp = torch.log_softmax(logits.float(), -1).cpu()
            for r, (t_i, w, first) in enumerate(batch):
                tgt = torch.tensor(w[first:])
                nll[t_i] -= float(lp[r, first - 1 : len(w) - 1].gather(1, tgt.unsqueeze(1)).sum())
            del logits, lp
    return TextNLL(
        nll=nll,
        tokens=[len(ids) - 1 for ids in plan.token_ids],
        texts=plan.texts,
        window=plan.window,
        stride=plan.stride,
        windows=len(plan.jobs),
        wall_s=time.perf_counter() - t0,
    )
