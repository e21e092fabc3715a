"""Int8 weights: per-output-channel int8 with float scales; one-row calls also quantize activations.

``oficina quantize --method int8`` writes an *int8 directory*: the source's config and tokenizer
files, ``oficina-int8.safetensors`` (int8 weights, their float32 scales, and every tensor that
stays float) and ``oficina-quantization.json`` (``RECIPE``: which modules are int8).
``Engine.from_spec`` sees the recipe and loads the directory with ``load_int8`` — the weight file
passes ``oficina.models.safety``'s gate like every other one. The weights file is deliberately
not named ``model.safetensors``: a plain ``transformers`` loader would otherwise read int8 values
as if they were float weights and run a silently wrong model; here it stops with "no
model.safetensors".

The scheme: row ``n`` of a Linear weight ``W[N, K]`` is stored as ``q[n] = round(W[n] / s[n])``
in int8 with ``s[n] = max|W[n]| / 127`` (symmetric, per output channel); ``y = (x @ q.T) * s``.
``Int8Linear.forward`` runs it three ways, picked by how many rows ``x`` has (measured on
SmolLM2's shapes, 2 cores, AVX-512 with BF16/VNNI, torch 2.13: ``benchmarks/decode_kernels.py``):

* one row, when opted in (batch-1 decoding, ``OFICINA_INT8_DECODE=dynamic``): fbgemm's dynamic int8 linear
  (``quantized::linear_dynamic`` on a weight packed once, lazily): the row is quantized to
  uint8 over its own range at each call and multiplied by the int8 weights with integer dot
  products (VNNI), as llama.cpp's q8_0 does with blocks of 32. A decode step's matmuls took
  ~0.6x the time of the weight-only kernel's (20 vs 33 ms in one run). The numbers are
  ``fake_quant_rows``'s: activation rounding adds ~1-3% relative error to a product (more when
  one channel dwarfs the others); its effect on the model is measured by
  ``benchmarks/decode_kernels.py --model`` (perplexity, greedy agreement). fbgemm's packing
  takes a quantized tensor, which torch 2.13 deprecates; where the op is missing the call falls
  back to the weight-only kernel (``dynamic_available``). The call is the op
  ``torch.ops.oficina.int8_linear_dynamic``, which takes tensors only and finds the packed
  weight (an opaque object torch.compile cannot trace) in a table outside the module, so a
  compiled decode step (``Engine.compile_decode``) runs fbgemm too, in one graph with the rest
  of the step: batch-1 int8 decoding without the per-op Python of the eager forward. The op's
  kernel is C++ (``int8_op.cpp``) where it can be built, else Python (``_register_kernel``).
* one row otherwise (the default, ``DECODE_KERNEL = "weight-only"``): the op
  ``torch.ops.oficina.int8_linear_row`` (``oficina.infer.row_linear``, C++ built for this CPU):
  one float32 dot product per int8 weight row, the activations unrounded, times the row's scale.
  On 2 Zen 4 cores a decode step's matmuls took 7.3 ms against 15.5 for the kernel below and 9.2
  for fbgemm's dynamic one (``benchmarks/decode_kernels.py``, 2026-12-02, README, issue 16). Where the C++ cannot
  be built, the kernel below.
* 2..``SMALL_M`` rows (batched decoding; and one row where the C++ kernel is missing):
  ``torch._weight_int8pack_mm`` — torch's CPU weight-only int8 kernel (the one
  gpt-fast and torchao use), fed bf16 activations: its float32 variant is a reference loop ~12x
  slower than a float32 GEMV, the bf16 one reads a quarter of the float32 bytes and is ~1.5-2.5x
  faster than it. The matmul input is rounded to bf16 (about 0.3% relative error on a product,
  under the int8 rounding's ~0.7%); the result comes back in the activation dtype. Each row is
  computed alone (no activation scale is shared across rows), so rows sharing a batch do not
  change each other's numbers — which is why the dynamic kernel (one scale for all rows of a
  call) is used for one row only. A row decoded alone and the same row decoded in a batch run
  different kernels, so their int8 texts can differ.
* more rows (prefill, scoring): that kernel is a GEMV at heart and slows down past ~16 rows, so
  the weight is dequantized to the activation dtype and a plain GEMM runs: float32 prompts are
  computed in float32 from the int8 weights (perplexity is measured on this path).

For a model whose lm_head shares the input embedding (tied, as SmolLM2), quantizing lm_head
quantizes the embedding too, with the same tensors (row ``v`` of the table is token ``v``'s
embedding and lm_head's output channel ``v``), so the pair stays tied and stored once.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from oficina.errors import UserError
from oficina.infer.fuse import fused_modules, unfuse_projections
from oficina.infer.row_linear import kernel as row_kernel

RECIPE = "oficina-quantization.json"
WEIGHTS = "oficina-int8.safetensors"
METHOD = "int8-weight-only"
FORMAT = 1
SMALL_M = 16  # rows up to which the int8 GEMV kernel beats dequantize + GEMM (measured)

# Linear layers whose names end so stay float. Measured on SmolLM2 (demo validation texts, the
# engine's perplexity): weight-only int8 of every Linear and of the tied embedding moves the
# perplexity by well under 1% (README, "Quantization"), so nothing is skipped. (torch.ao's
# dynamic int8, which also quantized activations per tensor, needed lm_head and down_proj kept
# float to stay within +20%.)
SKIP: tuple[str, ...] = ()


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w[N, K]`` -> (int8 ``q[N, K]``, float32 ``scale[N]``) with ``w ≈ q * scale[:, None]``."""
    w = w.detach().float().contiguous()  # q row-major whatever w's layout (infer.layout)
    amax = w.abs().amax(dim=1)
    # An all-zero row has no range: any scale reproduces it; 1 avoids dividing by zero.
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """``nn.Linear`` with an int8 weight ``[out, in]`` and a float32 per-output-channel scale."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("weight_scale_bf16", None, persistent=False)
        self._sync_scale()

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> Int8Linear:
        q, scale = quantize_weight(lin.weight)
        return cls.from_tensors(q, scale, None if lin.bias is None else lin.bias.detach().clone())

    @classmethod
    def from_tensors(
        cls, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
    ) -> Int8Linear:
        """The layer of int8 ``weight[N, K]``, float32 ``scale[N]`` and ``bias[N]`` (used as given)."""
        m = cls(weight.shape[1], weight.shape[0], bias=bias is not None)
        m.weight, m.weight_scale, m.bias = weight, scale, bias
        m._sync_scale()
        return m

    @classmethod
    def stack(cls, parts: list[Int8Linear]) -> Int8Linear:
        """One layer whose output is the parts' outputs side by side (rows, scales, biases
        stacked; per-row scales make each row's numbers its part's). ``oficina.infer.fuse``."""
        cat = [torch.cat([getattr(p, k) for p in parts]) for k in ("weight", "weight_scale")]
        bias = None if parts[0].bias is None else torch.cat([p.bias for p in parts])
        return cls.from_tensors(*cat, bias)

    def rows(self, a: int, b: int) -> Int8Linear:
        """Output channels ``a:b`` as a layer of their own (copies)."""
        bias = None if self.bias is None else self.bias[a:b].clone()
        return Int8Linear.from_tensors(
            self.weight[a:b].clone(), self.weight_scale[a:b].clone(), bias
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"

    def _sync_scale(self) -> None:
        """The kernels' derived copies of the tensors: the bf16 scales (a non-persistent buffer:
        converted once rather than at each of the ~200 calls per decoded token, and a real
        tensor, which torch.compile's lowering of the kernel requires). Redone when a tensor is
        replaced or written (fbgemm's packed weight follows by itself: ``_packed_for``)."""
        s = self.weight_scale
        self.weight_scale_bf16 = s.to(torch.bfloat16)
        self._synced = _versions(self)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._sync_scale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if not torch.compiler.is_compiling() and self._synced != _versions(self):
            self._sync_scale()  # a tensor was replaced or written in place since
        # One row on the dynamic kernel, eager or compiled alike: the op finds fbgemm's packed
        # weight outside the graph (``_packed_for``). ``dynamic_available`` is settled before
        # a compile traces this (``Engine.compile_decode``), so the trace reads a constant.
        if x2.shape[0] == 1 and one_row_kernel() == "dynamic":
            y = torch.ops.oficina.int8_linear_dynamic(
                x2.float(), self.weight, self.weight_scale, self.bias, REDUCE_RANGE
            )
            return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        if x2.shape[0] == 1 and row_kernel() == "C++":  # float activations, exact products
            y = torch.ops.oficina.int8_linear_row(x2, self.weight, self.weight_scale, self.bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        if x2.shape[0] <= SMALL_M:
            y = torch._weight_int8pack_mm(
                x2.to(torch.bfloat16).contiguous(), self.weight, self.weight_scale_bf16
            ).to(x.dtype)
        else:
            y = F.linear(x2, self.weight.to(x.dtype)) * self.weight_scale.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


def _versions(m: Int8Linear) -> tuple:
    return tuple((id(t), t._version) for t in (m.weight, m.weight_scale, m.bias) if t is not None)


# ------------------------------------------------------------- the one-row (decode) kernel

# What a one-row call runs: "weight-only" (``torch._weight_int8pack_mm``, the kernel of every
# 2..SMALL_M-row call) or "dynamic" (fbgemm, activations quantized to int8 at each call; falls
# back to weight-only where fbgemm is missing). Weight-only is the default: the dynamic kernel's
# matmuls are ~1.5x faster, but end to end it decoded only 1.06x faster (17.2 vs 16.2 tok/s,
# benchmarks/generate.py, load ~7), cost perplexity +1.92% against +0.36%, and makes a request's
# int8 text depend on whether it shared a batch. ``OFICINA_INT8_DECODE=dynamic`` opts in.
DECODE_KERNEL = os.environ.get("OFICINA_INT8_DECODE", "weight-only")
if DECODE_KERNEL not in ("weight-only", "dynamic"):
    raise UserError(
        f"OFICINA_INT8_DECODE={DECODE_KERNEL!r}: use 'weight-only' (the default) or 'dynamic'",
        exit_code=2,  # a setting, as OFICINA_PREFIX_CACHE_MB's
    )


def _has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


# fbgemm multiplies uint8 activations by int8 weights; without VNNI its AVX2/AVX-512 kernel sums
# pairs of products in int16, which saturates unless activations use 7 bits (torch.ao's
# ``reduce_range``). With VNNI (vpdpbusd sums in int32) the full 8 bits are safe.
REDUCE_RANGE = not _has_vnni()
_DYNAMIC_OK: bool | None = None


def _pack_dynamic(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """fbgemm's packed form of int8 ``q[N, K]`` with per-row ``scale`` (and a float bias)."""
    with warnings.catch_warnings():
        # torch 2.13 deprecates creating quantized tensors (the packing's input); the packed
        # weight and the linear_dynamic op are what run. Its removal is caught by the fallback.
        warnings.simplefilter("ignore")
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = "fbgemm"  # packing picks the backend; restored below
        try:
            qw = torch._make_per_channel_quantized_tensor(
                q.contiguous(), scale.double(), torch.zeros_like(scale, dtype=torch.long), 0
            )
            b = None if bias is None else bias.detach().float()
            return torch.ops.quantized.linear_prepack(qw, b)
        finally:
            torch.backends.quantized.engine = before


# fbgemm's packed weights, by the int8 weight tensor's address: (the tensors' identities and
# versions when packed, the packed weight). Kept outside the modules so that the custom op
# below takes only tensors — a packed weight is an opaque object that torch.compile cannot
# trace — and a compiled decode step calls fbgemm exactly as eager does. An entry leaves with
# its weight tensor (weakref.finalize), and is rebuilt when any of the tensors is replaced or
# written in place. This table is the Python kernel's; the C++ kernel keeps its own, by the
# same rule (int8_op.cpp).
_PACKED: dict[int, tuple[tuple, Any]] = {}


def _packed_for(weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """fbgemm's packed form of (``weight``, ``scale``, ``bias``), packed once and reused."""
    key = tuple((t.data_ptr(), t._version) for t in (weight, scale, bias) if t is not None)
    hit = _PACKED.get(weight.data_ptr())
    if hit is not None and hit[0] == key:
        return hit[1]
    packed = _pack_dynamic(weight, scale, bias)
    if hit is None:
        weakref.finalize(weight, _PACKED.pop, weight.data_ptr(), None)
    _PACKED[weight.data_ptr()] = (key, packed)
    return packed


def _linear_dynamic(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    reduce_range: bool,
) -> torch.Tensor:
    """``x[M, K]`` float32 times int8 ``weight[N, K]`` (per-row ``scale``) plus ``bias``, on
    fbgemm's dynamic kernel: ``x`` is quantized to uint8 over its range at each call (one
    scale for all M rows; the layer calls it with one row). The op's Python kernel."""
    return torch.ops.quantized.linear_dynamic(x, _packed_for(weight, scale, bias), reduce_range)


# The op ``torch.ops.oficina.int8_linear_dynamic``, defined with torch.library's plain
# registration rather than ``torch.library.custom_op``, whose Python wrapper added ~8 us to each
# of a decode step's ~200 calls (measured); the op has no autograd (inference only). Its CPU
# kernel is C++ (``int8_op.cpp``, built once by ``oficina.infer.native``) where a compiler is
# found, else ``_linear_dynamic``: registered at the first ``dynamic_available()``, which every
# caller asks first. In a compiled SmolLM2 step the Python kernel cost ~36 us a call, 121 calls,
# mostly handing fbgemm's packed object from Python to C++ (README, issue 16); the C++ one packs
# through the op ``oficina::int8_pack`` (``_pack_dynamic``, looked up at each call).
_LIB = torch.library.Library("oficina", "FRAGMENT")
_LIB.define(
    "int8_linear_dynamic(Tensor x, Tensor weight, Tensor scale, Tensor? bias, bool reduce_range)"
    " -> Tensor"
)
_LIB.define(
    "int8_pack(Tensor weight, Tensor scale, Tensor? bias)"
    " -> __torch__.torch.classes.quantized.LinearPackedParamsBase"
)
_LIB.impl("int8_pack", lambda w, s, b: _pack_dynamic(w, s, b), "CPU")
OP_KERNEL: str | None = None  # "C++" or "Python", once registered


@torch.library.register_fake("oficina::int8_linear_dynamic", lib=_LIB)
def _(x, weight, scale, bias, reduce_range):
    return x.new_empty(x.shape[0], weight.shape[0])


def _register_kernel() -> None:
    global OP_KERNEL
    if OP_KERNEL is None:
        from oficina.infer import native

        if native.load("int8_op.cpp") is not None:
            OP_KERNEL = "C++"
        else:
            _LIB.impl("int8_linear_dynamic", _linear_dynamic, "CPU")
            OP_KERNEL = "Python"


def dynamic_available() -> bool:
    """fbgemm's dynamic int8 linear runs in this torch (checked once, on a small layer,
    through the op and the kernel it registers)."""
    global _DYNAMIC_OK
    if _DYNAMIC_OK is None:
        try:
            _register_kernel()
            w, s, x = torch.ones(8, 16, dtype=torch.int8), torch.ones(8), torch.ones(1, 16)
            y = torch.ops.oficina.int8_linear_dynamic(x, w, s, None, REDUCE_RANGE)
            _DYNAMIC_OK = bool(torch.allclose(y, torch.full((1, 8), 16.0), rtol=0.02))
        except (RuntimeError, AttributeError, NotImplementedError, AssertionError):
            _DYNAMIC_OK = False
    return _DYNAMIC_OK


def one_row_kernel() -> str:
    """What a one-row call runs now: ``DECODE_KERNEL``, or "weight-only" where the dynamic
    kernel is missing (``dynamic_available``)."""
    return "dynamic" if DECODE_KERNEL == "dynamic" and dynamic_available() else "weight-only"


def fake_quant_rows(x: torch.Tensor, reduce_range: bool = REDUCE_RANGE) -> torch.Tensor:
    """``x[M, K]`` (float32) as the dynamic kernel sees each row alone: quantized to uint8
    with an affine scale and zero point over the row's range (0 included), then dequantized.

    ``F.linear(fake_quant_rows(x), q * scale[:, None]) + bias`` is what the kernel computes
    for a one-row ``x`` (integer products, exact; float rounding aside): the reference the
    tests and the perplexity measurement of ``benchmarks/decode_kernels.py`` use.
    """
    qmax = 127.0 if reduce_range else 255.0
    lo = x.amin(-1, keepdim=True).clamp_max(0)
    hi = x.amax(-1, keepdim=True).clamp_min(0)
    s = ((hi - lo) / qmax).clamp_min(torch.finfo(torch.float32).tiny)
    zp = torch.round(-lo / s).clamp(0, qmax)
    return (torch.clamp(torch.round(x / s) + zp, 0, qmax) - zp) * s


class Int8Embedding(nn.Module):
    """``nn.Embedding`` whose table is int8 with a float32 scale per row (token)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))
        self.out_dtype = torch.float32

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].to(self.out_dtype) * self.weight_scale[ids, None].to(self.out_dtype)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _tied(model: nn.Module) -> bool:
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    return (
        isinstance(emb, nn.Embedding)
        and isinstance(out, nn.Linear)
        and emb.weight.data_ptr() == out.weight.data_ptr()
    )


def _targets(model: nn.Module, skip: tuple[str, ...]) -> list[str]:
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and not (skip and n.endswith(tuple(skip)))
    ]


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _swap(model: nn.Module, names: list[str], tie: bool, convert: bool) -> None:
    """Replace the named Linear layers (and, when ``tie``, the input embedding) in place.

    ``convert`` quantizes the current float weights; otherwise the new modules are empty
    shells that ``load_state_dict`` fills.
    """
    lm_name = _name_of(model, model.get_output_embeddings())
    for name in names:
        lin = model.get_submodule(name)
        if convert:
            new = Int8Linear.from_linear(lin)
        else:
            new = Int8Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
        _set(model, name, new)
    if tie and lm_name in names:
        emb = model.get_input_embeddings()
        q = Int8Embedding(emb.num_embeddings, emb.embedding_dim, emb.padding_idx)
        q.out_dtype = emb.weight.dtype
        out = model.get_output_embeddings()
        q.weight, q.weight_scale = out.weight, out.weight_scale
        model.set_input_embeddings(q)
        _retie(model, tie)


def _retie(model: nn.Module, tie: bool) -> None:
    """Tied embedding and lm_head hold the very same tensors again (the embedding's)."""
    if not tie:
        return
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    if isinstance(out, Int8Linear):
        out.weight, out.weight_scale = emb.weight, emb.weight_scale
        out._sync_scale()
    else:
        out.weight = emb.weight


def _unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor once (under its first name: the embedding's)."""
    seen, state = set(), {}
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen and v.numel():
            continue
        seen.add(v.data_ptr())
        state[k] = v
    return state


def quantize_int8(model: nn.Module, skip: tuple[str, ...] = SKIP) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers (names not ending in ``skip``) are int8.

    A tied input embedding is quantized with lm_head (same tensors). The float model is left
    as it was. A model with fused projections (``oficina.infer.fuse``) gives a fused int8 one:
    the scheme is per row, so a fused layer's rows quantize as its parts' would.
    """
    model = copy.deepcopy(model)
    tie = _tied(model)
    names = _targets(model, skip)
    if not names:
        raise UserError(f"no nn.Linear layer to quantize (skip={list(skip)})")
    _swap(model, names, tie, convert=True)
    model._oficina_int8 = {"modules": names, "tied": tie}
    return model.eval()


def int8_modules(model: nn.Module) -> list[str]:
    """Names of the model's Int8Linear layers."""
    return [n for n, m in model.named_modules() if isinstance(m, Int8Linear)]


# ---------------------------------------------------------------------------- storage


def save_int8(model: nn.Module, out: str | Path, source: str = "") -> None:
    """Write a ``quantize_int8`` model's weights and recipe into the directory ``out``.

    The caller copies the config and tokenizer files; this writes ``WEIGHTS`` and ``RECIPE``.
    """
    from safetensors.torch import save_file

    from oficina.workspace import atomic_write_json

    info = getattr(model, "_oficina_int8", None)
    if info is None:
        raise UserError("save_int8 needs a model from quantize_int8")
    if fused_modules(model):  # stored under the config's own names (q_proj, not qkv_proj)
        model = copy.deepcopy(model)
        unfuse_projections(model)
    out = Path(out)
    # Tied tensors are stored once (safetensors refuses shared memory); load re-ties them.
    state = {k: v.contiguous() for k, v in _unique_state(model).items()}
    tmp = out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "oficina": METHOD})
    tmp.replace(out / WEIGHTS)
    atomic_write_json(
        out / RECIPE,
        {
            "method": METHOD,
            "format": FORMAT,
            "weights": WEIGHTS,
            "modules": int8_modules(model),
            "tied_embedding": info["tied"],
            "scheme": "per-output-channel symmetric int8, scale = max|row| / 127 (float32)",
            "kernel": "1 row: oficina::int8_linear_row (float activations), or with "
            "OFICINA_INT8_DECODE=dynamic fbgemm dynamic int8 (the row quantized to uint8); "
            "<= 16 rows: torch._weight_int8pack_mm (bf16 activations); more rows: dequantize + "
            "linear",
            "source": source,
        },
    )


def read_recipe(path: str | Path) -> dict:
    """The recipe of an int8 directory; one-line errors for old or foreign ones."""
    p = Path(path)
    try:
        recipe = json.loads(p.read_text())
    except (OSError, ValueError):
        raise UserError(f"{p}: not a readable JSON quantization recipe", exit_code=2) from None
    method = recipe.get("method") if isinstance(recipe, dict) else None
    if method == "int8-dynamic":
        raise UserError(
            f"{p.parent} was written by an older oficina (torch.ao dynamic int8, no longer "
            "supported); quantize its source model again: oficina quantize MODEL --method int8 "
            "--out DIR",
            exit_code=2,
        )
    if method != METHOD or recipe.get("format") != FORMAT:
        raise UserError(
            f"{p}: unknown quantization method {method!r} (format {recipe.get('format')!r}); "
            f"this oficina reads {METHOD} format {FORMAT}",
            exit_code=2,
        )
    mods = recipe.get("modules")
    if not (isinstance(mods, list) and mods and all(isinstance(m, str) for m in mods)):
        raise UserError(f"{p}: 'modules' must be a non-empty list of module names", exit_code=2)
    return recipe


def load_int8(path: str | Path, dtype: str = "float32") -> tuple[nn.Module, Any]:
    """(model, tokenizer) of an int8 directory, in eval mode on the CPU.

    The model is built from its config without initialising weights, the recipe's modules are
    swapped for empty int8 ones, and the checked weight file fills every tensor (strict: a
    missing or extra tensor, or a wrong shape or dtype, is a one-line error).
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from oficina.models.safety import check_safetensors, load_errors
    from oficina.models.sources import load_tokenizer

    path = Path(path)
    recipe = read_recipe(path / RECIPE)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype
    ]
    weights = check_safetensors(path / WEIGHTS)
    with load_errors(path):
        config = AutoConfig.from_pretrained(path)
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        model.tie_weights()  # per the config: skipping the initialisation skips tying too
        tie = bool(recipe.get("tied_embedding"))
        if tie != _tied(model):
            raise UserError(
                f"{path / RECIPE}: tied_embedding={tie} but the config says "
                f"tie_word_embeddings={_tied(model)}",
                exit_code=2,
            )
        names = recipe["modules"]
        known = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        if unknown := [n for n in names if n not in known]:
            raise UserError(
                f"{path / RECIPE}: names Linear layers the model does not have: {unknown[:3]}",
                exit_code=2,
            )
        _swap(model, names, tie, convert=False)
        state = load_file(str(weights))
        _check_state(_unique_state(model), state, weights)
        for k, v in state.items():  # float tensors in the activation dtype; int8 and scales kept
            if v.is_floating_point() and not k.endswith(".weight_scale"):
                v = v.to(torch_dtype)
            # safetensors hands out views at the file's byte offsets; torch's int8 kernel needs
            # the 64-byte alignment of a torch allocation (it crashes on the views).
            state[k] = v.clone() if v.data_ptr() % 64 else v
        model.load_state_dict(state, strict=False, assign=True)
        _retie(model, tie)
        tok = load_tokenizer(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model._oficina_int8 = {"modules": names, "tied": tie}
    return model.eval(), tok


def _check_state(want: dict, state: dict, file: Path) -> None:
    """Every tensor the model needs is in the file with its shape and kind, and nothing else."""
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        raise UserError(
            f"{file}: does not match the model (missing {missing[:3]}, unexpected {extra[:3]}); "
            "quantize the source model again",
            exit_code=2,
        )
    for k, v in want.items():
        t = state[k]
        if tuple(t.shape) != tuple(v.shape) or (t.dtype == torch.int8) != (v.dtype == torch.int8):
            raise UserError(
                f"{file}: tensor {k} is {t.dtype}{list(t.shape)}, the model needs "
                f"{v.dtype}{list(v.shape)}; quantize the source model again",
                exit_code=2,
            )
