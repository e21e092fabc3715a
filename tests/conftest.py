"""Shared fixtures: an isolated workspace per test and a tiny random Llama with a real BPE tokenizer.

The tiny model (64-d, 2 layers, 512-token byte-level BPE trained on the Python reference) loads
in milliseconds, so unit tests of every verb run in seconds. Tests that need the real packaged
SmolLM2 or MiniLM are marked ``integration`` (they still run in CI).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The tiny model's makers live in tests/helpers.py (other conftests and tests use them too).
from helpers import CHAT_TEMPLATE, make_tiny_lm, make_tiny_tokenizer, random_model_seed  # noqa: E402,F401


@pytest.fixture(autouse=True)
def isolated_workspace(tmp_path, monkeypatch):
    """Every test gets its own $OFICINA_HOME; the model cache stays shared (conversions are slow)."""
    ws = tmp_path / "ws"
    monkeypatch.setenv("OFICINA_HOME", str(ws))
    return ws


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A tiny random Llama HF directory (safetensors + tokenizer.json + chat template).

    OFICINA_TEST_SEED draws other random weights: a test that passes only for seed 0 leans on
    what one random model happens to generate, which another CPU can change (CI did).
    """
    return make_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), seed=random_model_seed())


@pytest.fixture(scope="session")
def tiny_engine(tiny_lm):
    """The one Engine over ``tiny_lm`` (id "tiny"), shared by every test that only reads it."""
    from oficina.infer.engine import Engine

    return Engine.from_spec(str(tiny_lm), name="tiny")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real packaged SmolLM2-135M-Instruct, converted once into the shared cache."""
    from oficina.models.sources import resolve

    return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
