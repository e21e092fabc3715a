"""Keep freed memory in the process while training, instead of handing it back to the OS.

Why: glibc's ``malloc`` serves every block above 32 MB with its own ``mmap`` and returns it with
``munmap`` on ``free``. A training step allocates and frees the same large tensors every time
(logits blocks, their gradients, float32 copies, activations: 100-400 MB each for the ``mini``
preset's 49k vocabulary), so each step page-faults them back in and the kernel zero-fills every
page: on this 2-core machine ~30% of a step (measured: 2.2 s -> 1.5 s per step of 2,048 tokens,
eager, same code). Serving big blocks from the heap (``M_MMAP_MAX=0``) and not trimming it
(``M_TRIM_THRESHOLD`` 2 GB) lets the next step reuse the pages already mapped — what jemalloc or
tcmalloc, which Intel recommends preloading for PyTorch on CPU, do by design.

The cost: memory freed during training stays with the process until ``fit`` returns (then
``malloc_trim`` hands it back), and the heap fragments, so peak RSS is higher (``mini``, batch
8x256: 2.24 -> 2.67 GB). On other C libraries (macOS, musl) this is a no-op.

    from oficina.train.memory import keep_freed_memory
    undo = keep_freed_memory()     # None when not on glibc
    ...                            # training steps
    if undo: undo()
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable

# mallopt parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# glibc's defaults, restored afterwards (the dynamic mmap threshold stays off once set)
DEFAULT_MMAP_MAX = 65536
DEFAULT_TRIM_THRESHOLD = 128 * 1024
KEEP_UP_TO = 2**31 - 1  # bytes of free heap top kept before trimming (mallopt takes an int)

_active = {"depth": 0}


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> Callable[[], None] | None:
    """Switch glibc to reuse freed large blocks; returns the function that switches it back
    (and trims the heap), or None when the C library is not glibc. Nested calls are counted:
    only the outermost undo restores the defaults."""
    libc = _glibc()
    if libc is None:
        return None
    if _active["depth"] == 0 and not (
        libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO)
    ):
        return None
    _active["depth"] += 1
    undone = False

    def undo() -> None:
        nonlocal undone
        if undone:
            return
        undone = True
        _active["depth"] -= 1
        if _active["depth"] == 0:
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)

    return undo
