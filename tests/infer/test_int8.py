"""Weight-only int8: the layer's numbers, the int8 directory's round trip, and its refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from oficina.cli import main
from oficina.errors import UserError
from oficina.infer.engine import Engine, SamplingParams
from oficina.infer.int8 import (
    RECIPE,
    SMALL_M,
    WEIGHTS,
    Int8Embedding,
    Int8Linear,
    dynamic_available,
    fake_quant_rows,
    int8_modules,
    quantize_int8,
    quantize_weight,
    save_int8,
)
from oficina.models.safety import UnsafeWeightsError


def _linear(seed: int, n: int = 96, k: int = 64) -> torch.nn.Linear:
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n)
    # Rows of very different ranges: a scale shared across rows (or along the wrong axis)
    # would crush the small rows to zero.
    with torch.no_grad():
        lin.weight.mul_(torch.logspace(-3, 1, n)[:, None])
    return lin


@pytest.mark.parametrize("seed", range(3))
def test_quantize_weight_is_per_output_channel_symmetric(seed):
    w = _linear(seed).weight.detach()
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and s.shape == (w.shape[0],)
    assert (q.abs().amax(dim=1) == 127).all()  # each row uses its full range
    assert torch.allclose(s, w.abs().amax(dim=1) / 127)
    # Round to nearest: no element is off by more than half a step of its own row.
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("rows", [1, 3, SMALL_M // 2, SMALL_M // 2 + 1, 40])  # x has 2 * rows rows
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_output_is_close_to_the_float_linear(rows, dtype):
    lin = _linear(rows).to(dtype)
    q = Int8Linear.from_linear(lin)
    torch.manual_seed(100 + rows)
    x = torch.randn(2, rows, lin.in_features).to(dtype)  # 3-D, as inside a model
    w, b = lin.weight.detach().float(), lin.bias.detach().float()
    with torch.no_grad():
        want, got = torch.nn.functional.linear(x.float(), w, b), q(x)  # float32 reference
    assert got.shape == want.shape and got.dtype == dtype
    # Each output y[n] = W[n] . x + b[n] errs by at most (|x| |W[n]| + |b[n]|) times a small
    # factor (int8 rounding is half a step of its own row; bf16 activations and outputs add
    # ~0.4%): channels whose weights are 10^4 times smaller than others' must be as accurate,
    # relative to their own size.
    bound = x.float().norm(dim=-1, keepdim=True) * w.norm(dim=1) + b.abs()
    err = (got.float() - want).abs() / bound
    assert err.max() < 0.01, err.max()
    if dtype is torch.float32 and rows > SMALL_M:
        # The dequantize path is int8 arithmetic in float32 (up to summation order).
        ref = torch.nn.functional.linear(x, q.weight.float() * q.weight_scale[:, None], q.bias)
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", ["weight-only", "dynamic"])
def test_int8_linear_follows_new_weights_loaded_in_place(kernel, monkeypatch):
    """Weights loaded, replaced or written in place are what the next call computes with, on
    either one-row kernel (the dynamic one's packed copy is rebuilt)."""
    from oficina.infer import int8

    if kernel == "dynamic" and not dynamic_available():
        pytest.skip("fbgemm's dynamic int8 linear is not in this torch")
    monkeypatch.setattr(int8, "DECODE_KERNEL", kernel)
    a, b = Int8Linear.from_linear(_linear(0)), Int8Linear.from_linear(_linear(1))
    x = torch.randn(1, a.in_features)
    with torch.no_grad():
        a(x)  # the kernel path has run (and converted its scales) once
        a.load_state_dict(b.state_dict())  # copies into a's tensors in place
        assert torch.equal(a(x), b(x))
        a.weight_scale = b.weight_scale.clone()  # replaced
        assert torch.equal(a(x), b(x))
        a.weight = Int8Linear.from_linear(_linear(8)).weight  # replaced, same shape
        assert not torch.equal(a(x), b(x))
        a.weight = b.weight.clone()
        assert torch.equal(a(x), b(x))
        # each tensor written in place, no load_state_dict: the one-row kernel's packed copy
        # follows too
        for write in (
            lambda: a.bias.add_(1.0),
            lambda: a.weight.copy_(Int8Linear.from_linear(_linear(2)).weight),
            lambda: a.weight_scale.mul_(0.5),
        ):
            write()
            want = Int8Linear(a.in_features, a.out_features)
            want.load_state_dict(a.state_dict())  # a fresh layer with a's tensors
            assert torch.allclose(a(x), want(x), atol=1e-6)


def _fbgemm_calls(fn):
    """(``fn()``, how many times fbgemm's dynamic linear ran in it): counted by the profiler,
    which sees the calls from a compiled graph and from either kernel of the op (C++ or
    Python)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, sum(e.count for e in prof.key_averages() if e.key == "quantized::linear_dynamic")


def _dequantized(q: Int8Linear) -> torch.Tensor:
    return q.weight.float() * q.weight_scale[:, None]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("bias", [True, False])
def test_one_row_dynamic_kernel_equals_its_reference(seed, bias, monkeypatch):
    """A one-row call (batch-1 decoding) with the opt-in dynamic kernel runs fbgemm with
    activations quantized per call: it computes exactly ``fake_quant_rows(x) @ dequantized W.T
    + b`` (float rounding aside)."""
    if not dynamic_available():
        pytest.skip("fbgemm's dynamic int8 linear is not in this torch (fallback tested below)")
    from oficina.infer import int8

    monkeypatch.setattr(int8, "DECODE_KERNEL", "dynamic")
    lin = _linear(seed)
    if not bias:
        lin.bias = None
    q = Int8Linear.from_linear(lin)
    torch.manual_seed(seed)
    x = torch.randn(1, 1, q.in_features)
    x[..., 5] *= 30  # an outlier channel, as the residual stream has: it sets the row's scale
    with torch.no_grad():
        got = q(x)
        b = 0 if q.bias is None else q.bias
        want = torch.nn.functional.linear(fake_quant_rows(x), _dequantized(q)) + b
        exact = torch.nn.functional.linear(x, _dequantized(q)) + b
    assert got.shape == (1, 1, q.out_features)
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-5 * scale
    # and it is not the weight-only kernel: quantizing activations costs visible precision
    assert (got - exact).abs().max() > 1e-4 * scale
    # two rows take the weight-only kernel, each row alone (no activation quantization)
    x2 = torch.cat([x, torch.randn_like(x)], 1)
    with torch.no_grad():
        rows = q(x2)
    woq = torch._weight_int8pack_mm(x2[0].bfloat16(), q.weight, q.weight_scale.bfloat16())
    assert torch.equal(rows[0], woq.float() + b)


def test_the_op_runs_its_cpp_kernel_where_a_compiler_is_found():
    """``oficina::int8_linear_dynamic``'s CPU kernel is the C++ one (``int8_op.cpp``, built
    once and cached) when a compiler is found, else the Python one (next test)."""
    from oficina.infer import int8

    if not dynamic_available():
        pytest.skip("fbgemm's dynamic int8 linear is not in this torch")
    found = shutil.which(os.environ.get("CXX", "c++")) is not None
    assert int8.OP_KERNEL == ("C++" if found else "Python")


def test_the_op_runs_its_python_kernel_where_the_cpp_one_cannot_be_built(tmp_path, repo_root):
    """Where the C++ kernel cannot be built (here: its cache is not a directory) the op runs
    its Python kernel, with a warning: the dynamic-kernel tests of this file, compiled ones
    included, pass on it too, in a process of their own."""
    if not dynamic_available():
        pytest.skip("fbgemm's dynamic int8 linear is not in this torch")
    (tmp_path / "cache").write_text("not a directory")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "cache")}
    tests = "dynamic_kernel_equals or follows or compiles_whole"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", tests, __file__],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "int8_op.cpp not used" in done.stdout and " passed" in done.stdout


def test_no_compiler_is_a_build_error(tmp_path, monkeypatch):
    """Without a compiler ``native.build`` says so (``native.load`` then returns None and
    the op keeps its Python kernel, as above)."""
    from oficina.infer import native

    monkeypatch.setenv("CXX", str(tmp_path / "no-compiler"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        native.build("int8_op.cpp")
    assert not list(tmp_path.rglob("*.so"))


def test_dynamic_kernel_falls_back_to_weight_only_when_missing(monkeypatch):
    """A torch without fbgemm's dynamic linear (or that removes it: torch 2.13 deprecates the
    quantized tensors its packing takes) runs one-row calls on the weight-only kernel."""
    from oficina.infer import int8

    def missing(*a, **kw):
        raise RuntimeError("Didn't find engine for operation quantized::linear_prepack")

    monkeypatch.setattr(int8, "DECODE_KERNEL", "dynamic")  # OFICINA_INT8_DECODE=dynamic
    monkeypatch.setattr(int8, "_DYNAMIC_OK", None)
    monkeypatch.setattr(int8, "_pack_dynamic", missing)
    q = Int8Linear.from_linear(_linear(4))
    x = torch.randn(1, q.in_features)
    with torch.no_grad():
        got = q(x)
    assert not int8.dynamic_available()
    weight_only = torch.ops.oficina.int8_linear_row(x, q.weight, q.weight_scale, q.bias)
    assert torch.equal(got, weight_only)  # the default one-row call (row kernel)
    monkeypatch.setattr(int8, "DECODE_KERNEL", "weight-only")  # the benchmarks' switch
    monkeypatch.setattr(int8, "_DYNAMIC_OK", True)
    with torch.no_grad():
        assert torch.equal(q(x), got)


def test_int8_model_decode_step_equals_its_reference(tiny_lm, tmp_path, monkeypatch):
    """A whole one-token forward of an int8 model with the dynamic kernel equals the same model
    with every int8 layer computed by the reference formula."""
    if not dynamic_available():
        pytest.skip("fbgemm's dynamic int8 linear is not in this torch")
    from oficina.infer import int8

    monkeypatch.setattr(int8, "DECODE_KERNEL", "dynamic")  # opt-in: OFICINA_INT8_DECODE
    q = _quantize_dir(tiny_lm, tmp_path / "int8")
    ids = torch.tensor([[7]])
    with torch.no_grad():
        got = q(ids).logits

        def reference(self, x):
            b = 0 if self.bias is None else self.bias
            return torch.nn.functional.linear(fake_quant_rows(x), _dequantized(self)) + b

        monkeypatch.setattr(Int8Linear, "forward", reference)
        want = q(ids).logits
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max())


def test_int8_one_row_runs_the_weight_only_row_kernel_by_default():
    """Without OFICINA_INT8_DECODE a one-row call multiplies the int8 weights by the float row
    (oficina::int8_linear_row: products exact, no bf16 rounding of the activations), and two rows
    run torch's weight-only kernel (bf16 activations), bit for bit."""
    from oficina.infer import int8, row_linear

    assert int8.DECODE_KERNEL == "weight-only" and row_linear.kernel() == "C++"
    q = Int8Linear.from_linear(_linear(5))
    x = torch.randn(2, q.in_features)
    exact = torch.nn.functional.linear(x.double(), q.weight.double()) * q.weight_scale.double()
    exact = exact + q.bias.double()
    with torch.no_grad():
        one = q(x[:1])
        assert torch.allclose(one.double(), exact[:1], rtol=1e-6, atol=1e-6 * exact.abs().max())
        woq = torch._weight_int8pack_mm(x.bfloat16(), q.weight, q.weight_scale.bfloat16())
        assert torch.equal(q(x), woq.float() + q.bias)
        # the bf16 rounding the one-row kernel avoids is visible at this tolerance
        assert not torch.allclose(woq[:1].double() + q.bias.double(), exact[:1], rtol=1e-6)


@pytest.mark.parametrize("kernel", ["weight-only", "dynamic"])
def test_int8_linear_compiles_whole_and_agrees_with_eager(kernel, monkeypatch):
    """The engine may compile its decode step: the layer traces without a graph break, on
    either one-row kernel. The dynamic kernel runs inside the graph as the op
    ``oficina::int8_linear_dynamic`` (fbgemm's packed weight kept outside it), so a compiled
    one-row call is bit for bit the eager one — not the weight-only kernel, which computes
    other numbers — and the weight is packed once for both."""
    from oficina.infer import int8

    if kernel == "dynamic" and not dynamic_available():
        pytest.skip("fbgemm's dynamic int8 linear is not in this torch")
    monkeypatch.setattr(int8, "DECODE_KERNEL", kernel)
    packs, pack = [], int8._pack_dynamic
    monkeypatch.setattr(int8, "_pack_dynamic", lambda *a: (packs.append(1), pack(*a))[1])
    q = Int8Linear.from_linear(_linear(3))
    compiled = torch.compile(q, fullgraph=True, dynamic=False)
    for rows in (1, SMALL_M + 4):  # both branches
        x = torch.randn(1, rows, q.in_features)
        x[..., 5] *= 30  # an outlier channel: activation rounding shows
        with torch.no_grad():
            got, want = compiled(x), q(x)
            woq = torch._weight_int8pack_mm(x[0].bfloat16(), q.weight, q.weight_scale_bf16)
        if rows == 1 and kernel == "dynamic":
            assert torch.equal(got, want)
            assert (got[0] - (woq.float() + q.bias)).abs().max() > 1e-4 * want.abs().max()
        else:
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    assert len(packs) == (kernel == "dynamic")  # packed at the first call, eager or compiled


def test_the_packed_weight_follows_in_place_writes_inside_a_compiled_layer(monkeypatch):
    """fbgemm's packed copy lives outside the graph, keyed by the tensors' versions: a write to
    the int8 weight is seen by the compiled layer too (no stale packed weight)."""
    from oficina.infer import int8

    if not dynamic_available():
        pytest.skip("fbgemm's dynamic int8 linear is not in this torch")
    monkeypatch.setattr(int8, "DECODE_KERNEL", "dynamic")
    q = Int8Linear.from_linear(_linear(6))
    compiled = torch.compile(q, fullgraph=True, dynamic=False)
    x = torch.randn(1, q.in_features)
    with torch.no_grad():
        before = compiled(x)
        q.weight.copy_(Int8Linear.from_linear(_linear(7)).weight)
        after = compiled(x)
        fresh = Int8Linear(q.in_features, q.out_features)
        fresh.load_state_dict(q.state_dict())
        assert not torch.equal(before, after) and torch.equal(after, fresh(x))


def test_compiled_int8_decode_step_runs_the_dynamic_kernel_and_equals_eager(
    tiny_lm, tmp_path, monkeypatch
):
    """A whole int8 model's one-token forward, compiled as ``Engine.compile_decode`` does, runs
    every int8 layer on the dynamic kernel inside the graph, and its logits equal eager's and
    the reference formula's (``fake_quant_rows``) within float rounding."""
    if not dynamic_available():
        pytest.skip("fbgemm's dynamic int8 linear is not in this torch")
    from oficina.infer import int8

    monkeypatch.setattr(int8, "DECODE_KERNEL", "dynamic")
    q = _quantize_dir(tiny_lm, tmp_path / "int8")
    step = torch.compile(q.forward, dynamic=True)
    ids = torch.tensor([[7]])
    with torch.no_grad():
        got = step(input_ids=ids).logits
        again, n = _fbgemm_calls(lambda: step(input_ids=ids).logits)  # only the graph runs
        assert n == len(int8_modules(q)) and torch.equal(again, got)
        eager = q(input_ids=ids).logits

        def reference(self, x):
            b = 0 if self.bias is None else self.bias
            return torch.nn.functional.linear(fake_quant_rows(x), _dequantized(self)) + b

        monkeypatch.setattr(Int8Linear, "forward", reference)
        want = q(input_ids=ids).logits
    scale = want.abs().max()
    assert (got - eager).abs().max() <= 1e-4 * scale
    assert (got - want).abs().max() <= 1e-4 * scale


def test_quantize_int8_leaves_the_float_model_alone_and_ties_the_embedding(tiny_lm):
    base = Engine.from_spec(str(tiny_lm))
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    m = quantize_int8(base.model)
    assert all(torch.equal(v, base.model.state_dict()[k]) for k, v in before.items())
    linears = [n for n, x in base.model.named_modules() if isinstance(x, torch.nn.Linear)]
    assert int8_modules(m) == linears and "lm_head" in linears
    emb, out = m.get_input_embeddings(), m.get_output_embeddings()
    assert isinstance(emb, Int8Embedding) and emb.weight is out.weight
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        e_float = base.model.get_input_embeddings()(ids)
        assert torch.allclose(emb(ids), e_float, atol=float(out.weight_scale.max()) / 2 + 1e-7)
    kept = quantize_int8(base.model, skip=("lm_head",))
    assert "lm_head" not in int8_modules(kept)
    assert isinstance(kept.get_input_embeddings(), torch.nn.Embedding)


def _quantize_dir(tiny_lm, out, model=None):
    """What ``oficina quantize --method int8`` writes, without its measurements."""
    shutil.copytree(tiny_lm, out, ignore=shutil.ignore_patterns("*.safetensors"))
    model = model if model is not None else Engine.from_spec(str(tiny_lm)).model
    q = quantize_int8(model)
    save_int8(q, out, source=str(tiny_lm))
    return q


def _untied(tiny_lm, out):
    """tiny_lm with its own lm_head (a copy of the embedding, then perturbed)."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_lm)
    m.config.tie_word_embeddings = False
    head = torch.nn.Linear(m.config.hidden_size, m.config.vocab_size, bias=False)
    with torch.no_grad():
        head.weight.copy_(m.get_input_embeddings().weight * 1.5)
    m.lm_head = head
    shutil.copytree(tiny_lm, out, ignore=shutil.ignore_patterns("*.safetensors"))
    m.save_pretrained(out)
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_int8_directory_round_trip_gives_identical_logits(tiny_lm, tmp_path, tied):
    src = tiny_lm if tied else _untied(tiny_lm, tmp_path / "untied")
    out = tmp_path / "int8"
    q = _quantize_dir(src, out, Engine.from_spec(str(src)).model)
    assert not (out / "model.safetensors").exists() and (out / WEIGHTS).is_file()
    recipe = json.loads((out / RECIPE).read_text())
    assert recipe["method"] == "int8-weight-only" and recipe["tied_embedding"] is tied
    stored = load_file(str(out / WEIGHTS))
    assert stored["lm_head.weight" if not tied else "model.embed_tokens.weight"].dtype == (
        torch.int8
    )
    assert ("lm_head.weight" in stored) is (not tied)  # a tied pair is stored once
    loaded = Engine.from_spec(str(out))
    assert int8_modules(loaded.model) == int8_modules(q)
    torch.manual_seed(0)
    for n in (4, SMALL_M + 9):  # both kernels: the int8 GEMV and dequantize + GEMM
        ids = torch.randint(3, loaded.model.config.vocab_size, (1, n))
        with torch.no_grad():
            assert torch.equal(loaded.model(ids).logits, q(ids).logits)
    # bf16 activations load too and stay near the float32 ones.
    b = Engine.from_spec(str(out), dtype="bfloat16")
    with torch.no_grad():
        lb, lf = b.model(ids).logits.float(), q(ids).logits
    assert ((lb - lf).norm() / lf.norm()) < 0.05


def test_greedy_generation_on_an_int8_directory(tiny_lm, tmp_path):
    out = tmp_path / "int8"
    q = _quantize_dir(tiny_lm, out)
    eng = Engine.from_spec(str(out))
    assert eng.model_hash != Engine.from_spec(str(tiny_lm)).model_hash
    p = SamplingParams(max_new_tokens=6, ignore_eos=True)
    got = eng.generate(["def", "hello world"], p)
    assert [c.completion_tokens for c in got] == [6, 6]
    # The same tokens as the in-memory quantized model, step by step (greedy, no cache games).
    mem = Engine(q, eng.tokenizer)
    assert [c.text for c in got] == [c.text for c in mem.generate(["def", "hello world"], p)]


def test_quantize_verb_writes_a_smaller_int8_directory(tiny_lm, tmp_path, capsys, repo_root):
    out = tmp_path / "int8"
    args = ["quantize", str(tiny_lm), "--method", "int8", "--out", str(out), "--max-texts", "4"]
    args += ["--bench-tokens", "8", "--json"]
    args += ["--eval-texts", str(repo_root / "examples/demo/task/validation.jsonl")]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    f, q = res["float"], res["quantized"]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors") == [WEIGHTS]
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    # int8 weights: about a quarter of float32 on disk and in RAM (scales and norms add a bit).
    assert q["size_on_disk_bytes"] < 0.35 * f["size_on_disk_bytes"]
    assert q["state_bytes"] < 0.35 * f["state_bytes"]
    assert f["tokens_per_s"] > 0 and q["tokens_per_s"] > 0
    assert q["perplexity"] != f["perplexity"]  # the rounded weights were scored
    assert abs(q["perplexity"] / f["perplexity"] - 1) < 0.02
    assert not list(tmp_path.glob("int8.tmp-*"))
    # Quantizing an int8 directory again is refused before any work.
    code = main(["quantize", str(out), "--method", "int8", "--out", str(tmp_path / "again")])
    assert code == 1 and "already quantized" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


# ---------------------------------------------------------------------------- refusals


@pytest.fixture
def int8_dir(tiny_lm, tmp_path):
    out = tmp_path / "int8"
    _quantize_dir(tiny_lm, out)
    return out


def test_an_int8_engine_has_narrow_weights(int8_dir):
    """An explicit OFICINA_DECODE_THREADS applies to its one-row decode steps, and its int8
    layers get one thread on the dynamic kernel by default (see test_decode_batch)."""
    from oficina.infer.engine import Engine

    e = Engine.from_spec(str(int8_dir))
    assert e.narrow_weights and e.int8_layers


def _stored(int8_dir) -> dict:
    # Copies: load_file maps the file, which the tests then overwrite.
    return {k: v.clone() for k, v in load_file(str(int8_dir / WEIGHTS)).items()}


def _one_line_error(capsys, argv, code=2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_pickle_or_malformed_int8_weights_are_refused_by_the_gate(int8_dir, capsys):
    good = (int8_dir / WEIGHTS).read_bytes()
    torch.save(_stored(int8_dir), int8_dir / WEIGHTS)  # a pickle under the safetensors name
    with pytest.raises(UnsafeWeightsError, match="not a safetensors file"):
        Engine.from_spec(str(int8_dir))
    argv = ["generate", str(int8_dir), "--prompt", "hi", "--max-new-tokens", "2"]
    assert WEIGHTS in _one_line_error(capsys, argv)
    (int8_dir / WEIGHTS).write_bytes(good[:-10])  # truncated
    assert "truncated" in _one_line_error(capsys, argv)


def test_int8_weights_that_do_not_fit_the_model_are_refused(int8_dir, capsys):
    state = _stored(int8_dir)
    argv = ["generate", str(int8_dir), "--prompt", "hi", "--max-new-tokens", "2"]
    k = "model.layers.0.mlp.down_proj.weight"
    bad = dict(state)
    bad[k] = bad[k].float()  # float where int8 belongs (a float model under the int8 name)
    save_file(bad, str(int8_dir / WEIGHTS))
    err = _one_line_error(capsys, argv)
    assert k in err and "quantize the source model again" in err
    bad = {x: v for x, v in state.items() if x != "model.layers.1.self_attn.q_proj.weight_scale"}
    save_file(bad, str(int8_dir / WEIGHTS))
    assert "missing ['model.layers.1.self_attn.q_proj.weight_scale']" in _one_line_error(
        capsys, argv
    )


def test_old_and_foreign_recipes_are_one_line_errors(int8_dir, capsys, tiny_lm):
    argv = ["generate", str(int8_dir), "--prompt", "hi", "--max-new-tokens", "2"]
    good = json.loads((int8_dir / RECIPE).read_text())
    old = {"method": "int8-dynamic", "skip": ["lm_head", "down_proj"]}
    (int8_dir / RECIPE).write_text(json.dumps(old))
    err = _one_line_error(capsys, argv)
    assert "older oficina" in err and "oficina quantize" in err
    recipe = dict(good, format=9)
    (int8_dir / RECIPE).write_text(json.dumps(recipe))
    assert "unknown quantization method" in _one_line_error(capsys, argv)
    recipe.update(format=1, modules=[*good["modules"], "model.layers.7.mlp.up_proj"])
    (int8_dir / RECIPE).write_text(json.dumps(recipe))
    assert "does not have" in _one_line_error(capsys, argv)
    recipe.update(modules=good["modules"], tied_embedding=not good["tied_embedding"])
    (int8_dir / RECIPE).write_text(json.dumps(recipe))
    assert "tie_word_embeddings" in _one_line_error(capsys, argv)
    (int8_dir / RECIPE).write_text(json.dumps(good))
    assert main(argv) == 0  # the directory itself was sound all along
    with pytest.raises(UserError, match="takes no adapter"):
        Engine.from_spec(str(int8_dir), adapter=str(tiny_lm))


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["weight-only", "dynamic"])
def test_compiled_int8_engine_decodes_as_the_eager_one(kernel, tiny_lm, tmp_path, monkeypatch):
    """``Engine.compile_decode`` on an int8 directory, batch 1. Weight-only: the greedy tokens
    and log-probabilities of the eager engine. Dynamic: every compiled step runs the dynamic
    kernel in every int8 layer, and the first compiled step (same input as eager's: the prompt
    and the first token come from the same eager prefill) gives eager's top log-probabilities.
    Later dynamic tokens are not compared: the compiled graph's fused float ops round a few
    activations across an int8 step now and then (log-probabilities ~1e-3 apart), which can
    flip a near-tie of a random model's greedy choice."""
    from oficina.infer import int8

    if kernel == "dynamic" and not dynamic_available():
        pytest.skip("fbgemm's dynamic int8 linear is not in this torch")
    monkeypatch.setattr(int8, "DECODE_KERNEL", kernel)
    _quantize_dir(tiny_lm, tmp_path / "int8")
    eager = Engine.from_spec(str(tmp_path / "int8"))
    eager.prefix_cache = None  # both prefill the prompt themselves
    compiled = Engine(eager.model, eager.tokenizer, name="compiled")
    compiled.compile_decode()
    p = SamplingParams(max_new_tokens=10, ignore_eos=True, logprobs=5)
    got, n = _fbgemm_calls(lambda: compiled.generate(["def foo(x):"], p)[0])
    want, m = _fbgemm_calls(lambda: eager.generate(["def foo(x):"], p)[0])
    if kernel == "weight-only":
        assert got.token_ids == want.token_ids and n == m == 0
        lp = [t.logprob for t in want.logprobs]
        assert [t.logprob for t in got.logprobs] == pytest.approx(lp, abs=1e-4)
        return
    # 9 decode steps through every int8 layer, and the prefill's lm_head, which computes the
    # last position only (one row), in both engines
    assert n == m == 9 * len(int8_modules(eager.model)) + 1
    assert got.token_ids[0] == want.token_ids[0]  # from the same eager prefill
    top = [v for _, v in want.logprobs[1].top]  # sorted values: no near-tie can reorder them
    assert [v for _, v in got.logprobs[1].top] == pytest.approx(top, abs=1e-2)
