"""Server limits: how many requests run at once, how many may wait, and how big a body may be.

``Admission`` lets ``max_concurrent`` requests in; up to ``max_queue`` more wait (first come,
first served) for at most ``queue_timeout_s``; anything beyond gets 429 with ``Retry-After``,
which clients such as ``openai`` honour by backing off. ``BodySizeLimit`` is a plain ASGI
middleware that answers 413 as soon as a body is known to exceed the limit, before it is read.
"""

from __future__ import annotations

import asyncio
import collections
import json

from oficina.serve.errors import APIError


class Admission:
    """A counting gate with a bounded, timed waiting line (lives on the server's event loop)."""

    def __init__(
        self, max_concurrent: int, max_queue: int, queue_timeout_s: float, retry_after_s: int = 1
    ):
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.active = 0
        self.rejected = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def _overloaded(self, why: str) -> APIError:
        self.rejected += 1
        return APIError(
            429,
            f"server is busy ({why}); retry after {self.retry_after_s}s",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(self.retry_after_s)},
        )

    async def acquire(self) -> Slot:
        if self.active < self.max_concurrent and not self.waiting:
            self.active += 1
            return Slot(self)
        if self.waiting >= self.max_queue:
            raise self._overloaded(
                f"{self.active} requests running, {self.waiting} waiting, queue limit {self.max_queue}"
            )
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.queue_timeout_s)
        except TimeoutError:
            if fut.done() and not fut.cancelled():  # handed a slot just as time ran out
                return Slot(self)
            fut.cancel()
            raise self._overloaded(f"waited {self.queue_timeout_s:g}s in the queue") from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()
            else:
                fut.cancel()
            raise
        return Slot(self)

    def _release(self) -> None:
        # Hand the slot straight to the oldest waiter, so the count never dips and is re-taken
        # by a newcomer that jumped the line.
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.active -= 1


class Slot:
    """One admitted request; ``release`` is idempotent (a stream may end in several ways)."""

    def __init__(self, gate: Admission):
        self._gate = gate
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._gate._release()


class BodySizeLimit:
    """ASGI middleware: 413 for bodies larger than ``max_bytes`` (declared or actually sent)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _error(self, message: str, status: int = 413) -> APIError:
        return APIError(
            status, message, code="request_too_large" if status == 413 else "invalid_value"
        )

    async def _send_error(self, send, err: APIError) -> None:
        body = json.dumps(err.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": err.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await self._send_error(
                        send, self._error("invalid Content-Length header", 400)
                    )
                if declared > self.max_bytes:
                    return await self._send_error(
                        send,
                        self._error(
                            f"request body of {declared} bytes exceeds the limit of {self.max_bytes}"
                        ),
                    )
        if not any(name == b"content-length" for name, _ in scope.get("headers", [])):
            # A chunked body has no declared size: read it here (stopping at the limit), then
            # hand the app the buffered body. Inside the app a read error would become FastAPI's
            # generic 400 instead of a 413.
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False)
                if size > self.max_bytes:
                    return await self._send_error(
                        send,
                        self._error(f"request body exceeds the limit of {self.max_bytes} bytes"),
                    )
            body = b"".join(chunks)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
        await self.app(scope, receive, send)
