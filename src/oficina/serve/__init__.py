"""Serving: an OpenAI-compatible HTTP API with batching, limits and auth, a web chat page, and
feedback collected from it (exported as SFT and preference data).

    oficina serve smollm2-135m-instruct          # then open http://127.0.0.1:8000/
    oficina feedback export --out data/feedback

Modules: ``app`` (builds the app, the verb), ``config`` (options, model arguments), ``state``
(``ServerState``, shared by the routes, and the request/stream plumbing), ``routes/`` (one module
per route family), ``scheduler`` (batching thread), ``limits`` (admission, body size), ``auth``
(API keys), ``errors`` (OpenAI error bodies), ``protocol`` (request schemas and every response
shape), ``feedback`` (storage and export), ``static/index.html`` (the chat page).
"""
