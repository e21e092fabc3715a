"""Frozen weights stored in the autocast dtype for the length of a run (LoRA's fast path).

Autocast keeps a cast copy only of leaf tensors that require grad, so under bf16 autocast each
frozen ``nn.Linear`` weight (all of the base model under LoRA) is read in float32 and written
in bf16 again on every forward, and that copy lives until backward: on SmolLM2-135M, ~106M
parameters a step, ~1/3 of the ``aten::copy_`` time of a LoRA step of the ladder's shape.
``FrozenCast(model, torch.bfloat16)`` stores those weights (and their biases) in bf16 instead.
Autocast rounds a float32 weight to bf16 the same way (round to nearest even), so the matmuls
see the very same operands and a LoRA run's losses are those of the float32-stored model.

Left alone: trainable parameters (LoRA's A/B and their AdamW state stay float32, and so does a
saved adapter), the input embedding (``nn.Embedding`` is not autocast, so the residual stream
stays float32; a tied output layer is that same matrix), norms. The float32 tensors are kept,
so ``restore()`` puts them back bit for bit, and ``originals()`` lends them to code that runs
the model without autocast (a validation hook) for its duration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_ORIGINAL, _CAST = 1, 2  # positions in a swap: (parameter, original tensor, cast tensor)


class FrozenCast:
    """Stores ``model``'s frozen ``nn.Linear`` weights and biases in ``dtype`` until ``restore``."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        skip = {id(p) for p in model.parameters() if p.requires_grad}
        if isinstance(emb, nn.Embedding):
            skip.add(id(emb.weight))
        seen: set[int] = set()
        self._swaps: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        for mod in model.modules():
            if not isinstance(mod, nn.Linear):
                continue
            for p in (mod.weight, mod.bias):
                if p is None or id(p) in skip | seen or not p.is_floating_point():
                    continue
                seen.add(id(p))
                if p.dtype != dtype:
                    self._swaps.append((p, p.data, p.data.to(dtype)))
        self._apply(_CAST)

    @property
    def count(self) -> int:
        """How many tensors are stored in the new dtype."""
        return len(self._swaps)

    def _apply(self, which: int) -> None:
        for swap in self._swaps:
            swap[0].data = swap[which]

    def restore(self) -> None:
        """The original tensors back in place (exactly)."""
        self._apply(_ORIGINAL)

    @contextlib.contextmanager
    def originals(self) -> Iterator[None]:
        """The original tensors in place inside the ``with`` block, the cast ones after."""
        self.restore()
        try:
            yield
        finally:
            self._apply(_CAST)
