"""Fixtures for the inference tests: ``engine`` is the session's shared ``tiny_engine``."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine(tiny_engine):
    return tiny_engine
