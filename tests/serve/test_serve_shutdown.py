"""Graceful shutdown with real signals to real processes: ``oficina serve`` and ``oficina batch``.

The model is the tiny test model made unable to stop: its EOS is a token id outside the vocabulary
the network scores (so it is never chosen) and its context is a million positions, so a
streamed answer with ``max_tokens`` near that is still running whenever the signal lands —
whatever this machine's speed or the random weights.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from helpers import free_port, wait_healthy
from serve_helpers import wait_for

CONTEXT = 1_000_000


@pytest.fixture(scope="module")
def endless_lm(tiny_lm, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("endless") / "model"
    shutil.copytree(tiny_lm, d)
    tok = AutoTokenizer.from_pretrained(d)
    vocab = json.loads((d / "config.json").read_text())["vocab_size"]
    tok.add_special_tokens({"eos_token": "<|never|>"})
    assert tok.eos_token_id >= vocab  # the network has no logit for it
    tok.save_pretrained(d)
    for name in ("config.json", "generation_config.json"):
        c = json.loads((d / name).read_text())
        c["eos_token_id"] = tok.eos_token_id
        if name == "config.json":
            c["max_position_embeddings"] = CONTEXT
        (d / name).write_text(json.dumps(c))
    return d


def _env(home: Path) -> dict:
    return {**os.environ, "OFICINA_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE"}


def _exe() -> str:
    return str(Path(sys.executable).with_name("oficina"))


def _stream(url: str, out: list[str]) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": CONTEXT - 100,
        "stream": True,
    }
    with (
        httpx.Client(timeout=120) as c,
        c.stream("POST", url + "/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        out.extend(line for line in r.iter_lines() if line)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_drains_streams_and_exits_0_on_a_signal(endless_lm, tmp_path, sig):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [_exe(), "serve", f"m={endless_lm}", "--port", str(port), "--embeddings", "none"]
        + ["--drain-timeout-s", "1", "--log-level", "warning"],
        env=_env(tmp_path / "ws"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    streams: list[list[str]] = [[] for _ in range(3)]
    try:
        wait_healthy(url, proc, output=lambda: proc.stdout.read())
        threads = [threading.Thread(target=_stream, args=(url, s), daemon=True) for s in streams]
        for t in threads:
            t.start()

        def in_flight() -> bool:  # generating, or queued behind a batch that never ends
            h = httpx.get(url + "/health", timeout=10).json()
            return h["rows"] >= 1 and h["rows"] + h["queued"] == len(streams)

        assert wait_for(in_flight, 90), httpx.get(url + "/health").json()
        proc.send_signal(sig)
        for t in threads:
            t.join(60)
            assert not t.is_alive(), "a stream did not end after the drain"
    finally:
        # Signal again only if it has not ended by itself (or was never signalled): a second
        # signal as the CLI exits, after it has put back the default handler, kills it with
        # -15. (One landing during the run record's last write is held by Run.finish:
        # tests/test_workspace.py.)
        try:
            out = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
            out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    name = signal.Signals(sig).name
    for lines in streams:
        assert lines[-1] == "data: [DONE]", lines[-3:]
        cut = json.loads(lines[-2].removeprefix("data: "))
        assert cut["error"]["code"] == "server_shutting_down", cut
        assert name in cut["error"]["message"]
    assert f"server stopped ({name})" in out
    (run_dir,) = (tmp_path / "ws" / "runs").iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "stopped" and meta["error"] == f"stopped by {name}", meta
    assert meta["summary"]["requests"]["chat"] == 3


def test_batch_stops_on_sigterm_and_the_rerun_resumes(endless_lm, tmp_path):
    rows = 60
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q {i}"}) + "\n" for i in range(rows)))
    out = tmp_path / "out.jsonl"
    cmd = [_exe(), "batch", str(endless_lm), "--input", str(data), "--output", str(out)]
    cmd += ["--batch-size", "2", "--max-new-tokens", "48"]
    env = _env(tmp_path / "ws")
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)

    def done_rows() -> int:
        return len(out.read_text().splitlines()) if out.exists() else 0

    import time

    deadline = time.monotonic() + 900  # a hang guard, not a speed check
    while done_rows() < 2:  # at least one chunk finished: something to resume from
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, err
    assert "batch: stopped by SIGTERM" in err and "Traceback" not in err, err
    stopped_at = done_rows()
    assert 2 <= stopped_at < rows, stopped_at
    from oficina.workspace import list_runs

    (rec,) = list_runs(root=tmp_path / "ws")
    assert rec["status"] == "stopped" and rec["error"] == "stopped by SIGTERM"

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"({stopped_at} already done" in again.stderr, again.stderr
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["index"] for r in got] == list(range(rows))
    assert all(r["completion_tokens"] == 48 for r in got)  # no row cut short by the stop
