"""OpenAI-style error bodies for every failure the server can answer with.

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}`` with a 4xx
status when the client can fix it: FastAPI's 422 validation errors become 400, unknown routes
404, unsupported methods 405. The ``openai`` client maps these statuses to its exception classes
(400 ``BadRequestError``, 401 ``AuthenticationError``, 404 ``NotFoundError``, 429
``RateLimitError``). A bug that escapes as an exception still gets the same body shape (500).

    raise APIError(400, "max_tokens is larger than the context", param="max_tokens",
                   code="context_length_exceeded")
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from oficina.errors import UserError
from oficina.serve import protocol

log = logging.getLogger("oficina.serve")

# status -> the "type" field OpenAI and vLLM use for it
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answer: HTTP status, one-line message, and the OpenAI fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(
            status, "invalid_request_error" if status < 500 else "server_error"
        )
        self.headers = headers or {}

    def body(self) -> dict:
        return protocol.error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def sse(self) -> str:
        """The same error as a server-sent event (for failures after a stream has started)."""
        return f"data: {json.dumps(self.body())}\n\n"


def from_user_error(e: UserError, param: str | None = None) -> APIError:
    """A UserError raised by the engine (bad sampling value, prompt too long) is the client's."""
    code = "context_length_exceeded" if type(e).__name__ == "ContextLengthError" else None
    return APIError(400, str(e), param=param, code=code)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if e.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    if e.get("type") == "missing":
        return f"missing required parameter '{param}'", param
    msg = str(e.get("msg", "invalid value"))
    return (f"invalid value for '{param}': {msg}" if param else msg), param


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into an OpenAI error body."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if status == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return APIError(status, detail, headers=dict(exc.headers or {})).response()

    @app.exception_handler(UserError)
    async def _user(request: Request, exc: UserError) -> JSONResponse:
        return from_user_error(exc).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(
            500, f"internal error: {type(exc).__name__}", type="server_error"
        ).response()
