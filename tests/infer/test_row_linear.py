"""The one-row GEMV of decode steps (``oficina.infer.row_linear``): its numbers against float64,
independent of the thread count, used only where it may be (one row, no autograd), and a model
turned over to it keeps its parameters, ties, fusion and greedy tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_greedy_equals_transformers
from torch import nn

from oficina.infer import row_linear
from oficina.infer.engine import Engine
from oficina.infer.fuse import fuse_projections, unfuse_projections
from oficina.infer.row_linear import RowLinear, use_row_kernel
from oficina.models.sources import load_causal_lm

# bfloat16: the output is rounded to bfloat16 (8 bits of mantissa), as F.linear's is.
TOL = {torch.float32: 1e-6, torch.bfloat16: 8e-3}
SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (4099, 576), (7, 13), (33, 40)]


def test_the_cpp_kernel_is_built_here():
    # make setup builds it; CI has a compiler. Without one every test below checks F.linear.
    assert row_linear.kernel() == "C++"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_one_row_matches_float64_with_and_without_bias(dtype, n, k):
    row_linear.kernel()
    g = torch.Generator().manual_seed(n * 1000 + k)
    w = torch.randn(n, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    x = torch.randn(1, 1, k, generator=g).to(dtype)
    for bias in (None, b):
        y = torch.ops.oficina.linear_row(x, w, bias)
        assert y.shape == (1, n) and y.dtype == dtype
        ref = F.linear(x.double().reshape(1, k), w.double(), None if bias is None else b.double())
        err = (y.double() - ref).abs().max() / ref.abs().max()
        assert err < TOL[dtype], (n, k, float(err))


def test_a_row_gets_the_same_numbers_on_one_thread_and_on_two():
    row_linear.kernel()
    w, x = torch.randn(3000, 576), torch.randn(1, 576)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.oficina.linear_row(x, w, None)
        torch.set_num_threads(2)
        two = torch.ops.oficina.linear_row(x, w, None)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_bad_operands_are_refused_by_the_kernel():
    row_linear.kernel()
    w = torch.randn(8, 16)
    with pytest.raises(RuntimeError, match="one row"):
        torch.ops.oficina.linear_row(torch.randn(2, 16), w, None)
    with pytest.raises(RuntimeError, match="types differ"):
        torch.ops.oficina.linear_row(torch.randn(1, 16).bfloat16(), w, None)
    if row_linear.KERNEL == "C++":  # F.linear would read a strided weight correctly
        with pytest.raises(RuntimeError, match="row-major"):
            torch.ops.oficina.linear_row(torch.randn(1, 8), w.t(), None)


def test_row_linear_runs_the_op_only_for_one_row_without_autograd(monkeypatch):
    lin = nn.Linear(16, 8)
    use_row_kernel(nn.Sequential(lin))
    assert type(lin) is RowLinear
    calls = []
    real = torch.ops.oficina.linear_row

    class Spy:
        def __call__(self, *a):
            calls.append(a[0].shape)
            return real(*a)

    monkeypatch.setattr(torch.ops.oficina, "linear_row", Spy())
    one, rows = torch.randn(1, 1, 16), torch.randn(3, 16)
    with torch.no_grad():
        y = lin(one)
        assert torch.allclose(y, F.linear(one, lin.weight, lin.bias), atol=1e-6)
        assert y.shape == (1, 1, 8) and len(calls) == 1
        assert torch.equal(lin(rows), F.linear(rows, lin.weight, lin.bias))
        assert len(calls) == 1  # three rows: F.linear
    y = lin(one)  # autograd on: F.linear, so backward works
    y.sum().backward()
    assert len(calls) == 1 and lin.weight.grad is not None


def test_a_model_keeps_its_parameters_ties_and_fusion_and_decodes_as_before(tiny_lm):
    plain, tok = load_causal_lm(tiny_lm)
    model, _ = load_causal_lm(tiny_lm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fuse_projections(model)
    changed = use_row_kernel(model)
    assert "lm_head" in changed and any(n.endswith("qkv_proj") for n in changed)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    unfuse_projections(model)  # what quantize does before writing a GGUF: the names come back
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())

    eng = Engine.from_spec(str(tiny_lm))
    assert type(eng.model.lm_head) is RowLinear
    assert_greedy_equals_transformers(eng, plain, tok, ["def foo(x):", "The quick brown fox", "a"])
