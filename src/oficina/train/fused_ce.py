"""Chunked, fused output layer + cross-entropy: the loss of a causal LM without its logits.

Why: with a 49k-token vocabulary and a small model (the ``mini`` preset has ~10M non-embedding
parameters), the output layer and the float32 cross-entropy over ``[tokens, vocab]`` logits are
about half of every training step. The plain path writes the bf16 logits, copies them to
float32, log-softmaxes them, keeps them for backward, then fills a zero gradient of the same
size, scatters into it and copies it back to bf16 — half a dozen passes over a 400 MB tensor
per 2,048 tokens, all memory traffic on a CPU.

``fused_linear_cross_entropy(hidden, weight, targets)`` (in the style of Liger-Kernel's
FusedLinearCrossEntropy and Apple's Cut Cross-Entropy) instead walks the target tokens in
chunks. For each chunk it computes the logits in the compute dtype (bf16 under autocast),
their log-softmax in float32, the loss, and at once the gradient of the logits
(``softmax - one_hot``), which it turns straight into the gradients of the hidden states and
of the output weight (two matmuls). Only a ``[chunk, vocab]`` block ever exists; backward just
scales the stored gradients by the incoming one. Tokens whose target is ``ignore_index`` are
dropped before the matmuls, so masked prompt tokens (SFT) cost nothing.

The loss is the mean over the target tokens that are not ignored — exactly what
``F.cross_entropy(..., ignore_index=-100)`` returns (NaN when there are none, as there).

``causal_lm_parts(model)`` says whether a model can take this path: a Hugging Face decoder-only
LM whose logits are a bias-free ``nn.Linear`` of the last hidden state (tied or not), possibly
under PEFT (LoRA on the decoder; the head must be untouched) or ``torch.compile``. It returns
``None`` — and the objective falls back to the plain logits — for DDP/FSDP wrappers (their
hooks run in the wrapper's ``forward``), for heads with soft-capping or scaling, and for model
types not known to be plain. Distillation needs the student's full distribution, so ``KD`` does
not use the fused loss; it uses ``causal_lm_parts`` to run the output layers only at the target
positions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
# Target tokens per chunk: as many as keep one chunk's logits near 2**27 elements (256 MB in
# bf16), a power of two in 256..8192 — 2,048 rows for a 49k vocabulary, 1,024 for 128k. Larger
# chunks give the [vocab, d] matmuls better shapes (d(hidden) = g @ W ran 360 -> 660 GFLOP/s
# from 1,024 to 2,048 rows here); the ceiling bounds the memory.
CHUNK_ELEMENTS = 2**27


def auto_chunk(vocab_size: int) -> int:
    """Rows per chunk for a vocabulary of ``vocab_size`` (see CHUNK_ELEMENTS)."""
    rows = max(CHUNK_ELEMENTS // max(vocab_size, 1), 256)
    return min(1 << (rows.bit_length() - 1), 8192)


# Model types whose CausalLM forward is exactly ``lm_head(decoder(...).last_hidden_state)``.
PLAIN_CAUSAL_LMS = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "olmo2"})


# ---------------------------------------------------------------------------- the function


def _softmax_grad_eager(logits: torch.Tensor, t: torch.Tensor):
    """(sum of -log softmax(logits)[t], softmax - one_hot(t) in logits' dtype); fp32 inside."""
    logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
    picked = logp.gather(1, t.unsqueeze(1))
    g = logp.exp_()
    g.scatter_add_(1, t.unsqueeze(1), torch.full_like(picked, -1.0))
    return -picked.sum(), g.to(logits.dtype)


def _softmax_grad_fusable(logits: torch.Tensor, t: torch.Tensor):
    """The same, written so torch.compile fuses it into one pass per row (max, sum of exp,
    then the gradient written straight in the compute dtype: no float32 [chunk, vocab])."""
    x = logits.float()
    m = x.amax(-1, keepdim=True)
    e = (x - m).exp()
    s = e.sum(-1, keepdim=True)
    loss = (m + s.log() - x.gather(1, t.unsqueeze(1))).sum()
    cols = torch.arange(x.shape[1], device=x.device)
    g = e / s
    g = torch.where(cols.unsqueeze(0) == t.unsqueeze(1), g - 1.0, g)
    return loss, g.to(logits.dtype)


_COMPILED: dict[str, object] = {}
# what ``compiled=None`` means; ``fit`` turns it on for the run under ``--train.compile``
COMPILE_KERNEL = {"on": False}


def _kernel(compiled: bool):
    if not compiled:
        return _softmax_grad_eager
    if "k" not in _COMPILED:
        _COMPILED["k"] = torch.compile(_softmax_grad_fusable, dynamic=True)
    return _COMPILED["k"]


def _compiled_works() -> bool:
    """Compile the kernel once on a small input; False (eager from then on) if that fails,
    e.g. no C++ compiler on the machine."""
    if "ok" not in _COMPILED:
        try:
            _kernel(True)(torch.zeros(2, 8, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.long))
            _COMPILED["ok"] = True
        except Exception as e:  # noqa: BLE001 - any backend failure means: stay eager
            import warnings

            warnings.warn(
                f"fused cross-entropy stays eager: torch.compile failed ({e})", stacklevel=2
            )
            _COMPILED["ok"] = False
    return bool(_COMPILED["ok"])


class _LinearCrossEntropy(torch.autograd.Function):
    """mean CE of ``hidden @ weight.T`` against ``targets``; gradients made in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_size, compute_dtype, compiled):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        keep = (targets != ignore_index).nonzero().squeeze(1)
        n = keep.numel()
        all_kept = n == targets.numel()
        h = hidden if all_kept else hidden.index_select(0, keep)
        t = targets if all_kept else targets.index_select(0, keep)
        hc = h.to(compute_dtype)
        wc = weight.to(compute_dtype)
        kernel = _kernel(compiled)
        loss_sum = torch.zeros((), dtype=torch.float32)
        grad_h = torch.empty(h.shape, dtype=compute_dtype) if need_h else None
        # accumulated by addmm_ in the compute dtype: the matmul library adds into the output
        # in float32 before rounding, so k chunks round k times (the plain path: once)
        grad_w = torch.zeros(weight.shape, dtype=compute_dtype) if need_w else None
        for s in range(0, n, chunk_size):
            hs, ts = hc[s : s + chunk_size], t[s : s + chunk_size]
            logits = hs @ wc.T
            if not (need_h or need_w):
                logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
                loss_sum -= logp.gather(1, ts.unsqueeze(1)).sum()
                continue
            part, g = kernel(logits, ts)
            loss_sum += part
            del logits
            if need_h:
                torch.mm(g, wc, out=grad_h[s : s + chunk_size])
            if need_w:
                grad_w.addmm_(g.T, hs)
        loss = loss_sum / n  # NaN when every target is ignored, as F.cross_entropy
        if need_h:
            gh = grad_h.to(hidden.dtype).div_(n)
            if not all_kept:
                gh = torch.zeros_like(hidden).index_copy_(0, keep, gh)
            grad_h = gh
        if need_w:
            grad_w = grad_w.to(weight.dtype).div_(n)
        ctx.save_for_backward(
            grad_h if need_h else torch.empty(0), grad_w if need_w else torch.empty(0)
        )
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        return (
            grad_h * grad_out.to(grad_h.dtype) if need_h else None,
            grad_w * grad_out.to(grad_w.dtype) if need_w else None,
            None,
            None,
            None,
            None,
            None,
        )


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
    compiled: bool | None = None,
) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, targets, ignore_index=...)`` (mean over kept
    targets) without materialising the logits. ``hidden``: ``[..., d]``; ``weight``:
    ``[vocab, d]``; ``targets``: ``[...]``. Under CPU autocast the matmuls run in its dtype
    (bf16) and the softmax in float32, as the plain path does; otherwise in ``hidden``'s dtype.
    ``chunk_size``: target tokens per chunk (None: ``auto_chunk`` of the vocabulary).
    ``compiled``: fuse the per-chunk softmax and gradient with torch.compile (several times
    less memory traffic; the first call compiles for ~15 s; eager if compiling fails); None:
    as ``COMPILE_KERNEL`` says (off, except inside ``fit`` with ``--train.compile``).
    """
    if chunk_size is None:
        chunk_size = auto_chunk(weight.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    if h.shape[0] != t.shape[0]:
        raise ValueError(f"{h.shape[0]} hidden rows but {t.shape[0]} targets")
    if torch.is_autocast_enabled("cpu"):
        compute = torch.get_autocast_dtype("cpu")
    else:
        compute = torch.promote_types(h.dtype, weight.dtype)
    with torch.autocast("cpu", enabled=False):
        if compiled is None:
            compiled = COMPILE_KERNEL["on"]
        compiled = compiled and _compiled_works()
        return _LinearCrossEntropy.apply(h, weight, t, ignore_index, chunk_size, compute, compiled)


def reference_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """The plain path (full logits, float32 cross-entropy), for tests and comparisons."""
    logits = F.linear(hidden.reshape(-1, hidden.shape[-1]), weight)
    return F.cross_entropy(logits.float(), targets.reshape(-1), ignore_index=ignore_index)


# ---------------------------------------------------------------------------- which models


def strip_wrappers(model):
    """Under torch.compile's OptimizedModule and PEFT's wrappers; None under DDP/FSDP."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch build without distributed
        FSDPModule = ()  # noqa: N806
    for _ in range(8):
        if isinstance(model, FSDPModule):
            return None
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif type(model).__module__.startswith("peft.") and hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            return None  # DDP (or another wrapper whose forward does the work)
        else:
            return model
    return None


def is_plain_causal(m) -> bool:
    """Is ``m`` (already stripped of wrappers) a decoder known to be plain: purely causal
    attention, logits a bias-free linear layer of the last hidden state?"""
    return getattr(getattr(m, "config", None), "model_type", None) in PLAIN_CAUSAL_LMS


def causal_lm_parts(model) -> tuple[nn.Module, nn.Linear] | None:
    """(decoder, output layer) when ``model``'s logits are ``head(decoder(...)[0])``, else None."""
    m = strip_wrappers(model)
    if m is None or not is_plain_causal(m):
        return None
    cfg = m.config
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(cfg, attr, None) not in (None, 1, 1.0):
            return None
    get_head, get_decoder = (
        getattr(m, "get_output_embeddings", None),
        getattr(m, "get_decoder", None),
    )
    if get_head is None or get_decoder is None:
        return None
    head, decoder = get_head(), get_decoder()
    if type(head) is not nn.Linear or head.bias is not None or not isinstance(decoder, nn.Module):
        return None
    if decoder is m:
        return None
    return decoder, head


def compile_decoder(model) -> Callable[[], None] | None:
    """``torch.compile`` the decoder stack of a model that takes the fused path, in place.

    The loss then runs eagerly around the compiled decoder (compiling the whole model would
    bake in the full logits). Returns a function that undoes it, or None when ``model`` does
    not take the fused path.
    """
    parts = causal_lm_parts(model)
    if parts is None:
        return None
    decoder = parts[0]
    decoder.compile()

    def undo() -> None:
        decoder._compiled_call_impl = None

    return undo
