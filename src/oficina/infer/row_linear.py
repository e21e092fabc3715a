"""One activation row times a float weight: the GEMV of every batch-1 decode step, in C++.

A decode step with one row multiplies it by every weight matrix once, ~120 times a token for
SmolLM2, and is bound by how fast the weights stream from memory. ``F.linear`` hands a one-row
float32 call to MKL's sgemv, which streamed SmolLM2's weights at 7-11 GB/s on 2 AMD Zen 4 cores
(``benchmarks/decode_kernels.py``); bfloat16 goes to oneDNN, not much faster per byte. The op
``torch.ops.oficina.linear_row(x, weight, bias)`` is a plain loop over the weight's rows, one
float32 dot product each, split across torch's threads (``row_linear.cpp``, compiled for this CPU
by ``oficina.infer.native``): one step's matmuls took 25 ms instead of 67 in float32 and 14
instead of 36 in bfloat16 there (``benchmarks/decode_kernels.py``, 2026-12-02; README, issue 16). ``int8_linear_row(x, weight, scale, bias)`` is
the same loop over int8 weights with a float32 scale per row (``oficina.infer.int8``'s one-row
weight-only calls): the activations stay float, the products exact.

``use_row_kernel(model)`` turns every plain float32/bfloat16 ``nn.Linear`` into a ``RowLinear``
(same parameters, names and state dict; only ``forward`` differs): a call with exactly one row
and no gradient to record runs the op, anything else ``F.linear``. ``Engine.from_spec`` does it,
so every verb's decode steps use it, compiled or not (the op has a fake kernel for tracing).
Where no compiler is found the op's kernel is ``F.linear`` itself (the same numbers, no gain) and
``KERNEL`` says "Python".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LIB = torch.library.Library("oficina", "FRAGMENT")
_LIB.define("linear_row(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
_LIB.define("int8_linear_row(Tensor x, Tensor weight, Tensor scale, Tensor? bias) -> Tensor")
KERNEL: str | None = None  # "C++" or "Python", once registered


@torch.library.register_fake("oficina::linear_row", lib=_LIB)
def _(x, weight, bias):
    return x.new_empty(1, weight.shape[0])


@torch.library.register_fake("oficina::int8_linear_row", lib=_LIB)
def _(x, weight, scale, bias):
    return x.new_empty(1, weight.shape[0])


def _python_kernel(x, weight, bias):
    return F.linear(x.reshape(1, -1), weight, bias)


def _int8_python_kernel(x, weight, scale, bias):
    y = F.linear(x.reshape(1, -1).float(), weight.float()) * scale
    return (y if bias is None else y + bias.float()).to(x.dtype)


def kernel() -> str:
    """Register the op's CPU kernel once (C++ where it builds, else ``F.linear``); which one."""
    global KERNEL
    if KERNEL is None:
        from oficina.infer import native

        if native.load("row_linear.cpp") is not None:
            KERNEL = "C++"
        else:
            _LIB.impl("linear_row", _python_kernel, "CPU")
            _LIB.impl("int8_linear_row", _int8_python_kernel, "CPU")
            KERNEL = "Python"
    return KERNEL


class RowLinear(nn.Linear):
    """``nn.Linear`` whose one-row calls without autograd run ``oficina::linear_row``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (
            x.numel() == self.in_features
            and x.dtype == w.dtype
            and w.is_contiguous()
            and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
        ):
            y = torch.ops.oficina.linear_row(x, w, self.bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, w, self.bias)

    # ``oficina.infer.fuse`` stacks and splits layers of a class that has these two.
    @classmethod
    def stack(cls, parts: list[nn.Module]) -> RowLinear:
        w = torch.cat([p.weight.detach() for p in parts])
        b = None if parts[0].bias is None else torch.cat([p.bias.detach() for p in parts])
        return _row_linear(w, b, parts[0].weight.requires_grad)

    def rows(self, a: int, b: int) -> RowLinear:
        bias = None if self.bias is None else self.bias.detach()[a:b].clone()
        w = self.weight.detach()[a:b].contiguous()
        return _row_linear(w, bias, self.weight.requires_grad)


def _row_linear(w: torch.Tensor, bias: torch.Tensor | None, grad: bool) -> RowLinear:
    m = RowLinear(w.shape[1], w.shape[0], bias=bias is not None, device="meta", dtype=w.dtype)
    m.weight = nn.Parameter(w, requires_grad=grad)
    if bias is not None:
        m.bias = nn.Parameter(bias, requires_grad=grad)
    return m


def use_row_kernel(model: nn.Module) -> list[str]:
    """Make every plain float32/bfloat16 CPU ``nn.Linear`` of ``model`` a ``RowLinear`` in
    place, with its weight row-major; the names of the layers changed. Registers the kernel."""
    kernel()
    done = []
    with torch.no_grad():
        for name, m in model.named_modules():
            w = getattr(m, "weight", None)
            if type(m) is not nn.Linear or w.device.type != "cpu":
                continue
            if w.dtype not in (torch.float32, torch.bfloat16):
                continue
            if not w.is_contiguous():  # a column-major weight (oficina.infer.layout)
                w.data = w.data.contiguous()
            m.__class__ = RowLinear
            done.append(name)
    return done
