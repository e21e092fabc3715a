"""What a piece of work cost, measured one way everywhere: peak memory of a span of work,
parameter counts, dollars for seconds of hardware.

    from oficina.measure import peak_memory, param_counts

    with peak_memory() as mem:
        train_or_infer()
    print(mem.peak_mb, mem.method)          # the span's own high-water mark
    total, trainable = param_counts(model)

Peak memory is the resident-set high-water mark of this process *from the start of the span*:
on Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's ``VmHWM`` to the current
RSS, and ``VmHWM`` read at the end is the span's peak (whatever the process already held at the
start — loaded weights, heap kept from earlier work — counts, since it was resident). Spans nest:
before an inner span resets the mark, every open outer span folds in the peak seen so far, so an
outer span never loses what happened before an inner one. Where ``clear_refs`` is unavailable the
fallback is ``getrusage``'s ``ru_maxrss`` — the peak of the whole process life — and ``method``
says so. ``tracemalloc`` is not used: it does not see PyTorch's allocations.
"""

from __future__ import annotations

import re
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LIFETIME = "ru_maxrss (process lifetime)"
SPAN = "VmHWM (reset at the start of the span)"


def _status_kb(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def process_peak_mb() -> float:
    """Peak resident memory of the whole process life (``getrusage``)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB here


def current_mb() -> float | None:
    """Resident memory now (Linux), or None."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def _hwm_mb() -> float | None:
    kb = _status_kb("VmHWM")
    return kb / 1024 if kb is not None else None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _hwm_mb() is not None


@dataclass
class MemorySpan:
    """The peak of one span of work; ``peak_mb`` is final when the ``with`` block ends."""

    method: str = LIFETIME
    start_mb: float | None = None
    peak_mb: float = 0.0
    wall_s: float = 0.0
    _folded: float = field(default=0.0, repr=False)
    _t0: float = field(default=0.0, repr=False)

    def peak_so_far(self) -> float:
        """The span's peak up to now (usable inside the ``with`` block)."""
        if self.method == SPAN:
            hwm = _hwm_mb()
            if hwm is not None:
                return max(self._folded, hwm)
        return process_peak_mb()

    def stop(self) -> MemorySpan:
        """End the span: fix ``peak_mb`` and ``wall_s`` (idempotent)."""
        if self in _open:
            self.wall_s = time.perf_counter() - self._t0
            self.peak_mb = self.peak_so_far()
            _open.remove(self)
        return self


_open: list[MemorySpan] = []


def start_span() -> MemorySpan:
    """Start measuring; call ``.stop()`` at the end (``peak_memory()`` does both)."""
    span = MemorySpan()
    hwm = _hwm_mb()
    if hwm is not None:  # the reset below would erase what open outer spans have seen so far
        for outer in _open:
            outer._folded = max(outer._folded, hwm)
    if _reset_hwm():
        span.method = SPAN
    span.start_mb = current_mb()
    _open.append(span)
    span._t0 = time.perf_counter()
    return span


@contextmanager
def peak_memory() -> Iterator[MemorySpan]:
    """Measure the resident-memory peak (and wall time) of the ``with`` block alone."""
    span = start_span()
    try:
        yield span
    finally:
        span.stop()


def param_counts(model: Any) -> tuple[int, int]:
    """(all parameters, trainable parameters), each shared tensor counted once."""
    total = trainable = 0
    for p in model.parameters():  # .parameters() already yields a tied tensor once
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def usd(seconds: float, usd_per_hour: float) -> float:
    """Dollars for ``seconds`` of a machine billed at ``usd_per_hour``."""
    return seconds / 3600.0 * usd_per_hour


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX), per oneDNN.

    Where it does not (AVX2 only), bf16 math is emulated: on the 2-core AVX2 EPYC a SmolLM2 LoRA
    step under bf16 autocast took 272 s against 53 s in float32 (2026-11-30, load ~4.7). Native
    is not faster: ``fast_bf16`` says where bf16 wins, which is what ``auto`` follows.
    """
    global _NATIVE_BF16
    if _NATIVE_BF16 is None:
        import torch

        try:
            _NATIVE_BF16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            _NATIVE_BF16 = False
    return _NATIVE_BF16


_NATIVE_BF16: bool | None = None


def fast_bf16() -> bool:
    """Whether bf16 is the faster precision here: where the CPU has AMX tiles, or is an AMD CPU
    that computes bf16 (AVX-512 BF16: Zen 4 and later). The same instructions do not win on
    every CPU, so the rule is what was measured (``benchmarks/train.py --what precision
    --steps 4``, a LoRA step of the ladder's shape and a scoring forward, quiet, same run each):

    * 2-core Intel Xeon with AVX-512 BF16, no AMX: LoRA 110 tokens/s in bf16 against 195 in
      float32 (0.57x), scoring 1.35x float32's time; the demo there ran 1 h 25 min in bf16
      (2026-12-02).
    * 2-core AMD EPYC Zen 4 (AVX-512 BF16, no AMX): LoRA 245 vs 155 and 254 vs 138 tokens/s
      (1.58x, 1.84x), scoring 0.57x and 0.54x float32's time (two runs, 2026-12-02); the demo
      there ran 1 h 16 min in float32.
    * With AMX, bf16 is what makes the demo 27 min on a 2-core Xeon.

    An Intel CPU with AVX-512 BF16 and no AMX, or a CPU not measured, gets float32."""
    global _FAST_BF16
    if _FAST_BF16 is None:
        import torch

        try:
            amx = bool(torch.cpu._is_amx_tile_supported())
        except (AttributeError, RuntimeError):
            amx = False
        _FAST_BF16 = amx or (cpu_vendor() == "AuthenticAMD" and native_bf16())
    return _FAST_BF16


def cpu_vendor() -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD"...) from /proc/cpuinfo; "" when
    there is none to read (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


_FAST_BF16: bool | None = None


def auto_precision(precision: str) -> str:
    """``"auto"`` → ``"bf16"`` where it is the faster precision (``fast_bf16``: AMX, or AMD
    with AVX-512 BF16), else
    ``"fp32"``; any other value is returned as given (an explicit choice is kept)."""
    if precision != "auto":
        return precision
    return "bf16" if fast_bf16() else "fp32"


def auto_dtype(dtype: str) -> str:
    """``"auto"`` → ``"bfloat16"`` or ``"float32"``, as ``auto_precision`` decides."""
    if dtype != "auto":
        return dtype
    return {"bf16": "bfloat16", "fp32": "float32"}[auto_precision("auto")]


def emulated_bf16_note(what: str) -> str | None:
    """One line warning that ``what`` runs in bf16 on a CPU that emulates it, else None."""
    if native_bf16():
        return None
    return (
        f"{what} runs in bf16, which this CPU emulates (no AVX-512 BF16 or AMX): expect it "
        "several times slower than fp32 (35x for a LoRA step on an AVX2 EPYC); "
        "'auto' picks fp32 here"
    )
