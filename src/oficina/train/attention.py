"""Which attention kernel a training batch runs: eager on short batches, SDPA on long ones.

Transformers' ``eager`` attention (two matmuls and a float32 softmax) is faster on this CPU than
SDPA's flash kernel for short rows, and no slower up to 256 tokens. One SmolLM2 attention layer
(batch 4, 9 heads of 64, bf16, 2 threads), forward + backward, eager's time over SDPA's:
96 tokens 0.57, 128 0.61, 160 0.68, 192 0.94, 224 0.98, 256 1.02 (2026-11-30, load ~2;
``benchmarks/train.py --what lora-step`` measures a whole LoRA step of the ladder's shape: 1.16×
faster with eager). Eager keeps a ``[batch, heads, len, len]`` float32 score tensor per layer
for the backward, so long batches keep SDPA, whose memory is linear in length.

``fit`` calls ``AttentionByLength(models)(batch)`` before each forward (training and
validation); the models' own setting comes back when the run ends (``restore``). Models set to
anything but ``sdpa`` (flash attention, a hub kernel) are left alone, as are compiled runs
(switching kernels would recompile the graph).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from oficina.train.checkpoint import unwrap
from oficina.train.fused_ce import strip_wrappers

# Longest padded batch that takes eager attention: 192 tokens is the last length measured
# faster (0.94× the time), above it the two are within noise and eager's memory grows as len².
EAGER_MAX_LEN = 192


class AttentionByLength:
    """Sets eager attention for batches of at most ``EAGER_MAX_LEN`` tokens, SDPA above."""

    def __init__(self, models: Iterable[nn.Module]):
        self.configs = []
        for m in models:
            inner = strip_wrappers(unwrap(m))
            cfg = getattr(inner, "config", None)
            if getattr(cfg, "_attn_implementation", None) == "sdpa" and all(
                cfg is not c for c in self.configs
            ):
                self.configs.append(cfg)
        self.current = "sdpa"

    def __call__(self, batch: dict) -> str:
        """Choose the kernel for ``batch`` (by its padded length); returns the choice."""
        want = "eager" if batch["input_ids"].shape[-1] <= EAGER_MAX_LEN else "sdpa"
        if want != self.current:
            for cfg in self.configs:
                cfg._attn_implementation = want
            self.current = want
        return want

    def restore(self) -> None:
        for cfg in self.configs:
            cfg._attn_implementation = "sdpa"
        self.current = "sdpa"
