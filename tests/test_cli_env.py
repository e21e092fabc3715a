"""The CLI's process environment: OpenMP's wait is chosen per verb before torch loads.

libgomp reads OMP_WAIT_POLICY / GOMP_SPINCOUNT once, when torch loads it, so the probe records
them at the moment ``import torch`` starts (an import hook), in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from oficina.cli import VERBS, openmp_wait

PROBE = """
import contextlib, io, json, os, sys
seen = {}
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.update({k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")})
        return None
sys.meta_path.insert(0, Spy())
from oficina.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:] + ["--help"])
    except SystemExit:
        pass
import torch  # if --help did not load it: what the verb's work would load it under
print(json.dumps(seen))
"""


def _probe(verb: list[str], **user: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(user)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *verb], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_training_verbs_sleep_and_decoding_verbs_spin_before_torch_loads():
    # the policy is in place before the verb's module (or its work) loads torch
    assert _probe(["finetune"]) == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}
    spin = {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "300000"}
    assert _probe(["generate"]) == spin
    assert _probe(["serve"]) == spin


def test_a_wait_the_user_set_is_kept():
    assert _probe(["finetune"], OMP_WAIT_POLICY="ACTIVE")["OMP_WAIT_POLICY"] == "ACTIVE"
    assert _probe(["generate"], OMP_WAIT_POLICY="PASSIVE") == {
        "OMP_WAIT_POLICY": "PASSIVE",
        "GOMP_SPINCOUNT": None,
    }
    assert _probe(["finetune"], GOMP_SPINCOUNT="5") == {
        "OMP_WAIT_POLICY": None,
        "GOMP_SPINCOUNT": "5",
    }


@pytest.mark.parametrize("name", sorted(VERBS))
def test_every_verb_that_generates_text_token_by_token_spins(name):
    """The table says which verbs decode; a new generating verb that forgets it would run its
    decode steps 2-3x slower (README, issue 16)."""
    decoding = {"generate", "chat", "batch", "quantize", "serve", "ask"}
    assert VERBS[name].decodes == (name in decoding)
    assert openmp_wait(VERBS[name], {}) == (
        {"GOMP_SPINCOUNT": "300000"} if name in decoding else {"OMP_WAIT_POLICY": "PASSIVE"}
    )
