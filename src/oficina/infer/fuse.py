"""Fused projections for decoding: q/k/v as one matmul per layer, gate/up as one.

A batch-1 decode step of a Llama-style model makes 7 matmul calls per layer (q, k, v, o, gate,
up, down) plus lm_head: 211 for SmolLM2's 30 layers. Each is small (a GEMV of one row), so a
call's fixed cost — Python and dispatch in eager, and on 2 threads the second OpenMP thread
woken at every call (~25 us measured in fbgemm) — is a large share of it. q/k/v read the same
input, and so do gate/up: ``fuse_projections`` concatenates their weights once (rows stacked,
``[q; k; v]`` and ``[gate; up]``) into one layer each, ``qkv_proj`` and ``gate_up_proj``, so a
step makes 4 calls per layer + 1 (121 for SmolLM2). Float32, bf16 and int8 alike
(``oficina.infer.int8.Int8Linear.stack``: per-output-channel scales stack with their rows).

How the model's own forward keeps working, unchanged: the layer's input goes through the fused
projection first, and the model's forward (Hugging Face's, not copied) then gets that output in
place of its input; ``q_proj``, ``k_proj``, ``v_proj`` (``gate_proj``, ``up_proj``) become
``FusedPart`` modules that return their columns of it. This holds only for a forward that reads
its input through those projections and otherwise only its leading shape (``x.shape[:-1]``,
which the fused output shares): ``KNOWN`` lists the classes whose forward was read to do so
(tests check their source). Any other module — another architecture, a PEFT-wrapped layer,
projections of unequal kinds — is left as it was.

Numbers: each output element is the same dot product as before; float results can differ in the
last bits (the GEMM of a larger matrix may block its sums differently), int8 ones do not (one
row's activations are quantized once per call either way, and they are the same row).

``unfuse_projections`` undoes it (``oficina.infer.int8.save_int8`` stores canonical names, which
plain ``transformers`` configs describe).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

# Class name -> (projections fused, in order; the fused layer's name). Each forward was read
# (transformers 5.23): its input reaches nothing but these projections and ``.shape[:-1]``.
KNOWN: dict[str, tuple[tuple[str, ...], str]] = {
    f"{arch}{kind}": spec
    for arch in ("Llama", "Mistral", "Qwen2", "Qwen3")
    for kind, spec in (
        ("Attention", (("q_proj", "k_proj", "v_proj"), "qkv_proj")),
        ("MLP", (("gate_proj", "up_proj"), "gate_up_proj")),
    )
}


class FusedPart(nn.Module):
    """Columns ``start:stop`` of a fused projection's output (what one projection computed)."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, fused_out: torch.Tensor) -> torch.Tensor:
        return fused_out[..., self.start : self.stop]

    def extra_repr(self) -> str:
        return f"columns {self.start}:{self.stop} of the fused projection"


def _fused_forward(self, *args, **kwargs):
    """The wrapped class's forward, with its input replaced by the fused projection's output."""
    proj = getattr(self, self._fused_name)
    if args:
        args = (proj(args[0]), *args[1:])
    else:
        kwargs[self._fused_arg] = proj(kwargs[self._fused_arg])
    return self._unfused_class.forward(self, *args, **kwargs)


_CLASSES: dict[type, type] = {}  # original class -> its fused subclass


def _fused_class(cls: type, fused_name: str) -> type:
    """A subclass of ``cls`` (one per class) whose forward is ``_fused_forward``."""
    if cls not in _CLASSES:
        arg = list(inspect.signature(cls.forward).parameters)[1]  # after self: hidden_states, x
        _CLASSES[cls] = type(
            f"Fused{cls.__name__}",
            (cls,),
            {
                "forward": _fused_forward,
                "_fused_name": fused_name,
                "_fused_arg": arg,
                "_unfused_class": cls,
                "__module__": __name__,
            },
        )
    return _CLASSES[cls]


def _kind(m: nn.Module) -> type | None:
    """The layer's class if it can be stacked: ``nn.Linear`` exactly (a subclass or a wrapper
    may compute something else), or a class with ``stack``/``rows`` (``int8.Int8Linear``)."""
    t = type(m)
    return t if t is nn.Linear or (hasattr(t, "stack") and hasattr(t, "rows")) else None


def _stack(parts: list[nn.Module]) -> nn.Module:
    """One layer whose output is the parts' outputs side by side (their rows stacked)."""
    first = parts[0]
    if type(first) is not nn.Linear:
        return type(first).stack(parts)
    bias = None if first.bias is None else torch.cat([p.bias.detach() for p in parts])
    w = torch.cat([p.weight.detach() for p in parts])
    return _linear(w, bias, first.weight.requires_grad)


def _linear(w: torch.Tensor, bias: torch.Tensor | None, grad: bool) -> nn.Linear:
    m = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta", dtype=w.dtype)
    m.weight = nn.Parameter(w, requires_grad=grad)
    if bias is not None:
        m.bias = nn.Parameter(bias, requires_grad=grad)
    return m


def _rows(fused: nn.Module, a: int, b: int) -> nn.Module:
    """Rows ``a:b`` of a fused layer as a layer of their own (contiguous, row-major)."""
    if type(fused) is not nn.Linear:
        return fused.rows(a, b)
    bias = None if fused.bias is None else fused.bias.detach()[a:b].clone()
    return _linear(fused.weight.detach()[a:b].contiguous(), bias, fused.weight.requires_grad)


def _fusable(m: nn.Module) -> tuple[tuple[str, ...], str] | None:
    """(projections, fused name) if ``m`` is a known module whose projections can be fused."""
    spec = KNOWN.get(type(m).__name__)
    if spec is None:
        return None
    parts = [getattr(m, n, None) for n in spec[0]]
    kinds = {_kind(p) for p in parts}
    if None in kinds or len(kinds) != 1 or hasattr(m, spec[1]):
        return None
    w = [p.weight for p in parts]
    same = (
        len({p.in_features for p in parts}) == 1
        and len({p.bias is None for p in parts}) == 1
        and len({(t.dtype, t.device) for t in w}) == 1
    )
    return spec if same else None


def fuse_projections(model: nn.Module) -> list[str]:
    """Fuse q/k/v and gate/up of every module ``_fusable`` allows, in place.

    Returns the names of the fused layers created (``...self_attn.qkv_proj``, ``...mlp.gate_up_proj``).
    """
    done = []
    with torch.no_grad():
        for name, m in list(model.named_modules()):
            spec = _fusable(m)
            if spec is None:
                continue
            names, fused_name = spec
            parts = [getattr(m, n) for n in names]
            setattr(m, fused_name, _stack(parts))
            start = 0
            for n, p in zip(names, parts, strict=True):
                setattr(m, n, FusedPart(start, start + p.out_features))
                start += p.out_features
            m.__class__ = _fused_class(type(m), fused_name)
            done.append(f"{name}.{fused_name}" if name else fused_name)
    return done


def fused_modules(model: nn.Module) -> list[str]:
    """Names of the modules ``fuse_projections`` changed (those it can undo)."""
    return [n for n, m in model.named_modules() if type(m) in _CLASSES.values()]


def unfuse_projections(model: nn.Module) -> list[str]:
    """Undo ``fuse_projections`` in place: each projection a layer of its own again.

    Returns the names of the modules restored.
    """
    done = []
    with torch.no_grad():
        for name in fused_modules(model):
            m = model.get_submodule(name) if name else model
            fused = getattr(m, m._fused_name)
            parts = [(n, p) for n, p in m.named_children() if isinstance(p, FusedPart)]
            for n, p in parts:
                setattr(m, n, _rows(fused, p.start, p.stop))
            delattr(m, m._fused_name)
            m.__class__ = m._unfused_class
            done.append(name)
    return done
