"""train/memory.py: while ``keep_freed_memory`` is on, a large tensor freed and allocated again
reuses mapped pages (no page faults); outside it, glibc unmaps and the kernel faults them in."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from oficina.train import memory

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

PAGES = 50 * 2**20 // 4096  # a 50 MB tensor: above glibc's 32 MB mmap ceiling


def _faults_per_round(rounds: int = 4) -> float:
    def work(n: int) -> None:
        for _ in range(n):
            x = torch.empty(50 * 2**20 // 4)
            x.fill_(1.0)
            del x

    work(6)  # let the heap settle
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    work(rounds)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds


def test_freed_blocks_are_reused_only_while_on_and_nesting_is_counted():
    assert _faults_per_round() > 0.5 * PAGES  # glibc's default: every round faults it all in
    undo = memory.keep_freed_memory()
    assert undo is not None
    try:
        inner = memory.keep_freed_memory()
        inner()
        inner()  # a second call is a no-op
        assert _faults_per_round() < 0.05 * PAGES  # still on: only the outer undo restores
    finally:
        undo()
    assert memory._active["depth"] == 0
    assert _faults_per_round() > 0.5 * PAGES  # defaults back
