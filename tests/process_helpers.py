"""Helpers for tests that start a real server process: a free loopback port, and waiting until
its /health answers (failing with the process's output if it dies or never comes up)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Waiting on another process: the limits below are hang guards far beyond any slowness (under
# load 20+ on two cores these tests ran 10x slower than alone), never a verdict on speed.
PATIENCE_S = 900.0


def wait_healthy(
    url: str,
    proc: subprocess.Popen,
    timeout: float = PATIENCE_S,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``url``/health until it answers 200, while ``proc`` is alive."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{output()}"
        try:
            up = httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.TransportError:  # not listening yet
            up = False
        if up:
            return
        assert time.monotonic() < deadline, f"{url} did not come up in {timeout:.0f}s\n{output()}"
        time.sleep(0.2)
