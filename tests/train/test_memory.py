"""train/memory.py: while ``keep_freed_memory`` is on, a large tensor freed and allocated again
reuses mapped pages (no page faults); outside it, glibc unmaps and the kernel faults them in.

Measured in a fresh interpreter: in the test session's own process, heap chunks freed by
earlier tests can serve a large block without mmap under glibc's defaults too."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

PAGES = 50 * 2**20 // 4096  # a 50 MB tensor: above glibc's 32 MB mmap ceiling

PROBE = """
import json, resource, torch
from oficina.train import memory

def faults_per_round(rounds=4):
    def work(n):
        for _ in range(n):
            x = torch.empty(50 * 2**20 // 4)
            x.fill_(1.0)
            del x
    # Let the heap settle: torch's 64-byte-aligned request is a little larger than the block
    # it freed, so the heap grows for a few rounds until freed neighbours merge (~10 rounds).
    work(24)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    work(rounds)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds

out = {"default": faults_per_round()}
undo = memory.keep_freed_memory()
inner = memory.keep_freed_memory()
inner()
inner()  # a second call is a no-op
out["on"] = faults_per_round()  # still on: only the outer undo restores
undo()
out["depth_after"] = memory._active["depth"]
out["again"] = memory.keep_freed_memory() is not None
print(json.dumps(out))
"""


def test_freed_blocks_are_reused_only_while_on_and_nesting_is_counted():
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["default"] > 0.5 * PAGES  # glibc's default: every round faults it all in
    assert got["on"] < 0.05 * PAGES
    assert got["depth_after"] == 0 and got["again"]
