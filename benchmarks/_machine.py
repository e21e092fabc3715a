"""What every benchmark prints first: the CPU, its cores, the load when it started (the
machines are shared, so a figure without the load it ran under says little)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    torch = sys.modules.get("torch")
    extra = f", torch {torch.__version__} on {torch.get_num_threads()} threads" if torch else ""
    return (
        f"{cpu}, {os.cpu_count()} cores, loadavg {load} at start, "
        f"Python {platform.python_version()}{extra}"
    )


def openmp_as(verb: str) -> str:
    """Set OpenMP's wait as ``oficina VERB`` sets it (``oficina.cli.openmp_wait``: a short spin
    for the verbs that decode, PASSIVE for the rest; a value already set wins), before torch
    loads. Returns what it set, for the printout."""
    from oficina.cli import VERBS, openmp_wait

    chosen = openmp_wait(VERBS[verb], dict(os.environ))
    os.environ.update(chosen)
    keys = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    return ", ".join(f"{k}={os.environ[k]}" for k in keys if k in os.environ) or "libgomp default"
