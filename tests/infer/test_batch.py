"""``oficina batch``: cache hits and misses, lookup without a model, bad rows, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from oficina.cli import main
from oficina.infer import batch as batch_mod
from oficina.infer.engine import Engine, SamplingParams


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture
def calls(monkeypatch):
    """Counts Engine.generate calls (model batches) and the prompts they carried."""
    seen = {"calls": 0, "prompts": 0}
    real = Engine.generate

    def counting(self, prompts, params, on_token=None):
        seen["calls"] += 1
        seen["prompts"] += len(prompts)
        return real(self, prompts, params, on_token)

    monkeypatch.setattr(Engine, "generate", counting)
    return seen


ROWS = [{"id": f"q{i}", "prompt": f"item {i}:"} for i in range(6)]


def _batch(model, inp, out, *extra):
    return main(
        [
            "batch",
            str(model),
            "--input",
            str(inp),
            "--output",
            str(out),
            "--max-new-tokens",
            "6",
            "--batch-size",
            "4",
            "--no-chat",
            *extra,
        ]
    )


def test_rerun_makes_zero_model_calls_and_any_key_change_misses(tiny_lm, tmp_path, calls):
    inp = _write(tmp_path / "in.jsonl", ROWS)
    assert _batch(tiny_lm, inp, tmp_path / "a.jsonl") == 0
    assert calls == {"calls": 2, "prompts": 6}
    first = _read(tmp_path / "a.jsonl")
    assert [r["id"] for r in first] == [r["id"] for r in ROWS] and not any(
        r["cached"] for r in first
    )

    assert _batch(tiny_lm, inp, tmp_path / "b.jsonl") == 0
    assert calls["calls"] == 2  # all six from the cache
    again = _read(tmp_path / "b.jsonl")
    assert [r["text"] for r in again] == [r["text"] for r in first] and all(
        r["cached"] for r in again
    )

    # every key field: a sampling parameter, a stop string, the seed, the rendered prompt
    for extra in (
        ["--max-new-tokens", "5"],
        ["--stop", "zz"],
        ["--temperature", "1", "--seed", "3"],
        ["--repetition-penalty", "1.1"],
        ["--top-k", "5"],
        ["--top-p", "0.5"],
        ["--chat"],
    ):
        before = calls["prompts"]
        _batch(tiny_lm, inp, tmp_path / "c.jsonl", "--overwrite", *extra)
        assert calls["prompts"] - before == 6, extra

    # a per-row override misses only that row
    rows = [dict(r) for r in ROWS]
    rows[2]["max_new_tokens"] = 3
    before = calls["prompts"]
    _batch(tiny_lm, _write(tmp_path / "in2.jsonl", rows), tmp_path / "d.jsonl")
    assert calls["prompts"] - before == 1
    assert _read(tmp_path / "d.jsonl")[2]["completion_tokens"] == 3


def test_other_weights_miss_and_lookup_function(tiny_lm, tmp_path, calls):
    from safetensors.torch import load_file, save_file

    inp = _write(tmp_path / "in.jsonl", ROWS[:2])
    _batch(tiny_lm, inp, tmp_path / "a.jsonl")
    other = tmp_path / "other"
    shutil.copytree(tiny_lm, other)
    w = load_file(other / "model.safetensors")
    name = next(iter(w))
    w[name] = w[name] + 0.01
    save_file(w, other / "model.safetensors", metadata={"format": "pt"})
    before = calls["prompts"]
    _batch(other, inp, tmp_path / "b.jsonl")
    assert calls["prompts"] - before == 2  # changed weights: a new model hash

    eng = Engine.from_spec(str(tiny_lm))
    text = _read(tmp_path / "a.jsonl")[0]["text"]
    params = SamplingParams(max_new_tokens=6)
    assert batch_mod.lookup(eng.model_hash, "item 0:", params) == text
    assert batch_mod.lookup(eng.model_hash, "item 0:", SamplingParams(max_new_tokens=7)) is None
    assert batch_mod.lookup(eng.model_hash, "item 9:", params) is None


def test_batch_lookup_answers_from_cache_without_loading_the_model(tiny_lm, tmp_path, monkeypatch):
    inp = _write(tmp_path / "in.jsonl", ROWS[:3])
    _batch(tiny_lm, inp, tmp_path / "a.jsonl")
    bigger = _write(tmp_path / "more.jsonl", ROWS[:3] + [{"id": "new", "prompt": "never seen"}])

    def no_model(*a, **k):
        raise AssertionError("lookup must not load the model")

    monkeypatch.setattr(Engine, "from_spec", no_model)
    monkeypatch.setattr(Engine, "generate", no_model)
    out = tmp_path / "look.jsonl"
    assert (
        main(
            [
                "batch",
                "lookup",
                str(tiny_lm),
                "--input",
                str(bigger),
                "--output",
                str(out),
                "--max-new-tokens",
                "6",
                "--no-chat",
            ]
        )
        == 0
    )
    rows = _read(out)
    assert [r.get("text") for r in rows[:3]] == [r["text"] for r in _read(tmp_path / "a.jsonl")]
    assert rows[3] == {"index": 3, "id": "new", "miss": True}


def test_bad_rows_are_set_aside_in_order(tiny_lm, tmp_path):
    rows = [
        ROWS[0],
        "{not json",
        {"id": "n", "prompt": 3},
        {"id": "k", "prompt": "x", "temperature": -1},
        {"id": "u", "prompt": "x", "colour": "red"},
        {"id": "m", "messages": [{"role": "user", "content": "hi"}]},
    ]
    out = tmp_path / "o.jsonl"
    assert _batch(tiny_lm, _write(tmp_path / "in.jsonl", rows), out) == 0
    got = _read(out)
    assert [r["index"] for r in got] == list(range(6))
    assert [("error" in r) for r in got] == [False, True, True, True, True, False]
    assert "temperature" in got[3]["error"] and "colour" in got[4]["error"]


def test_resume_drops_a_torn_line_and_refuses_a_foreign_output(tiny_lm, tmp_path, calls):
    inp = _write(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "o.jsonl"
    _batch(tiny_lm, inp, out)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:20])  # killed mid-write
    _batch(tiny_lm, inp, out)
    assert [r["id"] for r in _read(out)] == [r["id"] for r in ROWS]
    other = _write(tmp_path / "other.jsonl", [{"id": "zz", "prompt": "a"}])
    assert _batch(tiny_lm, other, out) == 1  # one-line error, nothing overwritten
    assert len(_read(out)) == 6


def test_sigkill_mid_run_then_restart_gives_one_result_per_input(tiny_lm, tmp_path):
    rows = [{"id": f"k{i}", "prompt": f"row {i} says"} for i in range(48)]
    inp = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "OFICINA_HOME": str(tmp_path / "ws"), "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [
        sys.executable,
        "-m",
        "oficina.cli",
        "batch",
        str(tiny_lm),
        "--input",
        str(inp),
        "--output",
        str(out),
        "--max-new-tokens",
        "60",
        "--batch-size",
        "2",
        "--no-chat",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900  # a hang guard: under heavy load startup alone took minutes
    while time.time() < deadline:
        if out.exists() and out.read_text().count("\n") >= 4:
            break
        assert proc.poll() is None, "batch ended before it could be killed"
        time.sleep(0.02)
    assert out.exists(), "batch wrote nothing in 15 minutes"
    written = out.read_text().count("\n")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert 4 <= written < len(rows), "the kill must land mid-run"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = _read(out)
    assert [r["id"] for r in got] == [r["id"] for r in rows]
    assert all("text" in r for r in got)
    assert "already done" in done.stderr


@pytest.mark.slow
def test_ray_engine_gives_the_same_results_and_fills_the_cache(tiny_lm, tmp_path, calls):
    pytest.importorskip("ray.data")
    import ray

    inp = _write(tmp_path / "in.jsonl", ROWS[:3])
    try:
        assert _batch(tiny_lm, inp, tmp_path / "ray.jsonl", "--engine", "ray") == 0
    finally:
        ray.shutdown()
    assert calls["calls"] == 0  # the model ran in a Ray actor, not here
    via_ray = _read(tmp_path / "ray.jsonl")
    assert _batch(tiny_lm, inp, tmp_path / "local.jsonl") == 0
    local = _read(tmp_path / "local.jsonl")
    assert calls["calls"] == 0 and all(r["cached"] for r in local)  # the Ray run filled the cache
    ref = Engine.from_spec(str(tiny_lm)).generate(
        [r["prompt"] for r in ROWS[:3]], SamplingParams(max_new_tokens=6)
    )
    assert [r["text"] for r in via_ray] == [c.text for c in ref]
