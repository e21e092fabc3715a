"""Planted duplicates: exact P = R = 1; near duplicates at Jaccard ≥ 0.9 found with recall ≥ 0.95;
pairs at Jaccard ≤ 0.5 merged ≤ 1%; exactly one member kept per cluster."""

from __future__ import annotations

import random

from data_planted import mutate, synthetic_vocab

from oficina.data.stages.dedup import (
    ExactDedup,
    ExactDedupConfig,
    NearDedup,
    NearDedupConfig,
    jaccard,
    shingles,
)


def _run(stage, docs: list[dict]) -> dict[str, str | None]:
    return {d["id"]: stage.decide(d, stage.key(d["text"])) for d in docs}


def test_exact_duplicates_precision_and_recall_are_one():
    rng = random.Random(1)
    vocab = synthetic_vocab(5000, 1)
    docs, planted = [], set()
    for i in range(300):
        words = [rng.choice(vocab) for _ in range(80)]
        docs.append({"id": f"o{i}", "text": " ".join(words)})
        if i % 3 == 0:  # a copy differing only in case, spacing and punctuation
            planted.add(f"c{i}")
            docs.append({"id": f"c{i}", "text": "  " + " ,".join(words).upper() + " \n"})
        if i % 5 == 0:  # one changed word: not an exact duplicate
            docs.append({"id": f"n{i}", "text": " ".join(mutate(rng, words, vocab, 1))})
    rng.shuffle(docs)
    # Originals first in each pair keep the test's notion of "which one is the copy" simple.
    docs.sort(key=lambda d: (int(d["id"][1:]), d["id"][0] != "o"))
    found = {k for k, v in _run(ExactDedup(ExactDedupConfig()), docs).items() if v}
    tp = len(found & planted)
    assert tp / len(found) == 1.0  # precision
    assert tp / len(planted) == 1.0  # recall


def _pairs(
    rng, vocab, n_pairs: int, k_range: tuple[int, int], keep
) -> list[tuple[list, list, float]]:
    pairs = []
    while len(pairs) < n_pairs:
        a = [rng.choice(vocab) for _ in range(300)]
        b = mutate(rng, a, vocab, rng.randint(*k_range))
        j = jaccard(shingles(" ".join(a)), shingles(" ".join(b)))
        if keep(j):
            pairs.append((a, b, j))
    return pairs


def test_near_duplicates_recall_and_false_merges():
    rng = random.Random(2)
    vocab = synthetic_vocab(20000, 2)
    near = _pairs(rng, vocab, 200, (1, 3), lambda j: j >= 0.9)
    far = _pairs(rng, vocab, 200, (25, 60), lambda j: j <= 0.5)
    assert min(j for *_, j in near) >= 0.9 and max(j for *_, j in far) <= 0.5
    docs = []
    for i, (a, b, _) in enumerate(near):
        docs += [
            {"id": f"near{i}-a", "text": " ".join(a)},
            {"id": f"near{i}-b", "text": " ".join(b)},
        ]
    for i, (a, b, _) in enumerate(far):
        docs += [{"id": f"far{i}-a", "text": " ".join(a)}, {"id": f"far{i}-b", "text": " ".join(b)}]
    out = _run(NearDedup(NearDedupConfig(threshold=0.8)), docs)
    recall = sum(out[f"near{i}-b"] == "near_duplicate" for i in range(len(near))) / len(near)
    false_merge = sum(out[f"far{i}-b"] is not None for i in range(len(far))) / len(far)
    assert recall >= 0.95, recall
    assert false_merge <= 0.01, false_merge
    assert all(out[f"near{i}-a"] is None for i in range(len(near)))  # the first is kept


def test_one_member_kept_per_cluster():
    rng = random.Random(3)
    vocab = synthetic_vocab(20000, 3)
    docs = []
    for c in range(60):
        base = [rng.choice(vocab) for _ in range(300)]
        members = [base] + [
            mutate(rng, base, vocab, rng.randint(1, 2)) for _ in range(rng.randint(1, 4))
        ]
        for m, words in enumerate(members):
            docs.append({"id": f"c{c}-{m}", "text": " ".join(words), "cluster": c})
    rng.shuffle(docs)  # members of a cluster interleave with other clusters
    out = _run(NearDedup(NearDedupConfig(threshold=0.8)), docs)
    kept = [d["cluster"] for d in docs if out[d["id"]] is None]
    assert sorted(kept) == list(range(60))  # exactly one per cluster


def test_dedup_state_round_trips_through_a_shard_snapshot():
    rng = random.Random(4)
    vocab = synthetic_vocab(5000, 4)
    texts = [" ".join(rng.choice(vocab) for _ in range(200)) for _ in range(20)]
    first = NearDedup(NearDedupConfig())
    exact = ExactDedup(ExactDedupConfig())
    for i, t in enumerate(texts):
        first.decide({"id": str(i), "text": t}, first.key(t))
        exact.decide({"id": str(i), "text": t}, exact.key(t))
    resumed, resumed_exact = NearDedup(NearDedupConfig()), ExactDedup(ExactDedupConfig())
    resumed.load_shard_state(first.take_shard_state())
    resumed_exact.load_shard_state(exact.take_shard_state())
    for i, t in enumerate(texts):
        assert resumed.decide({"id": f"x{i}", "text": t}, resumed.key(t)) == "near_duplicate"
        assert (
            resumed_exact.decide({"id": f"x{i}", "text": t}, resumed_exact.key(t))
            == "exact_duplicate"
        )
