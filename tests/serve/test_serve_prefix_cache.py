"""The server's requests share the engine's prefix cache; /health shows its counters."""

from __future__ import annotations

from serve_helpers import health, http

from oficina.infer.engine import SamplingParams

# long enough for several 64-token blocks of the tiny model's byte-level BPE
INSTRUCTION = "Answer about Python statements. " * 12


def test_a_repeated_instruction_is_a_prefix_hit_and_health_shows_it(serve, tiny_engine):
    url = serve()
    assert len(tiny_engine.encode(INSTRUCTION)) > 2 * tiny_engine.prefix_cache.block
    before = health(url)["prefix_cache"]
    assert {"hits", "misses", "bytes", "max_bytes", "blocks"} <= set(before)
    texts = []
    for q in ("What does yield do?", "What does return do?"):
        r = http.post(
            url + "/v1/completions",
            json={"model": "tiny", "prompt": INSTRUCTION + q, "max_tokens": 5, "temperature": 0},
        )
        assert r.status_code == 200, r.text
        texts.append((q, r.json()["choices"][0]["text"]))
    after = health(url)["prefix_cache"]
    assert after["hits"] >= before["hits"] + 1 and after["bytes"] > 0
    saved, tiny_engine.prefix_cache = tiny_engine.prefix_cache, None
    try:  # what the engine says without the cache
        for q, text in texts:
            ref = tiny_engine.generate([INSTRUCTION + q], SamplingParams(max_new_tokens=5))[0]
            assert text == ref.text
    finally:
        tiny_engine.prefix_cache = saved
