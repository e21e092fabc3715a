"""Fused q/k/v and gate/up projections (``oficina.infer.fuse``): the engine's fused model gives
plain ``transformers``' logits and greedy tokens in float32 and the unfused int8 model's numbers
in int8, unfusing restores the exact state, int8 directories keep the config's names, and
modules the fusion does not know are left alone."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import shutil
import textwrap

import pytest
import torch
from helpers import assert_greedy_equals_transformers, make_tiny_lora
from safetensors.torch import load_file

from oficina.infer.engine import Engine, SamplingParams
from oficina.infer.fuse import (
    KNOWN,
    FusedPart,
    fuse_projections,
    fused_modules,
    unfuse_projections,
)
from oficina.infer.int8 import (
    RECIPE,
    WEIGHTS,
    Int8Linear,
    dynamic_available,
    int8_modules,
    quantize_int8,
    save_int8,
)
from oficina.models.sources import load_causal_lm

PROMPTS = ["def foo(x):", "The quick brown fox jumps over the lazy dog and then it", "a"]


def _matmul_layers(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Int8Linear))]


def test_fused_engine_gives_transformers_logits_and_greedy_tokens(tiny_lm):
    eng = Engine.from_spec(str(tiny_lm))
    plain, tok = load_causal_lm(tiny_lm)
    n_layers = plain.config.num_hidden_layers
    assert len(fused_modules(eng.model)) == 2 * n_layers
    # a decode step's matmuls: qkv, o, gate_up, down per layer + lm_head (7 per layer before)
    assert len(_matmul_layers(eng.model)) == 4 * n_layers + 1
    assert len(_matmul_layers(plain)) == 7 * n_layers + 1
    calls = []
    for n, m in eng.model.named_modules():
        if n.endswith(("qkv_proj", "gate_up_proj")):
            m.register_forward_hook(lambda *a: calls.append(1))
    assert_greedy_equals_transformers(eng, plain, tok, PROMPTS)
    assert calls  # the fused layers ran
    ids = torch.tensor([eng.encode(PROMPTS[1])])
    with torch.no_grad():  # a prompt's logits, then one decode step on the cache
        a, b = eng.model(ids[:, :-1], use_cache=True), plain(ids[:, :-1], use_cache=True)
        assert torch.allclose(a.logits, b.logits, atol=1e-5)
        last = ids[:, -1:]
        sa = eng.model(last, past_key_values=a.past_key_values, use_cache=True).logits
        sb = plain(last, past_key_values=b.past_key_values, use_cache=True).logits
        assert torch.allclose(sa, sb, atol=1e-5)


def test_unfuse_restores_the_exact_state_and_fusing_twice_does_nothing(tiny_lm):
    model, _ = load_causal_lm(tiny_lm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    fused = fuse_projections(model)
    assert fused == [
        f"model.layers.{i}.{p}"
        for i in range(model.config.num_hidden_layers)
        for p in ("self_attn.qkv_proj", "mlp.gate_up_proj")
    ]
    attn = model.model.layers[0].self_attn
    q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
    assert all(isinstance(p, FusedPart) for p in (q, k, v))
    assert (q.start, k.start, v.start, v.stop) == (
        0,
        q.stop,
        k.stop,
        attn.qkv_proj.out_features,
    )
    assert fuse_projections(model) == []  # already fused: nothing to do
    assert len(unfuse_projections(model)) == len(fused)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert [type(m) for m in model.modules()] == classes


@pytest.mark.parametrize("kernel", ["weight-only", "dynamic"])
def test_fused_int8_engine_gives_the_unfused_numbers(kernel, tiny_lm, tmp_path, monkeypatch):
    from oficina.infer import int8

    if kernel == "dynamic" and not dynamic_available():
        pytest.skip("fbgemm's dynamic int8 linear is not in this torch")
    monkeypatch.setattr(int8, "DECODE_KERNEL", kernel)
    out = tmp_path / "int8"
    shutil.copytree(tiny_lm, out, ignore=shutil.ignore_patterns("*.safetensors"))
    save_int8(quantize_int8(load_causal_lm(tiny_lm)[0]), out)
    fused, apart = Engine.from_spec(str(out)), Engine.from_spec(str(out), fuse=False)
    assert len(fused_modules(fused.model)) > 0 and fused_modules(apart.model) == []
    assert isinstance(fused.model.model.layers[0].self_attn.qkv_proj, Int8Linear)
    ids = torch.tensor([fused.encode(PROMPTS[1])])
    with torch.no_grad():
        for n in (1, 4, ids.shape[1]):  # the one-row kernel, the int8 GEMV, dequantize + GEMM
            a, b = fused.model(ids[:, :n]).logits, apart.model(ids[:, :n]).logits
            assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    p = SamplingParams(max_new_tokens=12, ignore_eos=True, logprobs=3)
    a, b = fused.generate([PROMPTS[0]], p)[0], apart.generate([PROMPTS[0]], p)[0]
    assert a.token_ids == b.token_ids
    assert [t.logprob for t in a.logprobs] == pytest.approx(
        [t.logprob for t in b.logprobs], abs=1e-4
    )


def test_int8_directory_of_a_fused_model_has_the_config_names(tiny_lm, tmp_path):
    eng = Engine.from_spec(str(tiny_lm))
    q = quantize_int8(eng.model)  # fused in, fused out
    assert "model.layers.0.self_attn.qkv_proj" in int8_modules(q)
    out = tmp_path / "int8"
    shutil.copytree(tiny_lm, out, ignore=shutil.ignore_patterns("*.safetensors"))
    save_int8(q, out)
    assert fused_modules(q)  # saving left the model fused
    recipe = json.loads((out / RECIPE).read_text())
    plain_linears = _matmul_layers(load_causal_lm(tiny_lm)[0])
    assert recipe["modules"] == plain_linears
    stored = load_file(str(out / WEIGHTS))
    assert "model.layers.1.self_attn.k_proj.weight_scale" in stored
    assert not any("qkv" in k or "gate_up" in k for k in stored)
    loaded = Engine.from_spec(str(out))
    ids = torch.tensor([eng.encode(PROMPTS[1])])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, q(ids).logits)


def test_modules_it_does_not_know_stay_as_they_are(tiny_lm, tmp_path):
    model, _ = load_causal_lm(tiny_lm)
    layers = model.model.layers
    attn0 = layers[0].self_attn  # another class (its forward might use its input otherwise)
    attn0.__class__ = type("OtherAttention", (type(attn0),), {})
    layers[1].self_attn.k_proj = Int8Linear.from_linear(layers[1].self_attn.k_proj)  # mixed
    ids = torch.tensor([[5, 9, 2, 7]])
    with torch.no_grad():
        want = model(ids).logits
        fused = fuse_projections(model)
        got = model(ids).logits
    assert fused == ["model.layers.0.mlp.gate_up_proj", "model.layers.1.mlp.gate_up_proj"]
    assert isinstance(attn0.q_proj, torch.nn.Linear) and not hasattr(attn0, "qkv_proj")
    assert torch.allclose(got, want, atol=1e-5)
    # an adapter's LoRA layers wrap q/v: that engine is not fused
    lora = make_tiny_lora(tiny_lm, tmp_path / "lora", seed=1)
    assert fused_modules(Engine.from_spec(str(tiny_lm), adapter=str(lora)).model) == []


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_forwards_read_their_input_only_through_the_fused_projections(name):
    """What makes feeding the fused output in place of the input right: in the forward, the
    input is only an argument of the fused projections or read for ``.shape[:-1]``."""
    arch = name.removesuffix("Attention").removesuffix("MLP").lower()
    cls = getattr(importlib.import_module(f"transformers.models.{arch}.modeling_{arch}"), name)
    projections, _ = KNOWN[name]
    fn = ast.parse(textwrap.dedent(inspect.getsource(cls.forward))).body[0]
    arg = fn.args.args[1].arg
    parents = {id(c): p for p in ast.walk(fn) for c in ast.iter_child_nodes(p)}
    uses = [n for n in ast.walk(fn) if isinstance(n, ast.Name) and n.id == arg]
    assert uses
    for use in uses:
        up = parents[id(use)]
        through = (
            isinstance(up, ast.Call)
            and up.args == [use]
            and isinstance(up.func, ast.Attribute)
            and up.func.attr in projections
            and isinstance(up.func.value, ast.Name)
            and up.func.value.id == "self"
        )
        shape = (
            isinstance(up, ast.Attribute)
            and up.attr == "shape"
            and ast.unparse(parents[id(up)]) == f"{arg}.shape[:-1]"
        )
        assert through or shape, ast.unparse(up)
