"""Our GGUF exports run in real llama.cpp (llama-cpp-python): same tokens, same greedy text.

Skipped only when ``llama_cpp`` cannot be imported. The tiny random Llama checks logits and
tokenization in seconds; the packaged SmolLM2 (integration) checks tokenization on varied
text and that llama.cpp continues a few chat prompts exactly as Oficina's engine does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python==0.3.36)"
)

from oficina.infer.engine import Engine, SamplingParams  # noqa: E402
from oficina.infer.gguf_export import export_gguf, llama_greedy, load_llama  # noqa: E402

TEXTS = [
    "def f(x):\n    return x ** 2  # square",
    "Numbers: 3.14159, 2026-11-22 and 1234567 apples.",
    "  leading spaces,\ttabs\n\nand   gaps  ",
    "café naïve 😀 ✅ 日本語 — don't 'quote' it",
    "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n",
]


def _llama_ids(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def _greedy_engine(eng: Engine, prompt: str, n: int) -> list[int]:
    eos, eng.eos_ids = eng.eos_ids, set()
    try:
        return eng.generate([prompt], SamplingParams(max_new_tokens=n))[0].token_ids
    finally:
        eng.eos_ids = eos


def test_tiny_llama_in_llama_cpp_matches_pytorch(tiny_lm, tmp_path):
    out = tmp_path / "tiny.gguf"
    export_gguf(tiny_lm, out, "f32")
    eng = Engine.from_spec(str(tiny_lm))
    llm = load_llama(out, n_ctx=128, logits_all=True)
    for text in TEXTS:
        assert _llama_ids(llm, text) == eng.encode(text), text
    ids = eng.encode(TEXTS[0])
    llm.reset()
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    with torch.inference_mode():
        ref = eng.model(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()
    assert llama_greedy(llm, ids, 12) == _greedy_engine(eng, TEXTS[0], 12)


@pytest.fixture(scope="module")
def smollm2_ggufs(smollm2, tmp_path_factory):
    d = tmp_path_factory.mktemp("smollm2-gguf")
    paths = {}
    for kind in ("f32", "q8_0"):
        paths[kind] = d / f"{kind}.gguf"
        export_gguf(smollm2, paths[kind], kind)
    return paths


@pytest.mark.integration
def test_smollm2_gguf_tokenizes_like_oficina(smollm2_ggufs):
    eng = Engine.from_spec("smollm2-135m-instruct")
    llm = load_llama(smollm2_ggufs["q8_0"], n_ctx=256)
    chat = eng.render_chat([{"role": "user", "content": "What is 12 * 34? Answer in Python."}])
    for text in [*TEXTS, chat]:
        assert _llama_ids(llm, text) == eng.encode(text), text
    assert llm.metadata["tokenizer.ggml.pre"] == "smollm"


PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How do I reverse a string in Python?",
]


@pytest.mark.integration
def test_smollm2_f32_gguf_greedy_text_matches_the_engine(smollm2_ggufs):
    eng = Engine.from_spec("smollm2-135m-instruct")
    llm = load_llama(smollm2_ggufs["f32"], n_ctx=256)
    for q in PROMPTS:
        prompt = eng.render_chat([{"role": "user", "content": q}])
        ids = _llama_ids(llm, prompt)
        assert ids == eng.encode(prompt)
        assert llama_greedy(llm, ids, 16) == _greedy_engine(eng, prompt, 16), q


@pytest.mark.integration
def test_smollm2_q8_0_gguf_follows_the_engine_except_near_ties(smollm2_ggufs):
    """q8_0 in llama.cpp also rounds activations to 8 bits, so a near tie can flip (measured:
    "The" vs "L" at a 0.08-nat margin for the first prompt). Teacher-forced along the float
    engine's 16 greedy tokens, llama.cpp must pick the same token wherever the float margin
    is at least 0.5 nats, agree on 14 of 16 or more, and move the chosen token's log-prob
    by less than 0.15 nats on average."""
    eng = Engine.from_spec("smollm2-135m-instruct")
    llm = load_llama(smollm2_ggufs["q8_0"], n_ctx=256, logits_all=True)
    for q in PROMPTS:
        prompt = eng.render_chat([{"role": "user", "content": q}])
        ids = eng.encode(prompt)
        full = ids + _greedy_engine(eng, prompt, 16)
        with torch.inference_mode():
            ref = torch.log_softmax(eng.model(input_ids=torch.tensor([full])).logits[0], -1)
        llm.reset()
        llm.eval(full)
        got = torch.log_softmax(torch.tensor(np.asarray(llm.scores[: len(full)])), -1)
        rows = range(len(ids) - 1, len(full) - 1)
        agree = [int(got[i].argmax()) == full[i + 1] for i in rows]
        for i, ok in zip(rows, agree, strict=True):
            top2 = torch.topk(ref[i], 2).values
            assert ok or float(top2[0] - top2[1]) < 0.5, (q, i)
        assert sum(agree) >= 14, q
        dlp = [abs(float(got[i, full[i + 1]] - ref[i, full[i + 1]])) for i in rows]
        assert sum(dlp) / len(dlp) < 0.15, q


def test_llama_decode_speed_child_makes_the_asked_tokens(tiny_lm, tmp_path, monkeypatch):
    """The real child: it loads the GGUF, generates n tokens per prompt and reports a rate; a
    file that is not a GGUF fails with llama.cpp's own error, not a hang or a zero rate."""
    from oficina.infer.gguf_export import llama_tokens_per_s

    out = tmp_path / "tiny.gguf"
    export_gguf(tiny_lm, out, "f32")
    ids = Engine.from_spec(str(tiny_lm)).encode(TEXTS[0])
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert llama_tokens_per_s(out, [ids, ids[:3]], 5, threads=1) > 0
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(RuntimeError, match="child failed"):
        llama_tokens_per_s(bad, [ids], 5, threads=1)
