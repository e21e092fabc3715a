"""The step-level engine (DecodeBatch over per-row KV slots): rows join between steps, leave at
once, long prompts are prefilled in chunks — and every row's greedy tokens stay those it gets
alone (and those of ``model.generate``), whatever else shares the batch."""

from __future__ import annotations

import pytest

from oficina.infer.engine import DecodeBatch, SamplingParams

LONG = "The quick brown fox jumps over the lazy dog and then it runs away into the woods"


def _params(n: int, **kw) -> SamplingParams:
    # ignore_eos: the length does not depend on what a random model generates; logprobs: the
    # comparisons see the numbers, not only greedy tokens (a random tiny model's argmax survives
    # a wrong mask or position more often than not)
    return SamplingParams(max_new_tokens=n, ignore_eos=True, logprobs=0, **kw)


def _same_as_alone(engine, prompt: str, row) -> bool:
    """Row's tokens equal running it alone, and so do the log-probabilities of each."""
    c = engine.generate([prompt], row.params)[0]
    got = [t.logprob for t in row.logprobs]
    assert row.generated == c.token_ids, prompt
    assert got == pytest.approx([t.logprob for t in c.logprobs], abs=1e-4), prompt
    return True


def _hf(engine, prompt: str, n: int) -> list[int]:
    enc = engine.tokenizer(prompt, return_tensors="pt")
    out = engine.model.generate(
        **enc, do_sample=False, max_new_tokens=n, pad_token_id=engine.tokenizer.pad_token_id
    )
    return out[0, enc.input_ids.shape[1] :].tolist()


def _run(batch: DecodeBatch, joins: dict[int, list] | None = None) -> int:
    """Step until done; ``joins[k]`` rows are added after step k. Returns the steps run."""
    joins = dict(joins or {})
    k = 0
    while batch or joins:
        for r in joins.pop(k, []):
            batch.add(r)
        list(batch.step())  # one step; its text deltas are not needed here
        k += 1
    return k


@pytest.mark.parametrize("k", [1, 4])
def test_a_row_joining_mid_batch_gets_the_tokens_it_gets_alone(engine, k):
    pa, pb = _params(12), _params(10)
    a, b = engine.make_rows(["def foo(x):", LONG], [pa, pb])
    batch = DecodeBatch(engine)
    batch.add(a)
    _run(batch, {k + 1: [b]})  # step 1 prefills a; a has k tokens when b joins
    assert _same_as_alone(engine, "def foo(x):", a) and _same_as_alone(engine, LONG, b)
    ref = _hf(engine, LONG, 10)  # HF stops at an EOS, which ignore_eos keeps
    assert b.generated[: len(ref)] == ref
    assert (a.finish, b.finish) == ("length", "length")


def test_rows_leaving_move_slots_and_the_rest_are_unaffected(engine):
    """Row 0 ends first: the last running row moves into its slot, and a long prompt that is
    still being prefilled (chunk of 3 tokens) moves along with it."""
    prompts = ["a", "def foo(x):", "class C:\n    pass", LONG]
    params = [_params(2), _params(9), _params(7), _params(5)]
    rows = engine.make_rows(prompts, params)
    batch = DecodeBatch(engine, chunk=3)
    moved = []
    original = batch.cache.move
    batch.cache.move = lambda src, dst: (moved.append((src, dst)), original(src, dst))
    _run(batch, {0: rows[:3], 3: rows[3:]})
    assert moved, "no row left a slot that another row had to fill"
    for prompt, p, r in zip(prompts, params, rows, strict=True):
        assert _same_as_alone(engine, prompt, r)
        assert len(r.generated) == p.max_new_tokens and r.slot is None
    assert not batch and not batch.running and not batch.filling


def test_chunked_prefill_gives_the_same_tokens_and_prompt_logprobs(engine):
    p = SamplingParams(max_new_tokens=6, ignore_eos=True, logprobs=2, echo=True)
    whole = engine.generate([LONG], p)[0]
    row = engine.make_rows([LONG], [p])[0]
    batch = DecodeBatch(engine, chunk=4)
    batch.add(row)
    steps = _run(batch)
    n = len(row.prompt_ids)
    assert steps >= -(-n // 4) + 6  # the prompt took several steps, one chunk each
    assert row.generated == whole.token_ids
    got = [t.logprob for t in row.prompt_logprobs[1:] + row.logprobs]
    assert got == pytest.approx(
        [t.logprob for t in whole.prompt_logprobs[1:] + whole.logprobs], abs=1e-4
    )


def test_a_long_prompt_does_not_stall_running_rows(engine):
    """While a prompt is prefilled chunk by chunk, each step still gives a running row a token."""
    a, b = engine.make_rows(["def foo(x):", LONG * 3], [_params(200), _params(2)])
    batch = DecodeBatch(engine, chunk=4)
    batch.add(a)
    while a not in batch.running:  # a's own prompt, chunk by chunk
        list(batch.step())
    batch.add(b)
    per_step = []
    while b.fed < len(b.prompt_ids):
        before = len(a.generated)
        list(batch.step())
        per_step.append(len(a.generated) - before)
    assert len(per_step) >= 10 and set(per_step) == {1}


def test_preallocated_cache_is_not_reallocated_per_step(engine):
    row = engine.make_rows(["def foo(x):"], [_params(40)])[0]
    batch = DecodeBatch(engine)
    batch.add(row)
    list(batch.step())
    layer = batch.cache.layers[0]
    ptrs = (layer.keys.data_ptr(), layer.values.data_ptr(), batch.cache.valid.data_ptr())
    shape = layer.keys.shape
    while batch:
        list(batch.step())
        assert (
            layer.keys.data_ptr(),
            layer.values.data_ptr(),
            batch.cache.valid.data_ptr(),
        ) == ptrs
    assert layer.keys.shape == shape and shape[2] >= len(row.prompt_ids) + 40
    assert len(row.generated) == 40


def test_cancel_a_waiting_and_a_running_row(engine):
    rows = engine.make_rows(["a", "def foo(x):", "x = "], [_params(8)] * 3)
    batch = DecodeBatch(engine, max_rows=1)  # one slot: rows 1 and 2 wait
    for r in rows:
        batch.add(r)
    batch.cancel(rows[2])
    assert rows[2].finish == "cancelled" and len(batch) == 2
    for _ in range(3):
        list(batch.step())
    assert len(rows[0].generated) == 2 and rows[1].slot is None  # still waiting for the slot
    batch.cancel(rows[0])
    _run(batch)
    assert rows[0].finish == "cancelled" and len(rows[0].generated) == 2
    assert _same_as_alone(engine, "def foo(x):", rows[1])
    assert rows[2].generated == [] and rows[2].fed == 0


def test_max_rows_bounds_the_slots(engine):
    rows = engine.make_rows(["a", "b", "c", "d", "e"], [_params(3)] * 5)
    batch = DecodeBatch(engine, max_rows=2)
    for r in rows:
        batch.add(r)
    most = 0
    while batch:
        list(batch.step())
        most = max(most, len(batch.running) + len(batch.filling))
    assert most == 2 and batch.cache.capacity[0] == 2
    assert [len(r.generated) for r in rows] == [3] * 5


def test_eager_attention_uses_an_additive_mask_and_agrees(engine, tiny_lm):
    from transformers import AutoModelForCausalLM

    from oficina.infer.engine import Engine

    model = AutoModelForCausalLM.from_pretrained(tiny_lm, attn_implementation="eager")
    eager = Engine(model, engine.tokenizer, path=tiny_lm)
    p = _params(10)
    a, b = eager.make_rows(["def foo(x):", LONG], [p, p])
    batch = DecodeBatch(eager)
    assert batch.cache.float_mask
    batch.add(a)
    _run(batch, {3: [b]})
    assert _same_as_alone(engine, "def foo(x):", a) and _same_as_alone(engine, LONG, b)


def test_a_row_outgrowing_its_reservation_grows_the_cache_geometrically(engine, monkeypatch):
    import oficina.infer.engine as engine_mod

    prompt, p = "def foo(x):", _params(300)
    alone = engine.generate([prompt], p)[0]
    monkeypatch.setattr(engine_mod, "RESERVE_AHEAD", 4)  # reserve the prompt and 4 tokens
    row = engine.make_rows([prompt], [p])[0]
    batch = DecodeBatch(engine)
    batch.add(row)
    assert batch.cache.capacity[1] < len(row.prompt_ids) + 300
    buffers = set()
    while batch:
        list(batch.step())
        if batch.cache.layers[0].keys is not None:
            buffers.add(batch.cache.layers[0].keys.data_ptr())
    assert 2 <= len(buffers) <= 4  # grew, by large steps rather than per token
    assert batch.cache.capacity[1] >= len(row.prompt_ids) + 300
    assert row.generated == alone.token_ids
    got = [t.logprob for t in row.logprobs]
    assert got == pytest.approx([t.logprob for t in alone.logprobs], abs=1e-4)


@pytest.mark.slow
def test_compiled_decode_step_gives_the_same_rows(engine):
    """torch.compile of the decode step (opt-in): same tokens and log-probabilities as eager,
    alone and with a second row joining (one recompile for more than one row)."""
    from oficina.infer.engine import Engine

    compiled = Engine(engine.model, engine.tokenizer, name="compiled")
    compiled.compile_decode()
    inner, calls = compiled._decode_forward, []
    compiled._decode_forward = lambda *a, **kw: (calls.append(1), inner(*a, **kw))[1]
    p = _params(12)
    a, b = compiled.make_rows(["def foo(x):", LONG], [p, p])
    batch = DecodeBatch(compiled)
    batch.add(a)
    _run(batch, {3: [b]})
    assert len(calls) >= 11  # the decode steps went through the compiled forward
    assert _same_as_alone(engine, "def foo(x):", a) and _same_as_alone(engine, LONG, b)


def test_the_compiled_step_builds_its_guards_with_dict_tags_and_only_it(engine, monkeypatch):
    """The compiled step's calls (where dynamo builds its guards) run with
    ``use_recursive_dict_tags_for_guards`` on — the per-call guard check of Engine.compile_decode
    — and the process-wide flag is back to its default after each, for other compiles."""
    import torch
    import torch._dynamo.config as dynamo_config

    from oficina.infer.engine import Engine

    seen = []

    def compile_recording(fn, **kw):  # stands for torch.compile: the flag at each call
        def run(*a, **k):
            seen.append(dynamo_config.use_recursive_dict_tags_for_guards)
            return fn(*a, **k)

        return run

    monkeypatch.setattr(torch, "compile", compile_recording)
    default = dynamo_config.use_recursive_dict_tags_for_guards
    compiled = Engine(engine.model, engine.tokenizer, name="compiled")
    compiled.compile_decode()
    out = compiled.generate(["def foo(x):"], _params(4))
    assert len(out[0].token_ids) == 4
    assert seen == [True] * 3  # 4 tokens: 1 from the prefill, 3 decode steps
    assert dynamo_config.use_recursive_dict_tags_for_guards == default is False


# ---------------------------------------------------------------------------- batched prefill
PROMPTS = ["a", "def foo(x):", "class C:\n    pass", LONG]


def _hf_logprobs(engine, prompt: str, n: int) -> tuple[list[int], list[float]]:
    """model.generate's greedy tokens and the log-probability of each (its raw scores)."""
    enc = engine.tokenizer(prompt, return_tensors="pt")
    out = engine.model.generate(
        **enc,
        do_sample=False,
        max_new_tokens=n,
        pad_token_id=engine.tokenizer.pad_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    ids = out.sequences[0, enc.input_ids.shape[1] :].tolist()
    lps = [float(s[0].float().log_softmax(-1)[t]) for s, t in zip(out.scores, ids, strict=True)]
    return ids, lps


def _spy_prefills(batch: DecodeBatch) -> list[list[tuple]]:
    """Each prefill forward as [(row, tokens it had before, tokens it adds)], in slot order."""
    calls: list[list[tuple]] = []
    plan = batch.cache.plan_prefill

    def spy(slots, qs, dtype):
        by_slot = {r.slot: r for r in batch.filling}
        calls.append([(by_slot[s], by_slot[s].fed, q) for s, q in zip(slots, qs, strict=True)])
        return plan(slots, qs, dtype)

    batch.cache.plan_prefill = spy
    return calls


def _same_as_generate(engine, prompt: str, row) -> None:
    """Greedy tokens and their log-probabilities equal model.generate's (up to its EOS)."""
    ids, lps = _hf_logprobs(engine, prompt, len(row.generated))
    assert row.generated[: len(ids)] == ids, prompt
    got = [t.logprob for t in row.logprobs[: len(ids)]]
    assert got == pytest.approx(lps, abs=1e-4), prompt


def test_rows_prefilled_together_in_one_forward_get_what_each_gets_alone(engine):
    """Four prompts of different lengths (so three are padded) go through one prefill forward;
    each row's tokens, log-probabilities and (echo) prompt log-probabilities are those it gets
    alone and those of model.generate."""
    params = [_params(8), _params(6), _params(7, echo=True), _params(9)]
    rows = engine.make_rows(PROMPTS, params)
    lengths = [len(r.prompt_ids) for r in rows]
    assert len(set(lengths)) == len(lengths)
    batch = DecodeBatch(engine)
    calls = _spy_prefills(batch)
    for r in rows:
        batch.add(r)
    _run(batch)
    assert [[(r, a, q) for r, a, q in c] for c in calls] == [
        [(r, 0, n) for r, n in zip(rows, lengths, strict=True)]
    ]
    for prompt, r in zip(PROMPTS, rows, strict=True):
        assert _same_as_alone(engine, prompt, r)
        _same_as_generate(engine, prompt, r)
    alone = engine.generate([PROMPTS[2]], params[2])[0]
    assert len(rows[2].prompt_logprobs) == lengths[2]
    assert [t.logprob for t in rows[2].prompt_logprobs[1:]] == pytest.approx(
        [t.logprob for t in alone.prompt_logprobs[1:]], abs=1e-4
    )


def test_rows_joining_mid_decode_are_prefilled_together(engine):
    a = engine.make_rows(["def foo(x):"], [_params(12)])[0]
    late = engine.make_rows(PROMPTS[::2] + [LONG], [_params(6), _params(8), _params(5)])
    batch = DecodeBatch(engine)
    calls = _spy_prefills(batch)
    batch.add(a)
    _run(batch, {3: late})  # a has 2 tokens when the three join
    assert [[r for r, _, _ in c] for c in calls] == [[a], late]
    assert len(a.generated) == 12
    for prompt, r in zip(["def foo(x):", *PROMPTS[::2], LONG], [a, *late], strict=True):
        assert _same_as_alone(engine, prompt, r)
        _same_as_generate(engine, prompt, r)


def test_a_prefill_step_takes_at_most_chunk_tokens_split_across_rows(engine):
    """chunk=8: each forward prefills <= 8 prompt tokens in all, several rows share one, and a
    row's pieces end at multiples of 8 (or its prompt's end) whatever shares the step."""
    prompts = ["a", LONG, "def foo(x):", "x = ", "class C:\n    pass"]
    rows = engine.make_rows(prompts, [_params(4)] * len(prompts))
    batch = DecodeBatch(engine, chunk=8)
    calls = _spy_prefills(batch)
    for r in rows:
        batch.add(r)
    _run(batch)
    assert all(sum(q for _, _, q in c) <= 8 for c in calls)
    assert any(len(c) > 1 for c in calls)
    for c in calls:
        for r, a, q in c:
            assert (a + q) % 8 == 0 or a + q == len(r.prompt_ids)
    fed = {id(r): sum(q for c in calls for s, _, q in c if s is r) for r in rows}
    assert fed == {id(r): len(r.prompt_ids) for r in rows}
    for prompt, r in zip(prompts, rows, strict=True):
        assert _same_as_alone(engine, prompt, r)


@pytest.fixture
def cached(engine, monkeypatch):
    """The shared tiny engine with a fresh prefix cache of 4-token blocks."""
    from oficina.infer.prefix_cache import PrefixCache

    monkeypatch.setattr(engine, "prefix_cache", PrefixCache(max_bytes=1 << 24, block=4))
    return engine


def _uncached(engine, prompt: str, params):
    saved, engine.prefix_cache = engine.prefix_cache, None
    try:
        return engine.generate([prompt], params)[0]
    finally:
        engine.prefix_cache = saved


SHARED = "You answer questions about code. Example: def add(a, b): return a + b adds. Question: "


def test_a_prefix_hit_prefilled_with_other_rows_prefills_only_its_suffix(cached):
    hit_prompt = SHARED + "what is a lambda?"
    prompts = [hit_prompt, "def foo(x):", LONG]
    params = [_params(7), _params(6), _params(5)]
    refs = [_uncached(cached, p, sp) for p, sp in zip(prompts, params, strict=True)]
    cached.generate([SHARED + "what does def sq(x) do?"], _params(1))  # stores SHARED's blocks
    hits = cached.prefix_cache.stats()["hit_tokens"]
    rows = cached.make_rows(prompts, params)
    batch = DecodeBatch(cached)
    calls = _spy_prefills(batch)
    for r in rows:
        batch.add(r)
    _run(batch)
    p = cached.prefix_cache.stats()["hit_tokens"] - hits
    assert p > 0 and cached.prefix_cache.stats()["hits"] == 1
    assert calls == [[(r, a, len(r.prompt_ids) - a) for r, a in zip(rows, [p, 0, 0], strict=True)]]
    for r, ref in zip(rows, refs, strict=True):
        assert r.generated == ref.token_ids
        got = [t.logprob for t in r.logprobs]
        assert got == pytest.approx([t.logprob for t in ref.logprobs], abs=1e-4)


def test_slots_stay_packed_when_prefilling_rows_finish_out_of_order_or_leave(cached):
    """A cached prefix makes row h's first piece short, so row s (behind it) finishes first and
    the two swap slots; s is cancelled, the last prefilling row w moves into its slot, and when
    h finishes it swaps with w again. Every row's KV moves with it: each gets what it gets
    alone."""
    hit_prompt = SHARED + "what is a lambda? Explain it with an example."
    cached.generate([SHARED + "what does def sq(x) do?"], _params(1))  # stores SHARED's blocks
    p, _ = cached.prefix_cache.lookup(cached.model_hash, cached.encode(hit_prompt))
    chunk = p + 4  # h's first piece: 4 tokens, then "a" fits in the same step, then w waits
    params = [_params(6), _params(30), _params(5)]
    h, s, w = cached.make_rows([hit_prompt, "a", LONG * 2], params)
    assert len(h.prompt_ids) > chunk and len(s.prompt_ids) <= chunk - 4 < len(w.prompt_ids)
    refs = [_uncached(cached, x, params[k]) for k, x in ((0, hit_prompt), (2, LONG * 2))]
    batch = DecodeBatch(cached, chunk=chunk)
    swaps, moves = [], []
    swap, move = batch.cache.swap, batch.cache.move
    batch.cache.swap = lambda a, b: (swaps.append((a, b)), swap(a, b))
    batch.cache.move = lambda a, b: (moves.append((a, b)), move(a, b))
    for r in (h, s, w):
        batch.add(r)
    list(batch.step())  # h's 4 tokens and all of s in one forward; w takes slot 2 and waits
    assert swaps == [(0, 1)] and (h.slot, s.slot, w.slot) == (1, 0, 2)
    assert batch.running == [s] and h.fed == chunk and w.fed == 0
    batch.cancel(s)
    list(batch.step())  # s leaves (w moves into slot 0); h's rest: h swaps with w
    assert moves == [(2, 0)] and swaps == [(0, 1), (0, 1)]
    assert (h.slot, w.slot, s.slot) == (0, 1, None) and batch.running == [h]
    _run(batch)
    assert s.finish == "cancelled" and s.generated == []
    for r, ref in zip([h, w], refs, strict=True):
        assert r.generated == ref.token_ids
        got = [t.logprob for t in r.logprobs]
        assert got == pytest.approx([t.logprob for t in ref.logprobs], abs=1e-4)


def test_the_compiled_decode_step_is_refused_for_a_shared_base(tiny_lm, tmp_path, monkeypatch):
    """A view of a shared base names each row's adapter on every forward, which a compiled step
    would recompile for: compile_decode says so, and OFICINA_COMPILE=1 leaves such views eager."""
    from helpers import make_tiny_lora

    from oficina.errors import UserError
    from oficina.infer.adapters import load_shared

    monkeypatch.setenv("OFICINA_COMPILE", "1")
    lora = make_tiny_lora(tiny_lm, tmp_path / "a", 1)
    shared = load_shared(str(tiny_lm), {"base": None, "a": str(lora)})
    assert all(e._decode_forward is None for e in shared.values())
    with pytest.raises(UserError, match="shares its base with other LoRA adapters"):
        shared["a"].compile_decode()


def _forwards_threads(engine, prompts: list[str], n: int) -> list[tuple[int, int]]:
    """(tokens per row, torch's thread count) of every forward while generating ``prompts``,
    with torch on 2 threads; the count is back to 2 afterwards."""
    import torch

    seen: list[tuple[int, int]] = []

    def hook(module, args, kwargs):
        seen.append((kwargs["input_ids"].shape[1], torch.get_num_threads()))

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    handle = engine.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out = engine.generate(prompts, _params(n))
        assert torch.get_num_threads() == 2  # restored after every step
    finally:
        handle.remove()
        torch.set_num_threads(before)
    assert all(len(c.token_ids) == n for c in out)
    return seen


def test_one_row_steps_on_the_dynamic_int8_kernel_run_on_one_thread_by_default(engine, monkeypatch):
    """By default (``DECODE_THREADS`` None, "auto") a one-row decode step whose int8 layers run
    fbgemm's dynamic kernel runs on one thread, and only it: its prefill and two-row steps keep
    torch's count, restored after each step; on the weight-only kernel (the default, or where
    the dynamic one is missing) every step keeps torch's count. The compiled step
    (``_decode_forward``) gets the same."""
    from oficina.infer import engine as engine_mod
    from oficina.infer import int8
    from oficina.infer.engine import Engine

    if not int8.dynamic_available():
        pytest.skip("fbgemm's dynamic int8 linear is not in this torch")
    assert engine_mod.DECODE_THREADS is None  # OFICINA_DECODE_THREADS unset
    q = Engine(int8.quantize_int8(engine.model), engine.tokenizer, name="tiny-int8")
    assert q.int8_layers and q.narrow_weights
    monkeypatch.setattr(int8, "DECODE_KERNEL", "dynamic")  # OFICINA_INT8_DECODE=dynamic
    alone = _forwards_threads(q, [LONG], 5)
    assert [t for n, t in alone if n > 1] == [2]  # the prefill
    assert [t for n, t in alone if n == 1] == [1] * 4  # 5 tokens: 1 from the prefill, 4 steps
    assert {t for _, t in _forwards_threads(q, [LONG, "def foo(x):"], 5)} == {2}  # two rows

    calls = []

    def step(**kw):  # stands for the compiled step: the model itself, counted
        calls.append(kw["input_ids"].shape)
        return q.model(**kw)

    monkeypatch.setattr(q, "_decode_forward", step)
    assert {t for n, t in _forwards_threads(q, [LONG], 3) if n == 1} == {1}
    assert len(calls) == 2  # both decode steps went through it
    monkeypatch.setattr(int8, "DECODE_KERNEL", "weight-only")
    assert {t for _, t in _forwards_threads(q, [LONG], 3)} == {2}
    monkeypatch.setattr(int8, "DECODE_KERNEL", "dynamic")
    monkeypatch.setattr(int8, "_DYNAMIC_OK", False)  # fbgemm missing: weight-only runs
    assert {t for _, t in _forwards_threads(q, [LONG], 3)} == {2}


def test_bfloat16_and_float32_decode_steps_keep_torchs_count_by_default(engine, tiny_lm):
    """By default a one-row decode step of a bfloat16 or float32 model runs on torch's count."""
    from oficina.infer.engine import Engine

    narrow = Engine.from_spec(str(tiny_lm), "bfloat16", name="tiny-bf16")
    assert narrow.narrow_weights and not narrow.int8_layers
    assert {t for _, t in _forwards_threads(narrow, [LONG], 5)} == {2}
    assert {t for _, t in _forwards_threads(engine, [LONG], 5)} == {2}  # float32


def test_a_set_decode_thread_count_applies_to_int8_and_16_bit_models(engine, tiny_lm, monkeypatch):
    """``OFICINA_DECODE_THREADS=n``: n threads for a one-row decode step of any model with
    int8 or 16-bit weights, whatever its kernel; float32 keeps torch's count; 0 = torch's count
    for every step, the dynamic int8 kernel's too."""
    from oficina.infer import engine as engine_mod
    from oficina.infer import int8
    from oficina.infer.engine import Engine

    narrow = Engine.from_spec(str(tiny_lm), "bfloat16", name="tiny-bf16")
    q = Engine(int8.quantize_int8(engine.model), engine.tokenizer, name="tiny-int8")
    monkeypatch.setattr(engine_mod, "DECODE_THREADS", 1)
    for e in (narrow, q):  # q on the weight-only kernel (the default)
        alone = _forwards_threads(e, [LONG], 5)
        assert [t for n, t in alone if n > 1] == [2]  # the prefill
        assert [t for n, t in alone if n == 1] == [1] * 4
    assert {t for _, t in _forwards_threads(engine, [LONG], 5)} == {2}  # float32
    monkeypatch.setattr(engine_mod, "DECODE_THREADS", 0)
    monkeypatch.setattr(int8, "DECODE_KERNEL", "dynamic")
    assert {t for _, t in _forwards_threads(q, [LONG], 3)} == {2}
