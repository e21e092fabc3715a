"""Prefix caching: a prompt that starts with cached blocks gets the tokens and log-probabilities
it gets without the cache; blocks are evicted least-recently-used within a byte bound (the tail
of a prefix before its head); another model's blocks are never used; echo rows prefill all."""

from __future__ import annotations

import pytest
import torch

from oficina.errors import UserError
from oficina.infer import prefix_cache as pc_mod
from oficina.infer.engine import DecodeBatch, Engine, SamplingParams
from oficina.infer.prefix_cache import PrefixCache

SHARED = (
    "You answer questions about code. Example: def add(a, b): return a + b adds two numbers. "
    "Example: def neg(x): return -x negates a number. Question: "
)
QUESTIONS = ["what does def sq(x): return x * x do?", "what is a lambda?"]


def _params(n: int = 6, **kw) -> SamplingParams:
    # ignore_eos: the length does not depend on the random model; logprobs: the numbers compared,
    # not only the greedy tokens (a random tiny model's argmax survives small errors)
    return SamplingParams(max_new_tokens=n, ignore_eos=True, logprobs=5, **kw)


@pytest.fixture
def cached(engine, monkeypatch):
    """The shared tiny engine with a fresh cache of 8-token blocks (prompts here span several)."""
    cache = PrefixCache(max_bytes=1 << 24, block=8)
    monkeypatch.setattr(engine, "prefix_cache", cache)
    return engine


def _uncached(engine, prompt: str, params: SamplingParams):
    saved, engine.prefix_cache = engine.prefix_cache, None
    try:
        return engine.generate([prompt], params)[0]
    finally:
        engine.prefix_cache = saved


def _assert_same(got, ref) -> None:
    assert got.token_ids == ref.token_ids
    for a, b in zip(got.logprobs, ref.logprobs, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [v for _, v in a.top] == pytest.approx([v for _, v in b.top], abs=1e-4)


def test_a_hit_gives_the_tokens_and_logprobs_of_a_miss(cached):
    cache = cached.prefix_cache
    first, second = SHARED + QUESTIONS[0], SHARED + QUESTIONS[1]
    refs = [_uncached(cached, p, _params()) for p in (first, second)]
    assert cache.stats()["hits"] == 0 and len(cache) == 0  # the reference runs stored nothing

    _assert_same(cached.generate([first], _params())[0], refs[0])  # a miss, which stores
    s = cache.stats()
    assert (s["hits"], s["misses"]) == (0, 1)
    n_first = len(cached.encode(first))
    assert s["blocks"] == n_first // 8 and s["bytes"] > 0

    _assert_same(cached.generate([second], _params())[0], refs[1])  # shares the instruction
    ids_a, ids_b = cached.encode(first), cached.encode(second)
    common = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y)
    s = cache.stats()
    assert s["hits"] == 1 and s["hit_tokens"] == common // 8 * 8 > 0

    _assert_same(cached.generate([first], _params())[0], refs[0])  # the whole prompt cached
    assert cache.stats()["hit_tokens"] == common // 8 * 8 + (n_first - 1) // 8 * 8


def test_a_hit_joining_a_running_batch_in_chunks_equals_a_miss(cached):
    prompt = SHARED + QUESTIONS[1]
    ref = _uncached(cached, prompt, _params(8))
    cached.generate([SHARED + QUESTIONS[0]], _params(1))  # stores the instruction's blocks
    other, row = cached.make_rows(["def foo(x):", prompt], [_params(10), _params(8)])
    batch = DecodeBatch(cached, chunk=8)  # the rest of the prompt prefilled 8 tokens a step
    batch.add(other)
    list(batch.step())  # one step; its text deltas are not needed here
    batch.add(row)
    while batch:
        list(batch.step())  # one step; its text deltas are not needed here
    assert cached.prefix_cache.stats()["hits"] == 1
    _assert_same(cached.completion(row), ref)


def test_another_models_blocks_are_never_used(cached, tmp_path):
    from helpers import make_tiny_lm, random_model_seed

    other = Engine.from_spec(str(make_tiny_lm(tmp_path / "other", seed=random_model_seed() + 1)))
    other.prefix_cache = cached.prefix_cache
    prompt = SHARED + QUESTIONS[0]
    cached.generate([prompt], _params(1))  # the tiny engine's blocks of this very prompt
    ref = _uncached(other, prompt, _params())
    _assert_same(other.generate([prompt], _params())[0], ref)
    s = cached.prefix_cache.stats()
    assert (s["hits"], s["misses"]) == (0, 2)


def test_an_echo_row_scores_every_prompt_token_as_without_the_cache(cached):
    prompt = SHARED + QUESTIONS[0]
    ref = _uncached(cached, prompt, _params(2, echo=True))
    cached.generate([prompt], _params(1))  # cached now
    got = cached.generate([prompt], _params(2, echo=True))[0]
    assert len(got.prompt_logprobs) == len(cached.encode(prompt))
    for a, b in zip(got.prompt_logprobs[1:], ref.prompt_logprobs[1:], strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
    _assert_same(got, ref)
    assert cached.prefix_cache.stats()["hits"] == 0


def test_an_in_memory_model_gets_no_cache(engine):
    # its weights may change between calls (training); the memoised identity would not see it
    assert Engine(engine.model, engine.tokenizer).prefix_cache is None
    assert engine.prefix_cache is not None


# ---------------------------------------------------------------------------- the cache alone
def _kv(start: int, end: int) -> torch.Tensor:
    """Fake KV [layers=1, 2, heads=1, end-start, dim=1] whose values are the positions."""
    pos = torch.arange(start, end, dtype=torch.float32)
    return torch.stack([pos, -pos])[None, :, None, :, None]


BLOCK_BYTES = _kv(0, 4).numel() * 4  # 32 bytes


def test_lookup_finds_the_longest_cached_block_prefix_and_its_values():
    c = PrefixCache(max_bytes=100 * BLOCK_BYTES, block=4)
    ids = list(range(100, 113))  # 13 tokens: 3 full blocks
    assert c.lookup("m", ids) == (0, None)
    c.store("m", ids, _kv)
    p, kv = c.lookup("m", ids)
    assert p == 12 and torch.equal(kv, _kv(0, 12))
    p, kv = c.lookup("m", ids[:12])  # one token must stay to prefill: 2 blocks, not 3
    assert p == 8 and torch.equal(kv, _kv(0, 8))
    p, _ = c.lookup("m", ids[:6] + [0] + ids[7:])  # differs in block 2: only block 1
    assert p == 4
    assert c.lookup("m", [0] + ids[1:]) == (0, None)  # block 1 differs: nothing after it
    assert c.lookup("other model", ids) == (0, None)
    assert (c.hits, c.misses, c.hit_tokens) == (3, 3, 24)


def test_store_reads_only_the_blocks_not_cached():
    c = PrefixCache(max_bytes=100 * BLOCK_BYTES, block=4)
    calls = []

    def read(a: int, b: int) -> torch.Tensor:
        calls.append((a, b))
        return _kv(a, b)

    c.store("m", list(range(8)), read)
    c.store("m", list(range(13)), read)
    assert calls == [(0, 4), (4, 8), (8, 12)]
    assert c.bytes == 3 * BLOCK_BYTES


def test_eviction_is_lru_within_the_byte_bound():
    c = PrefixCache(max_bytes=3 * BLOCK_BYTES, block=4)
    x, y, z = [1] * 9, [2] * 5, [3] * 5  # x: 2 blocks, y and z: 1 each
    c.store("m", x, _kv)
    c.store("m", y, _kv)
    assert c.bytes == 3 * BLOCK_BYTES and c.evictions == 0
    assert c.lookup("m", x)[0] == 8  # x used: y is now the least recent
    c.store("m", z, _kv)
    assert c.bytes <= c.max_bytes and c.evictions == 1
    assert c.lookup("m", y) == (0, None)
    assert c.lookup("m", x)[0] == 8 and c.lookup("m", z)[0] == 4


def test_a_prefix_is_evicted_from_its_tail():
    c = PrefixCache(max_bytes=2 * BLOCK_BYTES, block=4)
    ids = list(range(13))  # 3 blocks, room for 2
    c.store("m", ids, _kv)
    assert len(c) == 2 and c.bytes == 2 * BLOCK_BYTES
    assert c.lookup("m", ids)[0] == 8  # the head two remain, still usable
    c.store("m", [7] * 5, _kv)  # one more block: the second block of ids goes, not the first
    assert c.lookup("m", ids)[0] == 4


def test_a_zero_sized_cache_is_off():
    c = PrefixCache(max_bytes=0, block=4)
    c.store("m", list(range(9)), _kv)
    assert not c.enabled and len(c) == 0 and c.lookup("m", list(range(9))) == (0, None)


@pytest.mark.parametrize("raw", ["lots", "-1", "nan"])
def test_a_bad_size_in_the_environment_names_the_variable(monkeypatch, raw):
    monkeypatch.setattr(pc_mod, "_SHARED", None)
    monkeypatch.setenv("OFICINA_PREFIX_CACHE_MB", raw)
    with pytest.raises(UserError, match="OFICINA_PREFIX_CACHE_MB") as e:
        pc_mod.shared_prefix_cache()
    assert e.value.exit_code == 2  # a configuration error, as the CLI's other ones


def test_the_size_comes_from_the_environment(monkeypatch):
    monkeypatch.setattr(pc_mod, "_SHARED", None)
    monkeypatch.setenv("OFICINA_PREFIX_CACHE_MB", "0.5")
    assert pc_mod.shared_prefix_cache().max_bytes == 1 << 19


# ---------------------------------------------------------------------------- scoring
# The scoring kernel (oficina.infer.scoring) runs each context after its longest cached prefix
# and stores its blocks; the numbers must be those of the uncached kernel.
LABELS = [" yes", " no", " maybe not"]  # one multi-token continuation: the second pass runs too
ITEMS = [
    "what does def sq(x): return x * x do?",
    "what is a lambda?",
    "is a tuple mutable?",
    "what does the with statement do?",
]


def _scores(engine, contexts, batch_size: int = 8):
    conts = [LABELS] * len(contexts)
    got, n_ctx, _ = engine.score_continuations(contexts, conts, batch_size=batch_size)
    return [[(s.logprob, s.greedy, s.n_tokens) for s in row] for row in got], n_ctx


def _scores_uncached(engine, contexts, batch_size: int = 8):
    saved, engine.prefix_cache = engine.prefix_cache, None
    try:
        return _scores(engine, contexts, batch_size)
    finally:
        engine.prefix_cache = saved


def _assert_scores(got, ref) -> None:
    assert [[(g, n) for _, g, n in row] for row in got] == [
        [(g, n) for _, g, n in row] for row in ref
    ]
    for a, b in zip(got, ref, strict=True):
        assert [lp for lp, _, _ in a] == pytest.approx([lp for lp, _, _ in b], abs=1e-4)


def _shared_tokens(ids: list[list[int]], i: int) -> int:
    """Tokens of context i in whole 8-token blocks that another context starts with too."""
    best = 0
    for j, other in enumerate(ids):
        if j != i:
            n = 0
            while n < min(len(ids[i]), len(other)) and ids[i][n] == other[n]:
                n += 1
            best = max(best, n)
    return min(best, len(ids[i]) - 1) // 8 * 8


def test_scoring_computes_a_shared_prefix_once_and_scores_as_without_the_cache(cached):
    cache = cached.prefix_cache
    contexts = [SHARED + q for q in ITEMS]
    ref, n_ctx = _scores_uncached(cached, contexts)
    assert len(cache) == 0  # the uncached kernel stores nothing

    got, _ = _scores(cached, contexts)  # first time: the shared part computed once, then reused
    _assert_scores(got, ref)
    ids = [cached.encode(c) for c in contexts]
    s = cache.stats()
    # the priming pass stored the shared blocks (one lookup, a miss), then every context found
    # the blocks it shares with another context: its longest common prefix with any, in blocks
    assert (s["hits"], s["misses"]) == (len(contexts), 1)
    assert s["hit_tokens"] == sum(_shared_tokens(ids, i) for i in range(len(ids))) > 0
    assert s["blocks"] == len({tuple(x[:k]) for x in ids for k in range(8, len(x) + 1, 8)})

    got, _ = _scores(cached, contexts, batch_size=3)  # now whole contexts are cached
    _assert_scores(got, ref)
    s2 = cache.stats()
    assert s2["hits"] - s["hits"] == len(contexts)
    assert s2["hit_tokens"] - s["hit_tokens"] == sum((n - 1) // 8 * 8 for n in n_ctx)


def test_scoring_a_batch_of_hits_of_several_lengths_and_a_miss(cached):
    # one batch: two contexts cached whole (hits of two lengths) and a short one with nothing
    # cached (a hit beside a longer miss is run without the cache: it would widen the batch)
    contexts = [SHARED + ITEMS[0], SHARED + ITEMS[1], "x"]
    ref, _ = _scores_uncached(cached, contexts)
    _scores(cached, contexts[:2])  # caches both contexts' blocks
    s = cached.prefix_cache.stats()
    got, _ = _scores(cached, contexts)
    _assert_scores(got, ref)
    s2 = cached.prefix_cache.stats()
    # "x" is shorter than a block: no lookup can hit or miss
    assert (s2["hits"] - s["hits"], s2["misses"] - s["misses"]) == (2, 0)


def test_scoring_under_a_tiny_byte_bound_evicts_and_still_scores_as_without(cached, monkeypatch):
    contexts = [SHARED + q for q in ITEMS] + [q + " " + SHARED for q in ITEMS]
    ref, _ = _scores_uncached(cached, contexts)
    tiny = PrefixCache(max_bytes=0, block=8)
    _scores(cached, contexts[:1])
    tiny.max_bytes = 3 * next(iter(cached.prefix_cache._blocks.values())).nbytes  # 3 blocks
    monkeypatch.setattr(cached, "prefix_cache", tiny)
    for bs in (2, 8):
        got, _ = _scores(cached, contexts, batch_size=bs)
        _assert_scores(got, ref)
    s = tiny.stats()
    assert s["evictions"] > 0 and s["bytes"] <= tiny.max_bytes and s["hits"] > 0


def test_scoring_never_uses_another_models_blocks(cached, tmp_path):
    from helpers import make_tiny_lm, random_model_seed

    other = Engine.from_spec(str(make_tiny_lm(tmp_path / "other", seed=random_model_seed() + 1)))
    other.prefix_cache = cached.prefix_cache
    assert other.model_hash != cached.model_hash
    contexts = [SHARED + q for q in ITEMS]
    _scores(cached, contexts)  # the tiny engine's blocks of these very contexts
    s = cached.prefix_cache.stats()
    ref, _ = _scores_uncached(other, contexts)
    got, _ = _scores(other, contexts)
    _assert_scores(got, ref)
    s2 = cached.prefix_cache.stats()
    # the other model primed its own shared prefix (a miss) and hit only that, not the whole
    # contexts the tiny engine stored
    ids = [other.encode(c) for c in contexts]
    assert s2["misses"] - s["misses"] == 1
    assert s2["hit_tokens"] - s["hit_tokens"] == sum(_shared_tokens(ids, i) for i in range(4))


def test_generation_reuses_the_blocks_scoring_stored(cached):
    prompt = SHARED + QUESTIONS[0]
    ref = _uncached(cached, prompt, _params())
    _scores(cached, [prompt])
    _assert_same(cached.generate([prompt], _params())[0], ref)
    n = len(cached.encode(prompt))
    assert cached.prefix_cache.stats()["hit_tokens"] == (n - 1) // 8 * 8
