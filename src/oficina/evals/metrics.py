"""Evaluation metrics, each with a bootstrap confidence interval over items.

Classification: ``accuracy``, ``macro_f1`` (and ``per_label_f1``). Generation: ``exact_match``
and ``token_f1`` with SQuAD's answer normalisation, ``rouge_l`` (F-measure of the longest
common subsequence of tokens). Language modelling: ``perplexity_from_nll``, ``bits_per_byte``.

Uncertainty: ``bootstrap_ci`` is the percentile bootstrap over items (resample the test items
with replacement, recompute the statistic, take the alpha/2 and 1-alpha/2 quantiles), seeded so
the same scores always give the same interval. ``paired_bootstrap`` resamples the *same* items
for two variants and gives the interval of the difference: when it excludes 0, the two variants
can be told apart on this test set; when it straddles 0, they cannot.

    >>> exact_match("The Eiffel Tower!", "eiffel tower")
    1.0
    >>> round(token_f1("the cat sat", "a cat sat down"), 3)
    0.8
"""

from __future__ import annotations

import math
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------- classification


def accuracy(predictions: Sequence[Any], golds: Sequence[Any]) -> float:
    """Fraction of items whose prediction equals the gold label (0.0 for no items)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold labels")
    if not golds:
        return 0.0
    return sum(p == g for p, g in zip(predictions, golds, strict=True)) / len(golds)


def per_label_f1(
    predictions: Sequence[Any], golds: Sequence[Any], labels: Sequence[Any] | None = None
) -> dict[Any, float]:
    """F1 of each label as ``2·TP / (2·TP + FP + FN)``.

    Labels default to those seen in golds or predictions. A label given in ``labels`` that
    appears in neither has no defined F1 and is left out (so a bootstrap resample that happens
    to miss a rare class is not punished with a 0 for it).
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold labels")
    seen = set(golds) | set(predictions)
    labels = [
        lab for lab in (labels if labels is not None else sorted(seen, key=str)) if lab in seen
    ]
    out = {}
    for lab in labels:
        tp = sum(p == lab and g == lab for p, g in zip(predictions, golds, strict=True))
        fp = sum(p == lab and g != lab for p, g in zip(predictions, golds, strict=True))
        fn = sum(p != lab and g == lab for p, g in zip(predictions, golds, strict=True))
        out[lab] = 2 * tp / (2 * tp + fp + fn)
    return out


def macro_f1(
    predictions: Sequence[Any], golds: Sequence[Any], labels: Sequence[Any] | None = None
) -> float:
    """Unweighted mean of the per-label F1 (see ``per_label_f1``); 0.0 for no items."""
    f1s = per_label_f1(predictions, golds, labels)
    return sum(f1s.values()) / len(f1s) if f1s else 0.0


def confusion(
    predictions: Sequence[Any], golds: Sequence[Any], labels: Sequence[Any]
) -> list[list[int]]:
    """Rows: gold label; columns: predicted label (in ``labels`` order)."""
    idx = {lab: i for i, lab in enumerate(labels)}
    m = [[0] * len(labels) for _ in labels]
    for p, g in zip(predictions, golds, strict=True):
        if p in idx and g in idx:
            m[idx[g]][idx[p]] += 1
    return m


# ---------------------------------------------------------------------------- generation

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1's normalisation: lower case, drop punctuation, drop articles, squeeze spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _refs(references: str | Sequence[str]) -> list[str]:
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("no reference answer")
    return refs


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(r) for r in _refs(references)))


def _token_f1_one(pred: str, ref: str) -> float:
    p, r = normalize_answer(pred).split(), normalize_answer(ref).split()
    if not p or not r:  # SQuAD: both empty -> 1, one empty -> 0
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: str | Sequence[str]) -> float:
    """SQuAD's bag-of-tokens F1 after normalisation, the best over the references."""
    return max(_token_f1_one(prediction, r) for r in _refs(references))


_WORD = re.compile(r"\w+", re.UNICODE)


def rouge_tokens(s: str) -> list[str]:
    """ROUGE's tokenisation: lower case, runs of letters/digits (punctuation dropped)."""
    return _WORD.findall(s.lower())


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a)·len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_l_one(pred: str, ref: str, beta: float) -> float:
    p, r = rouge_tokens(pred), rouge_tokens(ref)
    if not p or not r:
        return float(p == r)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def rouge_l(prediction: str, references: str | Sequence[str], beta: float = 1.0) -> float:
    """ROUGE-L F-measure: LCS precision and recall over tokens; the best over the references."""
    return max(_rouge_l_one(prediction, r, beta) for r in _refs(references))


# ---------------------------------------------------------------------------- language modelling


def perplexity_from_nll(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token), with the NLL in nats."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(total_nll / n_tokens)


def bits_per_byte(total_nll: float, n_bytes: int) -> float:
    """Total NLL (nats) in bits, per UTF-8 byte of text: comparable across tokenizers."""
    if n_bytes <= 0:
        raise ValueError("bits per byte needs at least one byte")
    return total_nll / (n_bytes * math.log(2))


# ---------------------------------------------------------------------------- bootstrap


def _resample_indices(n_items: int, n: int, seed: int) -> np.ndarray:
    """(n, n_items) item indices drawn with replacement, reproducible from the seed."""
    return np.random.default_rng(seed).integers(0, n_items, size=(n, n_items))


def _is_mean(stat: Callable | None) -> bool:
    return stat is None or stat is np.mean or stat is mean


def mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else 0.0


def _stats(items: Sequence[Any], idx: np.ndarray, stat: Callable | None) -> np.ndarray:
    if _is_mean(stat):
        return np.asarray(items, dtype=float)[idx].mean(axis=1)
    return np.array([stat([items[i] for i in row]) for row in idx], dtype=float)


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    per_item_scores: Sequence[Any],
    stat: Callable[[Sequence[Any]], float] | None = mean,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over items, at level 1 - alpha.

    ``per_item_scores`` are numbers when ``stat`` is the mean (vectorised), or any items
    when ``stat`` takes a list of them — e.g. (prediction, gold) pairs for macro-F1:

        bootstrap_ci(list(zip(preds, golds)), stat=lambda s: macro_f1(*zip(*s)))
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    if len(per_item_scores) == 0:
        return (0.0, 0.0)
    idx = _resample_indices(len(per_item_scores), n, seed)
    return _percentiles(_stats(per_item_scores, idx, stat), alpha)


def paired_bootstrap(
    scores_a: Sequence[Any],
    scores_b: Sequence[Any],
    stat: Callable[[Sequence[Any]], float] | None = mean,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """Is A different from B on the same items? The bootstrap of stat(A) - stat(B).

    Each resample draws the same item indices for both variants, so the item-to-item
    variation they share cancels out. Returns the observed difference, its percentile
    interval, ``distinguishable`` (the interval excludes 0) and a two-sided bootstrap
    p-value (twice the smaller fraction of resampled differences on either side of 0).
    """
    if len(scores_a) != len(scores_b):
        raise ValueError(
            f"paired bootstrap needs the same items: {len(scores_a)} vs {len(scores_b)}"
        )
    f = mean if _is_mean(stat) else stat
    diff = float(f(list(scores_a)) - f(list(scores_b)))
    if len(scores_a) == 0:
        return {"diff": 0.0, "ci": (0.0, 0.0), "distinguishable": False, "p_value": 1.0, "n": 0}
    idx = _resample_indices(len(scores_a), n, seed)
    d = _stats(scores_a, idx, stat) - _stats(scores_b, idx, stat)
    lo, hi = _percentiles(d, alpha)
    p = min(1.0, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
    return {
        "diff": diff,
        "ci": (lo, hi),
        "distinguishable": bool(lo > 0 or hi < 0),
        "p_value": p,
        "n": len(scores_a),
    }


def macro_f1_stat(labels: Sequence[Any] | None = None) -> Callable[[Sequence[tuple]], float]:
    """A bootstrap statistic over (prediction, gold) pairs: their macro-F1."""

    def stat(pairs: Sequence[tuple]) -> float:
        if not pairs:
            return 0.0
        preds, golds = zip(*pairs, strict=True)
        return macro_f1(preds, golds, labels)

    return stat


def with_ci(
    per_item_scores: Sequence[Any],
    stat: Callable | None = mean,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """{"value": stat(items), "ci": [lo, hi]} — the shape every reported metric takes."""
    f = mean if _is_mean(stat) else stat
    value = float(f(list(per_item_scores))) if len(per_item_scores) else 0.0
    lo, hi = bootstrap_ci(per_item_scores, stat, n=n, alpha=alpha, seed=seed)
    return {"value": value, "ci": [lo, hi]}


# ---------------------------------------------------------------------------- reference points


def classification_baselines(
    train_labels: Sequence[Any],
    golds: Sequence[Any],
    labels: Sequence[Any],
    *,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """What a classifier that learned nothing scores on these test items.

    ``majority``: always answer the most frequent label of the *training* split (what a user
    could do without a model), scored on the test golds, with bootstrap intervals.
    ``uniform``: answer a label uniformly at random — accuracy 1/K exactly; macro-F1 as the mean
    over ``n`` seeded draws of a whole prediction vector (its distribution, not one lucky draw).
    """
    labels = list(labels)
    if not golds:
        raise ValueError("no test items")
    counts = {lab: 0 for lab in labels}
    for t in train_labels:
        if t in counts:
            counts[t] += 1
    pool = counts if any(counts.values()) else {lab: 0 for lab in labels}
    top = max(labels, key=lambda lab: (pool[lab], -labels.index(lab)))  # ties: first label
    preds = [top] * len(golds)
    acc = with_ci([float(g == top) for g in golds], n=n, alpha=alpha, seed=seed)
    f1 = with_ci(
        list(zip(preds, golds, strict=True)), macro_f1_stat(labels), n=n, alpha=alpha, seed=seed
    )
    rng = random.Random(seed)
    draws = [macro_f1([rng.choice(labels) for _ in golds], list(golds), labels) for _ in range(200)]
    return {
        "majority": {
            "label": top,
            "train_share": pool[top] / max(1, sum(pool.values())),
            "accuracy": acc["value"],
            "macro_f1": f1["value"],
            "ci": {"accuracy": acc["ci"], "macro_f1": f1["ci"]},
        },
        "uniform": {"accuracy": 1.0 / len(labels), "macro_f1": mean(draws)},
    }


def generation_baselines(
    train_answers: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """What a generator that learned nothing scores on these test items: the empty answer, and
    always the most frequent answer of the *training* split (ties: the first seen), each by
    exact match and token F1 with bootstrap intervals."""
    if not references:
        raise ValueError("no test items")
    counts = Counter(str(a) for a in train_answers)
    top = max(counts, key=lambda a: (counts[a], -list(counts).index(a))) if counts else ""
    out = {}
    for name, answer in (("empty", ""), ("most_frequent", top)):
        scores = {
            "exact_match": [exact_match(answer, r) for r in references],
            "token_f1": [token_f1(answer, r) for r in references],
        }
        cis = {k: with_ci(v, n=n, alpha=alpha, seed=seed) for k, v in scores.items()}
        out[name] = {
            "label": answer,
            **{k: v["value"] for k, v in cis.items()},
            "ci": {k: v["ci"] for k, v in cis.items()},
        }
    return out


def prediction_flags(
    predictions: Sequence[Any],
    quality: float,
    ci: Sequence[float] | None,
    majority_score: float,
    *,
    collapse_share: float = 0.9,
) -> tuple[list[str], str]:
    """Flags for a classifier that may have learned nothing, and the sentence that explains them.

    ``collapsed``: one label takes >= ``collapse_share`` of the predictions, or the quality does
    not beat always answering the majority label. ``within_interval_of_majority``: better than
    the majority baseline, but its interval still reaches down to it.
    """
    if not predictions:
        return [], ""
    counts: dict[Any, int] = {}
    for p in predictions:
        counts[p] = counts.get(p, 0) + 1
    top, k = max(counts.items(), key=lambda kv: kv[1])
    flags: list[str] = []
    why: list[str] = []
    if k / len(predictions) >= collapse_share:
        flags.append("collapsed")
        every = "every item" if k == len(predictions) else f"{k} of {len(predictions)} items"
        why.append(f"predicts '{top}' for {every}")
    if quality <= majority_score:
        if "collapsed" not in flags:
            flags.append("collapsed")
        why.append(f"no better than always answering the majority label ({majority_score:.3f})")
    elif ci is not None and ci[0] <= majority_score:
        flags.append("within_interval_of_majority")
        why.append(f"its interval reaches the majority baseline ({majority_score:.3f})")
    return flags, " — ".join(why)
