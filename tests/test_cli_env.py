"""The CLI's process environment: OpenMP's wait policy is set before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = (
    "import os, sys; import oficina.cli; "
    "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
)


def _probe(env_policy: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_cli_sets_passive_wait_policy_before_torch_loads():
    # torch not yet loaded when the CLI module has run: OpenMP reads the variable at load
    assert _probe(None) == ["PASSIVE", "False"]


def test_a_policy_the_user_set_is_kept():
    assert _probe("ACTIVE") == ["ACTIVE", "False"]
