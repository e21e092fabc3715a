"""The routes of ``oficina serve``, one module per concern; ``oficina.serve.app`` mounts them.

    info         GET /health, GET / (chat page), GET /favicon.ico, GET /v1/models[/{model}]
    completions  POST /v1/completions, POST /v1/chat/completions (JSON or server-sent events)
    embeddings   POST /v1/embeddings
    feedback     POST /v1/feedback
    cache        POST /v1/cache/lookup (answers from ``oficina batch``'s cache alone)

Each route is a plain function taking its request body and the ``ServerState`` (injected with
``Depends(server_state)``), so a test can call it directly with a state of its own.
"""

from __future__ import annotations

BAD: dict = {"model": dict, "description": "OpenAI-style error body"}

# What a route that may stream documents for /openapi.json (schemathesis checks against it).
RESPONSES: dict = {
    200: {
        "content": {"application/json": {}, "text/event-stream": {}},
        "description": "JSON, or server-sent events with stream=true",
    },
    400: BAD,
    401: BAD,
    404: BAD,
    413: BAD,
    429: BAD,
}
ERRORS: dict = {k: v for k, v in RESPONSES.items() if k != 200}  # a route that never streams
