"""Weight layout for batch-1 decoding: tall float32 Linear weights stored column-major.

A decode step of one row multiplies a single activation row by every weight matrix (a GEMV),
so it is bound by how fast the kernel streams the weights. ``F.linear(x, W)`` with ``W[N, K]``
stored row-major runs MKL's sgemv as N dot products of length K; stored column-major (the
memory of a contiguous ``W.T``), the same call runs it as K scaled additions of length N.
Measured on SmolLM2's shapes (``benchmarks/decode_kernels.py``, 2-core AMD EPYC, torch 2.13 with
MKL 2024.2), the second is ~2x faster when the matrix has more outputs than inputs — lm_head
576->49152 (6.7 vs 15.2 ms) and gate/up 576->1536 (306 vs 502 us) — and slower when it has
fewer (down 1536->576: 544 vs 248 us), so only weights with ``out_features > in_features`` are
moved. ``relayout_for_decode`` rewrites such a weight in place (same ``Parameter``, same shape
``[N, K]`` and values, strides ``(1, N)``): no extra memory, no change to any module or to the
state dict's names, tied weights stay tied (the embedding reads rows of the strided table as
fast), and every caller of the model — prefill GEMMs, scoring, plain ``transformers`` — gets
the same numbers up to float summation order (greedy tokens equal ``model.generate`` on a
model loaded the usual way: tested).

Only float32: bf16 and int8 run other kernels (``oficina.infer.int8``).
"""

from __future__ import annotations

import torch
from torch import nn


def relayout_for_decode(model: nn.Module) -> list[str]:
    """Store every float32 ``nn.Linear`` weight with more outputs than inputs column-major.

    Returns the names of the layers moved (a weight shared by several layers, such as a tied
    lm_head, is moved once and named once).
    """
    moved, seen = [], set()
    with torch.no_grad():
        for name, m in model.named_modules():
            if not isinstance(m, nn.Linear) or m.weight.dtype != torch.float32:
                continue
            w = m.weight
            if m.out_features <= m.in_features or id(w) in seen or w.device.type != "cpu":
                continue
            seen.add(id(w))
            if w.stride() != (1, w.shape[0]):
                w.data = w.data.t().contiguous().t()
            moved.append(name)
    return moved
