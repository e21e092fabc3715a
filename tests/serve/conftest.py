"""Fixtures for the server tests (helpers live in serve_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from serve_helpers import running_server


@pytest.fixture
def serve(tiny_engine) -> Callable:
    """serve(**config overrides) -> base URL of a server for the tiny model (id 'tiny')."""
    from oficina.serve.app import ServeConfig, create_app

    stack = []

    def start(engines: dict | None = None, **overrides) -> str:
        cfg = ServeConfig(models=["tiny"], **overrides)
        app = create_app(cfg, engines or {"tiny": tiny_engine})
        cm = running_server(app)
        url = cm.__enter__()
        stack.append(cm)
        return url

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)
