"""Optional API keys: ``Authorization: Bearer KEY`` on every /v1 route, compared in constant time.

With no key configured the API is open (it binds 127.0.0.1 by default). With ``--api-key K``
a missing or wrong key gets 401, which the ``openai`` client raises as ``AuthenticationError``.
``hmac.compare_digest`` takes the same time wherever the first differing byte is, so response
timing does not leak how much of a guessed key was right.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from oficina.serve.errors import APIError

_bearer = HTTPBearer(auto_error=False, description="the server's --api-key, if it was given one")


def key_matches(given: str, keys: list[str]) -> bool:
    """True if ``given`` equals one of ``keys``; every key is compared (no early exit)."""
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(given.encode("utf-8"), k.encode("utf-8"))
    return ok


def require_key(keys: list[str]) -> Callable:
    """A FastAPI dependency that enforces the keys (a no-op when ``keys`` is empty)."""

    async def check(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if not keys:
            return
        if creds is None or not creds.credentials:
            raise APIError(
                401,
                "missing API key: send 'Authorization: Bearer KEY'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not key_matches(creds.credentials, keys):
            raise APIError(
                401,
                "incorrect API key",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check
