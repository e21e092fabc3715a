"""Fixtures for the inference tests: one Engine over the tiny random Llama, shared per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine(tiny_lm):
    from oficina.infer.engine import Engine

    return Engine.from_spec(str(tiny_lm))
