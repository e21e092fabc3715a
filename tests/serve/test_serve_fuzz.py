"""Schemathesis fuzzes every operation in /openapi.json: no response may be a 5xx."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PATIENCE_S
from serve_helpers import running_server


@pytest.mark.integration  # the fuzzer reaches /v1/embeddings, which loads the real MiniLM
def test_schemathesis_finds_no_server_errors(tiny_engine, tmp_path):
    from oficina.serve.app import ServeConfig, create_app

    app = create_app(ServeConfig(models=["tiny"], max_tokens=32), {"tiny": tiny_engine})
    statuses: collections.Counter = collections.Counter()

    async def counting(scope, receive, send):  # every status the server sends, seen server-side
        async def spy(message):
            if message["type"] == "http.response.start":
                statuses[message["status"]] += 1
            await send(message)

        await app(scope, receive, spy)

    # A body that is both invalid and too large gets 413 (the size is checked first): a correct
    # rejection that schemathesis' negative-data check should accept too.
    (tmp_path / "schemathesis.toml").write_text(
        '[checks.negative_data_rejection]\nexpected-statuses = ["400", "401", "404", "405", "413", "429"]\n'
    )
    exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    with running_server(counting) as url:
        proc = subprocess.run(
            [
                exe, "run", url + "/openapi.json",
                "--checks", "not_a_server_error,negative_data_rejection,content_type_conformance,"
                "response_schema_conformance,status_code_conformance",
                "--max-examples", "10", "--phases", "coverage,fuzzing", "--seed", "1", "--workers", "1",
                "--no-color", "--generation-database", "none",
                "--report", "junit", "--report-dir", str(tmp_path),
            ],
            capture_output=True, text=True, timeout=PATIENCE_S, cwd=tmp_path,
        )  # fmt: skip
    summary = proc.stdout[-3000:]
    # enough requests that every operation was tried with good and bad data. Bounded by the
    # example count, not by time: with --max-time 30 a machine at load 13 sent only 55.
    assert sum(statuses.values()) >= 60, (statuses, summary)
    assert statuses[200] >= 10, statuses  # the fuzzer got past validation into the model
    assert not [s for s in statuses if s >= 500], (statuses, summary)
    assert proc.returncode == 0, summary
