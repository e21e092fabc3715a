"""Dedup's pieces on exact values: shingles and Jaccard by hand, MinHash signatures that follow
their settings and estimate Jaccard, the id of the kept twin, and shard state that round-trips
exactly (a resumed run must make the same decisions with the same "duplicate of")."""

from __future__ import annotations

import random

import numpy as np
from data_planted import synthetic_vocab

from oficina.data.stages.dedup import (
    ExactDedup,
    ExactDedupConfig,
    NearDedup,
    NearDedupConfig,
    exact_key,
    jaccard,
    shingles,
    signature,
)


def test_shingles_by_hand():
    assert shingles("A b, c d e f", n=5) == {b"a b c d e", b"b c d e f"}
    assert shingles("one two", n=5) == {b"one two"}  # shorter than n: the whole text
    assert shingles("a b c", n=3) == {b"a b c"}
    assert shingles("a b c d", n=1) == {b"a", b"b", b"c", b"d"}
    assert shingles("Ação é boa agora", n=3) == {"ação é boa".encode(), "é boa agora".encode()}


def test_jaccard_by_hand():
    assert jaccard({b"x"}, {b"x"}) == 1.0
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard(set(), set()) == 0.0


def test_exact_key_normalises_case_space_and_punctuation():
    assert exact_key("Hello,   WORLD!") == exact_key("hello world") != exact_key("hello word")
    assert exact_key("ﬁne") == exact_key("fine")  # NFKC
    assert len(exact_key("x")) == 16


def _texts(n: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = synthetic_vocab(3000, seed)
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]


def test_signatures_follow_their_settings_and_estimate_jaccard():
    a, b = _texts(2, 120, 3)
    b = " ".join(a.split()[:80] + b.split()[:40])  # shares 2/3 of a's words, in order
    s = signature(a, num_perm=64, ngram=3, seed=7)
    assert s.dtype == np.uint64 and s.shape == (64,)
    assert np.array_equal(s, signature(a, num_perm=64, ngram=3, seed=7))
    assert not np.array_equal(s, signature(a, num_perm=64, ngram=3, seed=8))
    assert not np.array_equal(s, signature(a, num_perm=64, ngram=4, seed=7))
    assert np.array_equal(signature(a)[:16], signature(a, 128, 5, 1)[:16])  # the defaults
    # a stage keys documents with its own settings, its seed included
    near = NearDedup(NearDedupConfig(num_perm=32, ngram=3, seed=5))
    assert np.array_equal(near.key(a), signature(a, 32, 3, 5))
    assert not np.array_equal(near.key(a), signature(a, 32, 3, 1))
    # the share of equal MinHash values estimates the Jaccard of the 5-gram sets
    want = jaccard(shingles(a, 5), shingles(b, 5))
    got = float(np.mean(signature(a, 1024) == signature(b, 1024)))
    assert abs(got - want) < 0.06, (got, want)


def test_duplicates_name_the_kept_twin():
    ex = ExactDedup(ExactDedupConfig())
    first, second = {"id": "k1", "text": "Same text."}, {"id": "d2", "text": "same TEXT"}
    assert ex.decide(first, ex.key(first["text"])) is None and "_duplicate_of" not in first
    assert ex.decide(second, ex.key(second["text"])) == "exact_duplicate"
    assert second["_duplicate_of"] == "k1"
    near = NearDedup(NearDedupConfig())
    (t,) = _texts(1, 200, 5)
    first, second = {"id": "n1", "text": t}, {"id": "n2", "text": t + " extra"}
    assert near.decide(first, near.key(t)) is None and "_duplicate_of" not in first
    assert near.decide(second, near.key(second["text"])) == "near_duplicate"
    assert second["_duplicate_of"] == "n1"


def test_shard_state_round_trips_exactly():
    texts = _texts(6, 150, 6)
    ex, near = ExactDedup(ExactDedupConfig()), NearDedup(NearDedupConfig(num_perm=32))
    for i, t in enumerate(texts[:4]):
        ex.decide({"id": f"id{i}", "text": t}, ex.key(t))
        near.decide({"id": f"id{i}", "text": t}, near.key(t))
    es, ns = ex.take_shard_state(), near.take_shard_state()
    assert es["hashes"].dtype == np.dtype("S16") and es["hashes"].shape == (4,)
    assert es["ids"].tolist() == ["id0", "id1", "id2", "id3"]
    assert ns["signatures"].shape == (4, 32) and ns["signatures"].dtype == np.uint64
    assert ns["ids"].tolist() == ["id0", "id1", "id2", "id3"]
    assert np.array_equal(ns["signatures"][2], near.key(texts[2]))
    # taken state is not taken twice; what comes after is the next shard's
    assert ex.take_shard_state()["ids"].shape == (0,)
    assert near.take_shard_state()["signatures"].shape == (0, 32)
    ex.decide({"id": "id4", "text": texts[4]}, ex.key(texts[4]))
    near.decide({"id": "id4", "text": texts[4]}, near.key(texts[4]))
    assert ex.take_shard_state()["ids"].tolist() == ["id4"]
    assert near.take_shard_state()["ids"].tolist() == ["id4"]
    # a resumed stage knows the kept ids of the state it loaded
    ex2, near2 = ExactDedup(ExactDedupConfig()), NearDedup(NearDedupConfig(num_perm=32))
    ex2.load_shard_state(es)
    near2.load_shard_state(ns)
    assert ex2.seen == {ex.key(t): f"id{i}" for i, t in enumerate(texts[:4])}
    for i, t in enumerate(texts[:4]):
        d1, d2 = {"id": "new", "text": t}, {"id": "new", "text": t}
        assert ex2.decide(d1, ex2.key(t)) == "exact_duplicate" and d1["_duplicate_of"] == f"id{i}"
        assert (
            near2.decide(d2, near2.key(t)) == "near_duplicate" and d2["_duplicate_of"] == f"id{i}"
        )
    assert near2.take_shard_state()["ids"].tolist() == []  # loaded state is not new state
    assert ex2.decide({"id": "id5", "text": texts[5]}, ex2.key(texts[5])) is None
