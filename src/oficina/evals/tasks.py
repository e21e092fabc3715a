"""Evaluation tasks on a generation engine: classification, multiple choice, generation, perplexity.

Every task takes an engine (``oficina.infer.engine.Engine``); the scoring itself is the
engine's (``score_continuations``, ``text_nll``), these tasks add prompts, metrics and
intervals. An engine without ``score_continuations`` (a remote one) is scored through its
``.loglikelihood``; generation tasks use ``.generate``.

Classification and multiple choice score each answer the way lm-evaluation-harness does: the
log-likelihood of the continuation ``" " + answer`` after the rendered prompt, argmax. The
engine runs each prompt once and only the answer tokens again (its KV cache copied per
answer): with five labels ~5x less compute than scoring each pair from scratch.

Each task returns a dict with the predictions, a per-item score (so two runs can be compared
with a paired bootstrap), the metrics with bootstrap confidence intervals, prompt token counts
(few-shot and RAG prompts cost per request) and latency.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from oficina.errors import UserError
from oficina.evals import metrics as M
from oficina.infer.engine import Engine, SamplingParams
from oficina.infer.scoring import ContinuationScore

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
    example_template: str | None = None,
) -> str:
    """The prompt for one row: solved examples (if any), then the row's own rendered template.

    ``fewshot`` is None (zero-shot), a literal prefix string, a list of example rows (the same
    for every query), or a function row -> examples (per-query selection, e.g. by similarity).
    An example renders as ``example_template(example) + delimiter + example[answer_field]``
    (``example_template`` defaults to ``template``; a query with retrieved passages shows its
    examples without theirs) — the layout lm-evaluation-harness uses (``target_delimiter`` " ",
    ``fewshot_delimiter`` "\\n\\n").
    """
    query = _format(template, row, text_field)
    if fewshot is None:
        return query
    if isinstance(fewshot, str):
        return fewshot + query
    shots = [
        q + delimiter + a
        for q, a in _solved(fewshot, row, example_template or template, text_field, answer_field)
    ]
    return example_sep.join([*shots, query])


def _solved(fewshot: Fewshot, row: dict, template: str, text_field: str, answer_field: str):
    """The solved examples shown before ``row``, each as (its rendered prompt, its answer)."""
    if fewshot is None or isinstance(fewshot, str):
        return []
    examples = fewshot(row) if callable(fewshot) else fewshot
    return [(_format(template, ex, text_field), str(ex[answer_field])) for ex in examples]


def render_chat_prompt(
    engine,
    template: str,
    row: dict,
    fewshot: Fewshot = None,
    *,
    text_field: str = "text",
    answer_field: str = "label",
    example_template: str | None = None,
) -> str:
    """The prompt for one row in the engine's chat template: each solved example a user turn
    and the assistant's answer, then the row as the last user turn (lm-evaluation-harness's
    ``--fewshot_as_multiturn``). On the QA demo's 68 test items, 3 examples inside one user turn
    scored below none (token F1 0.117 vs zero-shot's 0.128, 2026-12-01): the turns are how an
    instruction-tuned model has seen examples answered."""
    msgs: list[dict] = []
    for q, a in _solved(fewshot, row, example_template or template, text_field, answer_field):
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    query = _format(template, row, text_field)
    if isinstance(fewshot, str):
        query = fewshot + query
    msgs.append({"role": "user", "content": query})
    return engine.render_chat(msgs)


# ---------------------------------------------------------------------------- log-likelihood


def score_continuations(
    engine,
    contexts: Sequence[str],
    continuations: Sequence[Sequence[str]],
    batch_size: int = 8,
    max_rows: int = 32,
    end_id: int | None = None,
) -> tuple[list[list[ContinuationScore]], list[int], int]:
    """Log-likelihood of each continuation after its context, by the engine's one kernel
    (``Engine.score_continuations``: lm-eval's split rule, each context run once; ``end_id``
    a token read after each continuation too, for a local engine).

    Returns (scores[i][j] for context i, continuation j; prompt token count of each context;
    how many contexts had to be cut on the left to fit the model's context length). An engine
    without that kernel (a remote one) is scored through its ``loglikelihood``.
    """
    if not hasattr(engine, "score_continuations"):
        if end_id is not None:
            raise UserError(f"{engine!r} cannot score an end token after each answer")
        return _score_via_engine(engine, contexts, continuations)
    return engine.score_continuations(
        list(contexts),
        [list(c) for c in continuations],
        batch_size=batch_size,
        max_rows=max_rows,
        end_id=end_id,
    )


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
                batch_size, example_template=None, end_id=None):  # fmt: skip
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
            example_template=example_template,
        )  # fmt: skip
        for r in rows
    ]
    t0 = time.perf_counter()
    scores, n_prompt, truncated = score_continuations(
        engine, prompts, conts, batch_size=batch_size, end_id=end_id
    )
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
    example_template: str | None = None,
    end_id: int | None = None,
) -> dict:
    """Zero-/few-shot classification by the log-likelihood of each label after the prompt
    (``render_prompt``: ``example_template`` renders the solved examples, default ``template``).

    Returns predictions, golds, ids, per_item (1 if correct), scores (log-prob of each label),
    accuracy and macro_f1 with ``ci`` (bootstrap intervals), per_label_f1, confusion,
    prompt_tokens (mean/max/total, and per item) and timing (wall, latency per item, tokens/s).
    With ``end_id`` (the token a fine-tune learns to stop with) also ``label_loss``: the
    token-weighted mean NLL of each gold label and that token after the prompt, the loss an
    SFT validation of these rows computes (prompt + delimiter + label + end, loss on the last
    two) when none is cut to a maximum length (here every prompt is whole, as the test is
    asked), from the same forward passes; the labels are still chosen without it.
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
        delimiter, batch_size, example_template, end_id,
    )  # fmt: skip
    preds = [labels[_choose(s, labels, normalize)] for s in scores]
    golds = [str(r[label_field]) for r in rows]
    extra = {}
    if end_id is not None:
        gold = [s[labels.index(g)] for s, g in zip(scores, golds, strict=True)]
        nll = -sum(s.logprob + float(s.end_logprob or 0.0) for s in gold)
        extra["label_loss"] = nll / max(1, sum(s.n_tokens + 1 for s in gold))
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
            **extra,
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
    chat: bool = False,
    example_template: str | None = None,
) -> dict:
    """Greedy generation scored against references: exact match, token F1, ROUGE-L.

    The prompt is ``template`` rendered with the row (or the row's ``prompt_field`` when no
    template is given) after its solved examples (``render_prompt``); with ``chat``, the
    engine's chat template with each example a turn (``render_chat_prompt``). The generated
    text is cut at the first stop string and stripped.
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
    fields = {"text_field": text_field, "answer_field": reference_field}
    if chat:
        prompts = [
            render_chat_prompt(
                engine, template, r, shots, **fields, example_template=example_template
            )
            for r in rows
        ]
    else:
        prompts = [
            render_prompt(
                template, r, shots, **fields, delimiter=delimiter, example_template=example_template
            )
            for r in rows
        ]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=list(stop))
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


def perplexity_details(
    engine_or_model,
    texts: Sequence[str],
    *,
    tokenizer=None,
    max_length: int | None = 1024,
    stride: int | None = None,
    bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """Perplexity of held-out texts by the engine's one definition (``Engine.text_nll``: BOS
    first, sliding windows of ``min(context length, max_length)`` tokens moving by ``stride``,
    default half a window; token-weighted over all texts), plus bits per UTF-8 byte (comparable
    across tokenizers) and bootstrap intervals over texts. A bare model needs ``tokenizer=``.
    """
    if isinstance(engine_or_model, torch.nn.Module):  # (a HF model has .model too)
        if tokenizer is None:
            raise ValueError("perplexity of a bare model needs tokenizer=")
        engine = Engine(engine_or_model, tokenizer)
    else:
        engine = engine_or_model
    r = engine.text_nll(list(texts), max_length, stride)
    nll, n_tokens = r.nll, r.tokens
    total_nll, total_tok = sum(nll), sum(n_tokens)
    text_bytes = [len(t.encode("utf-8")) for t in r.texts]
    n_bytes = sum(text_bytes)
    # Resample texts; the statistic is the pooled ratio (total NLL over total tokens/bytes).
    items = list(zip(nll, n_tokens, text_bytes, strict=True))

    def ppl_stat(sample):
        return math.exp(sum(x[0] for x in sample) / max(1, sum(x[1] for x in sample)))

    def bpb_stat(sample):
        return sum(x[0] for x in sample) / (max(1, sum(x[2] for x in sample)) * math.log(2))

    boot = dict(n=bootstrap, alpha=alpha, seed=seed)
    return {
        "perplexity": r.perplexity,
        "ci": {
            "perplexity": list(M.bootstrap_ci(items, ppl_stat, **boot)),
            "bits_per_byte": list(M.bootstrap_ci(items, bpb_stat, **boot)),
        },
        "alpha": alpha,
        "nll_per_token": total_nll / total_tok,
        "bits_per_byte": M.bits_per_byte(total_nll, n_bytes),
        "tokens": total_tok,
        "bytes": n_bytes,
        "texts": len(r.texts),
        "window": r.window,
        "stride": r.stride,
        "windows": r.windows,
        "per_text_nll": nll,
        "per_text_tokens": n_tokens,
        "per_text_bytes": text_bytes,
        "timing": {
            "wall_s": r.wall_s,
            "tokens_per_s": total_tok / r.wall_s if r.wall_s > 0 else 0.0,
        },
    }


def perplexity(engine_or_model, texts: Sequence[str], **kwargs: Any) -> float:
    """Perplexity of held-out texts (see ``perplexity_details`` for everything else)."""
    return perplexity_details(engine_or_model, texts, **kwargs)["perplexity"]
