"""Column-major storage of tall float32 weights (``oficina.infer.layout``): which layers move,
that values and ties survive, and that the engine's greedy tokens still equal plain
``transformers`` on a model loaded the usual way."""

from __future__ import annotations

import torch
from helpers import assert_greedy_equals_transformers

from oficina.infer.engine import Engine
from oficina.infer.layout import relayout_for_decode
from oficina.models.sources import load_causal_lm

PROMPTS = ["def foo(x):", "The quick brown fox jumps over the lazy dog and then it", "a"]


def test_relayout_moves_tall_float32_weights_only_keeping_values_and_ties(tiny_lm):
    model, _ = load_causal_lm(tiny_lm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moved = relayout_for_decode(model)
    tall = [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m.out_features > m.in_features
    ]
    # the tiny Llama: lm_head (vocab > hidden) and gate/up (2x hidden); never q/k/v/o/down
    assert moved == tall and "lm_head" in moved and any("up_proj" in n for n in moved)
    assert not any(n.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")) for n in moved)
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            w = m.weight
            want = (1, w.shape[0]) if n in moved else (w.shape[1], 1)
            assert w.stride() == want, n
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert relayout_for_decode(model) == moved  # again: nothing to do, same answer
    bf16, _ = load_causal_lm(tiny_lm, dtype="bfloat16")
    assert relayout_for_decode(bf16) == []


def test_engine_greedy_equals_transformers_on_the_usual_layout(tiny_lm, monkeypatch):
    # the layout is MKL's GEMV's: the engine uses it where the row kernel cannot be built
    monkeypatch.setattr("oficina.infer.engine.row_kernel", lambda: "Python")
    eng = Engine.from_spec(str(tiny_lm))
    assert eng.model.lm_head.weight.stride() == (1, eng.model.lm_head.weight.shape[0])
    plain, tok = load_causal_lm(tiny_lm)  # row-major weights, as transformers loads them
    assert plain.lm_head.weight.is_contiguous()
    assert_greedy_equals_transformers(eng, plain, tok, PROMPTS)
    ids = torch.tensor([eng.encode(PROMPTS[1])])
    with torch.no_grad():  # the logits themselves, up to float summation order
        assert torch.allclose(eng.model(ids).logits, plain(ids).logits, atol=1e-5)
