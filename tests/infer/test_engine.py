"""The generation engine on the tiny random Llama: equality with HF generate, batching, sampling,
stop strings, EOS, context bounds, streaming and cancellation, log-probabilities, hashing."""

from __future__ import annotations

import shutil

import pytest
import torch

from oficina.errors import UserError
from oficina.infer.engine import ContextLengthError, Engine, SamplingParams

PROMPTS = [
    "def foo(x):",
    "The quick brown fox jumps over the lazy dog and then it",
    "a",
    "class C:\n    pass",
]


def _hf_greedy(engine, prompt, n, **kw):
    enc = engine.tokenizer(prompt, return_tensors="pt")
    out = engine.model.generate(
        **enc, do_sample=False, max_new_tokens=n, pad_token_id=engine.tokenizer.pad_token_id, **kw
    )
    ids = out[0, enc.input_ids.shape[1] :].tolist()
    # our token_ids exclude the EOS token; HF's include it
    return [t for t in ids if t not in engine.eos_ids]


@pytest.mark.parametrize("penalty", [1.0, 1.3, 5.0])
def test_greedy_equals_hf_generate_batched_and_alone(engine, penalty):
    params = SamplingParams(max_new_tokens=24, repetition_penalty=penalty)
    batched = engine.generate(PROMPTS, params)
    for prompt, c in zip(PROMPTS, batched, strict=True):
        ref = _hf_greedy(engine, prompt, 24, repetition_penalty=penalty)
        assert c.token_ids == ref
        alone = engine.generate([prompt], params)[0]
        assert alone.token_ids == c.token_ids and alone.text == c.text
        assert c.prompt_tokens == len(engine.tokenizer(prompt).input_ids)
    if penalty >= 5:  # really applied: output differs from plain greedy (1.3 may not, by seed)
        plain = engine.generate(PROMPTS, SamplingParams(max_new_tokens=24))
        assert [c.token_ids for c in plain] != [c.token_ids for c in batched]


def test_per_request_params_in_one_batch_match_running_alone(engine):
    params = [
        SamplingParams(max_new_tokens=12),
        SamplingParams(max_new_tokens=20, temperature=1.0, seed=7),
        SamplingParams(max_new_tokens=5, temperature=0.8, top_k=20, seed=1),
        SamplingParams(
            max_new_tokens=16, temperature=1.2, top_p=0.9, seed=3, repetition_penalty=1.2
        ),
    ]
    together = engine.generate(PROMPTS, params)
    for prompt, p, c in zip(PROMPTS, params, together, strict=True):
        alone = engine.generate([prompt], p)[0]
        assert alone.token_ids == c.token_ids
        assert c.completion_tokens == len(c.token_ids) <= p.max_new_tokens
    assert [c.completion_tokens for c in together] == [12, 20, 5, 16]


def test_same_seed_same_text_different_seed_different_text(engine):
    p = SamplingParams(max_new_tokens=30, temperature=1.0, seed=42)
    a = engine.generate(["hello"], p)[0].text
    b = engine.generate(["hello"], p)[0].text
    c = engine.generate(["hello"], SamplingParams(max_new_tokens=30, temperature=1.0, seed=43))[
        0
    ].text
    assert a == b
    assert a != c


def test_top_k_1_and_tiny_top_p_are_greedy(engine):
    greedy = engine.generate(PROMPTS[:2], SamplingParams(max_new_tokens=10))
    k1 = engine.generate(PROMPTS[:2], SamplingParams(max_new_tokens=10, temperature=5.0, top_k=1))
    p0 = engine.generate(
        PROMPTS[:2], SamplingParams(max_new_tokens=10, temperature=5.0, top_p=1e-6)
    )
    assert [c.token_ids for c in greedy] == [c.token_ids for c in k1] == [c.token_ids for c in p0]


def test_stop_string_is_cut_and_streaming_never_shows_it(engine):
    sampled = SamplingParams(max_new_tokens=40, temperature=1.0, seed=5)
    full = engine.generate(["x = "], sampled)[0].text
    stop = full[10:13]
    assert len(stop) == 3 and stop in full
    deltas: list[str] = []
    p = SamplingParams(max_new_tokens=40, temperature=1.0, seed=5, stop=[stop, "\x00never"])
    c = engine.generate(["x = "], p, on_token=lambda i, d: deltas.append(d))[0]
    assert c.finish_reason == "stop"
    assert c.text == full[: full.index(stop)]
    assert "".join(deltas) == c.text
    assert list(engine.stream("x = ", p)) and "".join(engine.stream("x = ", p)) == c.text


def test_eos_ends_a_row(engine, tiny_lm):
    first = engine.generate(["def"], SamplingParams(max_new_tokens=5))[0].token_ids[0]
    other = Engine(engine.model, engine.tokenizer, path=tiny_lm)
    other.eos_ids = {first}  # pretend the greedy first token is EOS
    c = other.generate(["def"], SamplingParams(max_new_tokens=5))[0]
    assert (c.text, c.token_ids, c.finish_reason, c.completion_tokens) == ("", [], "stop", 1)


def test_max_new_tokens_bounded_by_context(engine):
    ctx = engine.context_length
    ids = engine.encode("a" * 4000)
    assert len(ids) > ctx  # the tiny tokenizer barely merges repeated 'a's
    near_full = engine.tokenizer.decode(ids[: ctx - 3])
    n = engine.count_tokens(near_full)
    c = engine.generate([near_full], SamplingParams(max_new_tokens=50))[0]
    assert c.completion_tokens == ctx - n and c.finish_reason == "length"
    with pytest.raises(ContextLengthError):
        engine.generate(["a" * 4000], SamplingParams(max_new_tokens=5))


def test_on_token_false_cancels_only_that_row(engine):
    seen = {0: 0, 1: 0}

    def cb(i, delta):
        seen[i] += 1
        return i != 0  # cancel row 0 at its first delta

    cs = engine.generate(PROMPTS[:2], SamplingParams(max_new_tokens=15), on_token=cb)
    assert cs[0].finish_reason == "cancelled" and seen[0] == 1 and len(cs[0].token_ids) < 15
    assert cs[1].finish_reason == "length" and cs[1].completion_tokens == 15


def test_invalid_params_are_user_errors(engine):
    for bad in (
        SamplingParams(temperature=-1),
        SamplingParams(top_p=0),
        SamplingParams(top_k=-2),
        SamplingParams(repetition_penalty=0),
        SamplingParams(stop=[""]),
        SamplingParams(max_new_tokens=-1),
    ):
        with pytest.raises(UserError):
            engine.generate(["x"], bad)


def test_logprobs_and_echo_match_a_plain_forward(engine):
    prompt = "def foo(x):\n    return"
    c = engine.generate([prompt], SamplingParams(max_new_tokens=6, logprobs=3, echo=True))[0]
    ids = engine.encode(prompt)
    full = torch.tensor([ids + c.token_ids])
    with torch.no_grad():
        lp = torch.log_softmax(engine.model(full).logits[0].float(), -1)
    assert c.prompt_logprobs[0].logprob is None and len(c.prompt_logprobs) == len(ids)
    for t in range(1, len(ids)):
        assert c.prompt_logprobs[t].logprob == pytest.approx(float(lp[t - 1, ids[t]]), abs=1e-4)
    assert len(c.logprobs) == 6
    for j, tl in enumerate(c.logprobs):
        pos = len(ids) + j - 1
        assert tl.token_id == c.token_ids[j]
        assert tl.logprob == pytest.approx(float(lp[pos, tl.token_id]), abs=1e-4)
        assert len(tl.top) == 3 and tl.top[0][1] == pytest.approx(tl.logprob, abs=1e-5)
        assert [v for _, v in tl.top] == sorted((v for _, v in tl.top), reverse=True)
    # echo with zero new tokens: the lm-eval "score this text" request
    c0 = engine.generate([prompt], SamplingParams(max_new_tokens=0, echo=True, logprobs=0))[0]
    assert c0.text == "" and c0.completion_tokens == 0
    assert [t.logprob for t in c0.prompt_logprobs[1:]] == pytest.approx(
        [t.logprob for t in c.prompt_logprobs[1:]], abs=1e-5
    )


def test_loglikelihood_sums_and_greedy_flag(engine):
    ctx = "The answer is"
    greedy = engine.generate([ctx], SamplingParams(max_new_tokens=4))[0]
    cont = greedy.text
    ctx_ids = engine.encode(ctx)
    whole = engine.encode(ctx + cont)
    assert whole[: len(ctx_ids)] == ctx_ids and whole[len(ctx_ids) :] == greedy.token_ids
    (ll, is_greedy), (ll2, g2) = engine.loglikelihood([(ctx, cont), (ctx, " zzz")])
    with torch.no_grad():
        lp = torch.log_softmax(engine.model(torch.tensor([whole])).logits[0].float(), -1)
    expect = sum(float(lp[t - 1, whole[t]]) for t in range(len(ctx_ids), len(whole)))
    assert ll == pytest.approx(expect, abs=1e-3)
    assert is_greedy is True and g2 is False and ll2 < 0
    # batching does not change scores
    alone = engine.loglikelihood([(ctx, " zzz")], batch_size=1)[0]
    assert alone[0] == pytest.approx(ll2, abs=1e-4)


def test_render_chat_uses_the_template(engine):
    text = engine.render_chat([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(UserError):
        engine.render_chat([{"content": "no role"}])


def test_model_hash_is_content_based(engine, tiny_lm, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_lm, copy)
    assert Engine.from_spec(str(copy)).model_hash == engine.model_hash
    assert Engine.from_spec(str(tiny_lm), dtype="bfloat16").model_hash != engine.model_hash
    (copy / "tokenizer_config.json").write_text(
        (copy / "tokenizer_config.json").read_text().replace("<|im_start|>", "<|im_start|>", 1)
        + " "
    )
    assert Engine.from_spec(str(copy)).model_hash != engine.model_hash


def test_lora_adapter_loads_and_changes_output_and_hash(engine, tiny_lm, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    torch.manual_seed(0)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adir = tmp_path / "adapter"
    peft_model.save_pretrained(adir)
    tuned = Engine.from_spec(str(tiny_lm), adapter=str(adir))
    assert tuned.model_hash != engine.model_hash
    # Scores, not greedy tokens: a random model repeating one token can keep repeating it.
    pair = [(PROMPTS[1], " and then")]
    assert abs(tuned.loglikelihood(pair)[0][0] - engine.loglikelihood(pair)[0][0]) > 1e-3
    with pytest.raises(UserError):
        Engine.from_spec(str(tiny_lm), adapter=str(tmp_path))


def test_extreme_sampling_parameters_stay_finite(tiny_lm):
    # Found by schemathesis: a repetition penalty / top_p of 5e-324 overflowed the logits to
    # inf and torch.multinomial raised on NaN probabilities (a 500 in the server).
    from oficina.infer.engine import Engine, SamplingParams

    eng = Engine.from_spec(str(tiny_lm))
    for kw in ({"repetition_penalty": 5e-324, "top_p": 5e-324}, {"temperature": 1e-300}):
        out = eng.generate(
            ["def f(x):"],
            SamplingParams(max_new_tokens=4, temperature=kw.pop("temperature", 1.0), seed=0, **kw),
        )
        assert out[0].completion_tokens == 4 or out[0].finish_reason == "stop"


def _greedy_first(engine, prompt: str) -> int:
    return engine.generate([prompt], SamplingParams(max_new_tokens=1))[0].token_ids[0]


def test_min_tokens_and_ignore_eos_make_the_length_deterministic(engine, monkeypatch):
    """Make the model's own greedy choice the end-of-sequence token: without the two controls the
    row stops at once; min_tokens forbids EOS (and stop strings) for that many tokens, ignore_eos
    runs to max_new_tokens — whatever the random weights are."""
    prompt = PROMPTS[0]
    eos = _greedy_first(engine, prompt)
    monkeypatch.setattr(engine, "eos_ids", {eos})
    plain = engine.generate([prompt], SamplingParams(max_new_tokens=12))[0]
    assert plain.finish_reason == "stop" and plain.completion_tokens == 1 and plain.token_ids == []

    held = engine.generate([prompt], SamplingParams(max_new_tokens=12, min_tokens=5))[0]
    assert len(held.token_ids) >= 5 and eos not in held.token_ids[:5]

    forced = engine.generate([prompt], SamplingParams(max_new_tokens=12, ignore_eos=True))[0]
    assert forced.finish_reason == "length" and forced.completion_tokens == 12
    assert forced.token_ids[0] == eos  # generated, kept, and generation went on

    # a stop string that the first token's text would hit is not applied before min_tokens
    monkeypatch.setattr(engine, "eos_ids", set())
    first_text = engine.generate([prompt], SamplingParams(max_new_tokens=1))[0].text
    if first_text:
        stop = [first_text[0]]
        cut = engine.generate([prompt], SamplingParams(max_new_tokens=12, stop=stop))[0]
        assert cut.text == "" and cut.finish_reason == "stop"
        late = engine.generate([prompt], SamplingParams(max_new_tokens=12, stop=stop, min_tokens=4))
        assert late[0].completion_tokens >= 4


def test_on_token_is_called_every_step(engine):
    """A caller's per-token check (the server's deadline) runs on every step of a row, even
    when the step's text is held back, so it cannot be skipped by what the model generates."""
    calls: list[int] = []
    out = engine.generate(
        [PROMPTS[2]],
        SamplingParams(max_new_tokens=20, ignore_eos=True),
        lambda i, delta: calls.append(i),
    )[0]
    assert out.completion_tokens == 20 and len(calls) == 20


@pytest.mark.parametrize("bad", [{"min_tokens": -1}, {"min_tokens": 9, "max_new_tokens": 8}])
def test_min_tokens_is_validated(bad):
    with pytest.raises(UserError, match="min_tokens"):
        SamplingParams(**bad).validate()
