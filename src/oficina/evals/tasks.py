"""Evaluation tasks on a generation engine: classification, multiple choice, generation, perplexity.

Every task takes an engine (``oficina.infer.engine.Engine``) and uses only its ``.model`` and
``.tokenizer`` (log-likelihood scoring and perplexity, done here so the prompt is run once),
``.generate`` (generation tasks) and ``.context_length``. An engine without ``.model`` (a
remote one) is scored through its ``.loglikelihood``.

Classification and multiple choice score each answer the way lm-evaluation-harness does: the
log-likelihood of the continuation ``" " + answer`` after the rendered prompt, argmax. The
prompt is the expensive part (hundreds of tokens; an answer is one to four), so a batch of
prompts is run once, its KV cache is copied to one row per (prompt, answer), and only the
answer tokens go through the model a second time. With five labels that is ~5x less compute
than scoring each (prompt, answer) pair from scratch, with the same numbers.

Each task returns a dict with the predictions, a per-item score (so two runs can be compared
with a paired bootstrap), the metrics with bootstrap confidence intervals, prompt token counts
(few-shot and RAG prompts cost per request) and latency.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from oficina.errors import UserError
from oficina.evals import metrics as M

Fewshot = None | str | Sequence[dict] | Callable[[dict], Sequence[dict]]


# ---------------------------------------------------------------------------- prompts


def _format(template: str, row: dict, text_field: str) -> str:
    fields = dict(row)
    if text_field in row:
        fields.setdefault("text", row[text_field])
    try:
        return template.format(**fields)
    except KeyError as e:
        raise UserError(
            f"the prompt template names a field {e} that row {row.get('id', '?')!r} does not have "
            f"(fields: {', '.join(sorted(row))})"
        ) from None


def render_prompt(
    template: str,
    row: dict,
    fewshot: Fewshot = None,
    *,
    text_field: str = "text",
    answer_field: str = "label",
    delimiter: str = " ",
    example_sep: str = "\n\n",
) -> str:
    """The prompt for one row: solved examples (if any), then the row's own rendered template.

    ``fewshot`` is None (zero-shot), a literal prefix string, a list of example rows (the same
    for every query), or a function row -> examples (per-query selection, e.g. by similarity).
    An example renders as ``template(example) + delimiter + example[answer_field]`` — the same
    layout lm-evaluation-harness uses (``target_delimiter`` " ", ``fewshot_delimiter`` "\\n\\n").
    """
    query = _format(template, row, text_field)
    if fewshot is None:
        return query
    if isinstance(fewshot, str):
        return fewshot + query
    examples = fewshot(row) if callable(fewshot) else fewshot
    shots = [
        _format(template, ex, text_field) + delimiter + str(ex[answer_field]) for ex in examples
    ]
    return example_sep.join([*shots, query])


# ---------------------------------------------------------------------------- log-likelihood


@dataclass
class ContinuationScore:
    logprob: float  # sum of the continuation tokens' log-probabilities (nats)
    n_tokens: int
    greedy: bool  # every continuation token is the argmax


def _encode(tok, text: str, special: bool = True) -> list[int]:
    """Token ids; special tokens (BOS) as the tokenizer adds them, unless the text has them."""
    if special:
        bos = getattr(tok, "bos_token", None)
        special = not (bos and text.startswith(bos))
    return list(tok(text, add_special_tokens=special)["input_ids"])


def _split_pair(tok, context: str, cont: str, ctx_ids: list[int]) -> list[int]:
    """The continuation's tokens as lm-evaluation-harness gets them: encode context+continuation
    and cut at the context's length (falls back to encoding the continuation alone if the
    tokenizer merged across the boundary)."""
    whole = _encode(tok, context + cont)
    if len(whole) > len(ctx_ids) and whole[: len(ctx_ids)] == ctx_ids:
        return whole[len(ctx_ids) :]
    return _encode(tok, cont, special=False)


def _prefix_token(tok) -> int:
    for t in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
        if t is not None:
            return t
    return 0


def _context_length(engine) -> int:
    n = getattr(engine, "context_length", None)
    if n:
        return int(n)
    cfg = getattr(getattr(engine, "model", None), "config", None)
    return int(getattr(cfg, "max_position_embeddings", 2048) or 2048)


def _forward_last(model, input_ids, attention_mask, position_ids):
    """One forward over a left-padded batch: (log-probs at the last position, KV cache)."""
    import torch

    kwargs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
    )
    try:
        out = model(**kwargs, logits_to_keep=1)
    except TypeError:  # a model without logits_to_keep
        out = model(**kwargs)
    logits = out.logits[:, -1, :].float()
    return torch.log_softmax(logits, dim=-1), out.past_key_values


def score_continuations(
    engine,
    contexts: Sequence[str],
    continuations: Sequence[Sequence[str]],
    batch_size: int = 8,
    max_rows: int = 32,
) -> tuple[list[list[ContinuationScore]], list[int], int]:
    """Log-likelihood of each continuation after its context, the prompt run once per context.

    Returns (scores[i][j] for context i, continuation j; prompt token count of each context;
    how many contexts had to be cut on the left to fit the model's context length).
    """
    model = getattr(engine, "model", None)
    tok = getattr(engine, "tokenizer", None)
    if model is None or tok is None:
        return _score_via_engine(engine, contexts, continuations)
    import torch

    n = len(contexts)
    max_len = _context_length(engine)
    ctx_ids_all: list[list[int]] = []
    cont_ids_all: list[list[list[int]]] = []
    truncated = 0
    for context, conts in zip(contexts, continuations, strict=True):
        # Trailing spaces belong to the continuation (as lm-eval does) so " A" stays one token.
        stripped = context.rstrip()
        moved = context[len(stripped) :]
        ctx_ids = _encode(tok, stripped) if stripped else []
        if not ctx_ids:
            ctx_ids = [_prefix_token(tok)]
        c_ids = [_split_pair(tok, stripped, moved + c, ctx_ids) for c in conts]
        if any(len(c) == 0 for c in c_ids):
            raise UserError(f"an empty answer cannot be scored (answers: {list(conts)!r})")
        longest = max((len(c) for c in c_ids), default=0)
        if len(ctx_ids) + longest > max_len:
            ctx_ids = ctx_ids[-(max_len - longest) :]
            truncated += 1
        ctx_ids_all.append(ctx_ids)
        cont_ids_all.append(c_ids)

    results: list[list[ContinuationScore]] = [[] for _ in range(n)]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else _prefix_token(tok)
    # Longest prompts first: similar lengths share a batch, so little padding is computed.
    order = sorted(range(n), key=lambda i: -len(ctx_ids_all[i]))
    device = next(model.parameters()).device
    with torch.inference_mode():
        for b0 in range(0, n, batch_size):
            batch = order[b0 : b0 + batch_size]
            P = max(len(ctx_ids_all[i]) for i in batch)
            ids = torch.full((len(batch), P), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), P), dtype=torch.long)
            for r, i in enumerate(batch):
                c = ctx_ids_all[i]
                ids[r, P - len(c) :] = torch.tensor(c)
                mask[r, P - len(c) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            lp0, cache = _forward_last(model, ids.to(device), mask.to(device), pos.to(device))
            lp0 = lp0.cpu()

            # First continuation token: read off the prompt's last position.
            partial: dict[tuple[int, int], tuple[float, bool]] = {}
            rows: list[tuple[int, int, int]] = []  # (batch row, item, continuation) needing more
            for r, i in enumerate(batch):
                top = int(lp0[r].argmax())
                for j, c in enumerate(cont_ids_all[i]):
                    partial[(i, j)] = (float(lp0[r, c[0]]), top == c[0])
                    if len(c) > 1:
                        rows.append((r, i, j))

            # The rest: one row per (prompt, continuation), the prompt's cache copied to each.
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
                    s = float(lp_rows.gather(1, tgt.unsqueeze(1)).sum())
                    g = bool((lp_rows.argmax(-1) == tgt).all())
                    lp, g0 = partial[(i, j)]
                    partial[(i, j)] = (lp + s, g0 and g)
                del out, lps, c_cache
            del cache
            for i in batch:
                results[i] = [
                    ContinuationScore(partial[(i, j)][0], len(c), partial[(i, j)][1])
                    for j, c in enumerate(cont_ids_all[i])
                ]
    return results, [len(c) for c in ctx_ids_all], truncated


def _score_via_engine(engine, contexts, continuations):
    pairs = [(c, x) for c, xs in zip(contexts, continuations, strict=True) for x in xs]
    out = engine.loglikelihood(pairs)
    count = getattr(engine, "count_tokens", lambda s: len(s.split()))
    results, k = [], 0
    for xs in continuations:
        results.append(
            [ContinuationScore(out[k + j][0], count(x), out[k + j][1]) for j, x in enumerate(xs)]
        )
        k += len(xs)
    return results, [count(c) for c in contexts], 0


def loglikelihood_naive(model, tok, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
    """Reference scorer: each (context, continuation) run whole, one at a time, no padding.

    Slow; kept to check ``score_continuations`` (and any engine) against.
    """
    import torch

    out = []
    with torch.inference_mode():
        for context, cont in pairs:
            ctx_ids = _encode(tok, context) or [_prefix_token(tok)]
            c_ids = _split_pair(tok, context, cont, ctx_ids)
            ids = torch.tensor([ctx_ids + c_ids])
            lp = torch.log_softmax(model(ids).logits[0].float(), -1)
            tgt = torch.tensor(c_ids)
            rows = lp[len(ctx_ids) - 1 : len(ctx_ids) - 1 + len(c_ids)]
            out.append(
                (
                    float(rows.gather(1, tgt.unsqueeze(1)).sum()),
                    bool((rows.argmax(-1) == tgt).all()),
                )
            )
    return out


def _choose(scores: list[ContinuationScore], answers: Sequence[str], normalize: str) -> int:
    if normalize == "none":
        vals = [s.logprob for s in scores]
    elif normalize == "tokens":
        vals = [s.logprob / s.n_tokens for s in scores]
    elif normalize == "chars":  # lm-eval's acc_norm: divided by the answer's length in characters
        vals = [s.logprob / max(1, len(a)) for s, a in zip(scores, answers, strict=True)]
    else:
        raise UserError(f"normalize must be none, tokens or chars, not {normalize!r}")
    return max(range(len(vals)), key=lambda k: vals[k])


def _prompt_stats(counts: list[int]) -> dict:
    if not counts:
        return {"mean": 0.0, "max": 0, "total": 0}
    return {"mean": sum(counts) / len(counts), "max": max(counts), "total": sum(counts)}


def _timing(wall: float, n: int, tokens: int, batch_size: int) -> dict:
    return {
        "wall_s": wall,
        "latency_s_per_item": wall / n if n else 0.0,
        "items_per_s": n / wall if wall > 0 else 0.0,
        "prompt_tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "batch_size": batch_size,
    }


def _flat(res: dict) -> dict:
    """Headline inference costs also as top-level keys (what the ladder and reports read)."""
    res["prompt_tokens_mean"] = res["prompt_tokens"]["mean"]
    res["latency_s_per_item"] = res["timing"]["latency_s_per_item"]
    res["tokens_per_s"] = res["timing"].get(
        "generated_tokens_per_s", res["timing"]["prompt_tokens_per_s"]
    )
    return res


def _score_rows(engine, rows, template, shots, conts, text_field, answer_field, delimiter,
                batch_size):  # fmt: skip
    """Render each row's prompt and score its continuations:
    (scores, prompt tokens per row, truncated prompts, wall seconds)."""
    prompts = [
        render_prompt(
            template,
            r,
            shots,
            text_field=text_field,
            answer_field=answer_field,
            delimiter=delimiter,
        )  # fmt: skip
        for r in rows
    ]
    t0 = time.perf_counter()
    scores, n_prompt, truncated = score_continuations(engine, prompts, conts, batch_size=batch_size)
    return scores, n_prompt, truncated, time.perf_counter() - t0


def _choice_result(rows, scores, per_item, n_prompt, truncated, wall, batch_size, alpha,
                   normalize) -> dict:  # fmt: skip
    """The keys classification and multiple choice report alike."""
    return {
        "n": len(rows),
        "ids": [r.get("id", k) for k, r in enumerate(rows)],
        "per_item": per_item,
        "scores": [[s.logprob for s in row] for row in scores],
        "alpha": alpha,
        "normalize": normalize,
        "prompt_tokens": _prompt_stats(n_prompt),
        "prompt_tokens_per_item": n_prompt,
        "truncated_prompts": truncated,
        "timing": _timing(wall, len(rows), sum(n_prompt), batch_size),
    }


# ---------------------------------------------------------------------------- classification


def classify(
    engine,
    rows: Sequence[dict],
    labels: Sequence[str],
    template: str,
    fewshot: Fewshot = None,
    *,
    text_field: str = "text",
    label_field: str = "label",
    normalize: str = "none",
    delimiter: str = " ",
    batch_size: int = 8,
    bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """Zero-/few-shot classification by the log-likelihood of each label after the prompt.

    Returns predictions, golds, ids, per_item (1 if correct), scores (log-prob of each label),
    accuracy and macro_f1 with ``ci`` (bootstrap intervals), per_label_f1, confusion,
    prompt_tokens (mean/max/total, and per item) and timing (wall, latency per item, tokens/s).
    """
    labels = [str(x) for x in labels]
    if len(labels) < 2:
        raise UserError("classification needs at least two labels")
    bad = [r.get("id", k) for k, r in enumerate(rows) if str(r.get(label_field)) not in labels]
    if bad:
        raise UserError(
            f"{len(bad)} row(s) have a {label_field!r} that is not one of the labels "
            f"{labels} (first: {bad[0]!r})"
        )
    answers = [delimiter + lab for lab in labels]
    scores, n_prompt, truncated, wall = _score_rows(
        engine, rows, template, fewshot, [answers] * len(rows), text_field, label_field,
        delimiter, batch_size,
    )  # fmt: skip
    preds = [labels[_choose(s, labels, normalize)] for s in scores]
    golds = [str(r[label_field]) for r in rows]
    per_item = [float(p == g) for p, g in zip(preds, golds, strict=True)]
    acc = M.with_ci(per_item, n=bootstrap, alpha=alpha, seed=seed)
    pairs = list(zip(preds, golds, strict=True))
    f1 = M.with_ci(pairs, M.macro_f1_stat(labels), n=bootstrap, alpha=alpha, seed=seed)
    return _flat(
        {
            "task_type": "classification",
            "labels": labels,
            "predictions": preds,
            "golds": golds,
            "accuracy": acc["value"],
            "macro_f1": f1["value"],
            "ci": {"accuracy": acc["ci"], "macro_f1": f1["ci"]},
            "per_label_f1": M.per_label_f1(preds, golds, labels),
            "confusion": M.confusion(preds, golds, labels),
            **_choice_result(
                rows, scores, per_item, n_prompt, truncated, wall, batch_size, alpha, normalize
            ),
        }
    )


# ---------------------------------------------------------------------------- multiple choice


def multiple_choice(
    engine,
    rows: Sequence[dict],
    template: str,
    fewshot: Fewshot = None,
    *,
    choices_field: str = "choices",
    answer_field: str = "answer",
    text_field: str = "text",
    normalize: str = "none",
    delimiter: str = " ",
    batch_size: int = 8,
    bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """Each row has its own choices; the answer is an index or one of the choices' text.

    Reports ``accuracy`` (under ``normalize``) and, for comparison with lm-evaluation-harness,
    ``acc`` (raw sums) and ``acc_norm`` (divided by the choice's length in characters).
    """
    golds: list[int] = []
    for k, r in enumerate(rows):
        ch = r.get(choices_field)
        if not isinstance(ch, list) or len(ch) < 2:
            raise UserError(f"row {r.get('id', k)!r}: {choices_field!r} must list 2+ choices")
        a = r.get(answer_field)
        if isinstance(a, bool) or not isinstance(a, int | str):
            raise UserError(
                f"row {r.get('id', k)!r}: {answer_field!r} must be an index or a choice"
            )
        if isinstance(a, str):
            if a not in ch:
                raise UserError(f"row {r.get('id', k)!r}: answer {a!r} is not one of its choices")
            a = ch.index(a)
        if not 0 <= a < len(ch):
            raise UserError(f"row {r.get('id', k)!r}: answer index {a} out of range")
        golds.append(a)

    shots = fewshot
    if fewshot is not None and not isinstance(fewshot, str):
        # Examples carry their answer as text: resolve an index into the choice.
        def _resolve(ex: dict) -> dict:
            a = ex.get(answer_field)
            if isinstance(a, int) and isinstance(ex.get(choices_field), list):
                ex = {**ex, answer_field: ex[choices_field][a]}
            return ex

        shots = (
            (lambda row: [_resolve(e) for e in fewshot(row)])
            if callable(fewshot)
            else [_resolve(e) for e in fewshot]
        )
    conts = [[delimiter + str(c) for c in r[choices_field]] for r in rows]
    scores, n_prompt, truncated, wall = _score_rows(
        engine, rows, template, shots, conts, text_field, answer_field, delimiter, batch_size
    )
    choice_text = [[str(c) for c in r[choices_field]] for r in rows]
    pred_sel = [_choose(s, ch, normalize) for s, ch in zip(scores, choice_text, strict=True)]
    pred_raw = [_choose(s, ch, "none") for s, ch in zip(scores, choice_text, strict=True)]
    pred_chr = [_choose(s, ch, "chars") for s, ch in zip(scores, choice_text, strict=True)]
    per_item = [float(p == g) for p, g in zip(pred_sel, golds, strict=True)]
    raw_items = [float(p == g) for p, g in zip(pred_raw, golds, strict=True)]
    chr_items = [float(p == g) for p, g in zip(pred_chr, golds, strict=True)]
    acc = M.with_ci(per_item, n=bootstrap, alpha=alpha, seed=seed)
    acc_raw = M.with_ci(raw_items, n=bootstrap, alpha=alpha, seed=seed)
    acc_chr = M.with_ci(chr_items, n=bootstrap, alpha=alpha, seed=seed)
    return _flat(
        {
            "task_type": "multiple_choice",
            "predictions": pred_sel,
            "golds": golds,
            "accuracy": acc["value"],
            "acc": acc_raw["value"],
            "acc_norm": acc_chr["value"],
            "ci": {"accuracy": acc["ci"], "acc": acc_raw["ci"], "acc_norm": acc_chr["ci"]},
            **_choice_result(
                rows, scores, per_item, n_prompt, truncated, wall, batch_size, alpha, normalize
            ),
        }
    )


# ---------------------------------------------------------------------------- generation


@dataclass
class _Sampling:
    """Stand-in with SamplingParams' fields, used only if the engine module is missing."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: list | None = None
    seed: int | None = None
    logprobs: int | None = None
    echo: bool = False


def sampling_params(**kw):
    try:
        from oficina.infer.engine import SamplingParams
    except ImportError:
        return _Sampling(**kw)
    return SamplingParams(**kw)


def _references(row: dict, field: str) -> list[str]:
    ref = row.get(field)
    if isinstance(ref, str):
        return [ref]
    if isinstance(ref, list) and ref and all(isinstance(x, str) for x in ref):
        return ref
    raise UserError(
        f"row {row.get('id', '?')!r}: {field!r} must be a reference answer or a list of them"
    )


def _cut_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        k = text.find(s)
        if s and k != -1:
            cut = min(cut, k)
    return text[:cut]


def generate_task(
    engine,
    rows: Sequence[dict],
    template: str | None = None,
    fewshot: Fewshot = None,
    *,
    prompt_field: str = "prompt",
    reference_field: str = "answer",
    text_field: str = "text",
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
    delimiter: str = " ",
    batch_size: int = 8,
    bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """Greedy generation scored against references: exact match, token F1, ROUGE-L.

    The prompt is ``template`` rendered with the row (or the row's ``prompt_field`` when no
    template is given). The generated text is cut at the first stop string and stripped.
    """
    refs = [_references(r, reference_field) for r in rows]
    if template is None:
        template = "{" + prompt_field + "}"
    shots = fewshot
    if fewshot is not None and not isinstance(fewshot, str):

        def _first(ex: dict) -> dict:
            return {**ex, reference_field: _references(ex, reference_field)[0]}

        shots = (
            (lambda row: [_first(e) for e in fewshot(row)])
            if callable(fewshot)
            else [_first(e) for e in fewshot]
        )
    prompts = [
        render_prompt(
            template,
            r,
            shots,
            text_field=text_field,
            answer_field=reference_field,
            delimiter=delimiter,
        )
        for r in rows
    ]
    params = sampling_params(max_new_tokens=max_new_tokens, temperature=0.0, stop=list(stop))
    outputs: list[str] = []
    n_prompt: list[int] = []
    n_gen = 0
    t0 = time.perf_counter()
    for b0 in range(0, len(prompts), batch_size):
        done = engine.generate(prompts[b0 : b0 + batch_size], params)
        for c in done:
            outputs.append(_cut_stop(c.text, stop).strip())
            n_prompt.append(int(c.prompt_tokens))
            n_gen += int(c.completion_tokens)
    wall = time.perf_counter() - t0
    em = [M.exact_match(o, r) for o, r in zip(outputs, refs, strict=True)]
    f1 = [M.token_f1(o, r) for o, r in zip(outputs, refs, strict=True)]
    rl = [M.rouge_l(o, r) for o, r in zip(outputs, refs, strict=True)]
    res = {
        name: M.with_ci(v, n=bootstrap, alpha=alpha, seed=seed)
        for name, v in (("exact_match", em), ("token_f1", f1), ("rouge_l", rl))
    }
    timing = _timing(wall, len(rows), sum(n_prompt), batch_size)
    timing["generated_tokens"] = n_gen
    timing["generated_tokens_per_s"] = n_gen / wall if wall > 0 else 0.0
    return _flat(
        {
            "task_type": "generation",
            "n": len(rows),
            "ids": [r.get("id", k) for k, r in enumerate(rows)],
            "predictions": outputs,
            "references": refs,
            "per_item": em,
            "per_item_scores": {"exact_match": em, "token_f1": f1, "rouge_l": rl},
            **{k: v["value"] for k, v in res.items()},
            "ci": {k: v["ci"] for k, v in res.items()},
            "alpha": alpha,
            "prompt_tokens": _prompt_stats(n_prompt),
            "prompt_tokens_per_item": n_prompt,
            "timing": timing,
        }
    )


# ---------------------------------------------------------------------------- perplexity


def _windows(n_ids: int, length: int, stride: int) -> list[tuple[int, int, int]]:
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


def perplexity_details(
    engine_or_model,
    texts: Sequence[str],
    *,
    tokenizer=None,
    max_length: int | None = 1024,
    stride: int | None = None,
    batch_tokens: int = 4096,
    bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """Token-level perplexity of held-out texts, with a sliding window over the context length.

    Each text is scored on its own, preceded by the BOS (else EOS) token so its first token is
    scored too. Windows are ``min(context length, max_length)`` tokens long and advance by
    ``stride`` (default half a window), so every token after the first window is predicted
    from at least half a window of context. Also reports bits per UTF-8 byte (comparable across
    tokenizers) and a bootstrap interval over texts.
    """
    import torch

    is_model = isinstance(engine_or_model, torch.nn.Module)  # (a HF model has .model too)
    model = engine_or_model if is_model else engine_or_model.model
    tok = tokenizer or (None if is_model else getattr(engine_or_model, "tokenizer", None))
    if tok is None:
        raise ValueError("perplexity of a bare model needs tokenizer=")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise UserError("no non-empty text to compute perplexity on")
    ctx = _context_length(SimpleNamespace(model=model) if is_model else engine_or_model)
    length = min(ctx, max_length or ctx)
    stride = stride or max(1, length // 2)
    if not 0 < stride < length:
        raise UserError(f"perplexity stride must be between 1 and the window ({length}) - 1")
    prefix = _prefix_token(tok)
    jobs: list[tuple[int, list[int], int]] = []  # (text index, window ids, targets from)
    n_tokens = []
    for t_i, text in enumerate(texts):
        ids = [prefix] + _encode(tok, text, special=False)
        n_tokens.append(len(ids) - 1)
        for s, e, p in _windows(len(ids), length, stride):
            jobs.append((t_i, ids[s:e], p - s))
    nll = [0.0] * len(texts)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else prefix
    jobs.sort(key=lambda j: -len(j[1]))
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
            for r, (_, w, _) in enumerate(batch):
                ids[r, : len(w)] = torch.tensor(w)
                mask[r, : len(w)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            lp = torch.log_softmax(logits.float(), -1).cpu()
            for r, (t_i, w, first) in enumerate(batch):
                tgt = torch.tensor(w[first:])
                nll[t_i] -= float(lp[r, first - 1 : len(w) - 1].gather(1, tgt.unsqueeze(1)).sum())
            del logits, lp
    wall = time.perf_counter() - t0
    total_nll, total_tok = sum(nll), sum(n_tokens)
    text_bytes = [len(t.encode("utf-8")) for t in texts]
    n_bytes = sum(text_bytes)
    # Resample texts; the statistic is the pooled ratio (total NLL over total tokens/bytes).
    items = list(zip(nll, n_tokens, text_bytes, strict=True))

    def ppl_stat(sample):
        return math.exp(sum(x[0] for x in sample) / max(1, sum(x[1] for x in sample)))

    def bpb_stat(sample):
        return sum(x[0] for x in sample) / (max(1, sum(x[2] for x in sample)) * math.log(2))

    boot = dict(n=bootstrap, alpha=alpha, seed=seed)
    return {
        "perplexity": M.perplexity_from_nll(total_nll, total_tok),
        "ci": {
            "perplexity": list(M.bootstrap_ci(items, ppl_stat, **boot)),
            "bits_per_byte": list(M.bootstrap_ci(items, bpb_stat, **boot)),
        },
        "alpha": alpha,
        "nll_per_token": total_nll / total_tok,
        "bits_per_byte": M.bits_per_byte(total_nll, n_bytes),
        "tokens": total_tok,
        "bytes": n_bytes,
        "texts": len(texts),
        "window": length,
        "stride": stride,
        "windows": len(jobs),
        "per_text_nll": nll,
        "per_text_tokens": n_tokens,
        "per_text_bytes": text_bytes,
        "timing": {"wall_s": wall, "tokens_per_s": total_tok / wall if wall > 0 else 0.0},
    }


def perplexity(engine_or_model, texts: Sequence[str], **kwargs: Any) -> float:
    """Perplexity of held-out texts (see ``perplexity_details`` for everything else)."""
    return perplexity_details(engine_or_model, texts, **kwargs)["perplexity"]
