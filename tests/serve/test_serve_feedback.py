"""POST /v1/feedback stores ratings and corrections; `oficina feedback export` makes SFT and DPO data."""

from __future__ import annotations

import json

from helpers import read_jsonl
from serve_helpers import http

from oficina.cli import main
from oficina.serve import feedback as fb
from oficina.workspace import connect, list_runs


def test_feedback_route_stores_and_updates(serve, isolated_workspace):
    url = serve()
    messages = [{"role": "user", "content": "What does yield do?"}]
    r = http.post(
        url + "/v1/feedback",
        json={"model": "tiny", "prompt": messages, "answer": "nothing", "rating": -1},
    )
    assert r.status_code == 200, r.text
    fid = r.json()["id"]
    r = http.post(
        url + "/v1/feedback",
        json={
            "id": fid,
            "model": "tiny",
            "prompt": messages,
            "answer": "nothing",
            "rating": -1,
            "correction": "It makes a generator.",
        },
    )
    assert r.json()["id"] == fid
    con = connect()
    rows = [dict(x) for x in con.execute("SELECT * FROM feedback")]
    con.close()
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["answer"], row["rating"], row["correction"]) == (
        "tiny",
        "nothing",
        -1,
        "It makes a generator.",
    )
    assert json.loads(row["prompt"]) == messages and row["created"] > 0

    bad = [
        {"model": "tiny", "prompt": "p", "answer": "a", "rating": 5},  # rating must be -1, 0 or 1
        {"model": "tiny", "answer": "a"},  # no prompt
        {"model": "tiny", "prompt": [], "answer": "a"},
    ]
    for body in bad:
        r = http.post(url + "/v1/feedback", json=body)
        assert r.status_code == 400 and r.json()["error"]["message"], body
    assert (
        http.post(
            url + "/v1/feedback", json={"model": "nope", "prompt": "p", "answer": "a"}
        ).status_code
        == 404
    )
    r = http.post(
        url + "/v1/feedback", json={"id": 999, "model": "tiny", "prompt": "p", "answer": "a"}
    )
    assert r.status_code == 404 and r.json()["error"]["param"] == "id"


def test_export_builds_sft_and_preference_pairs(tmp_path, isolated_workspace, capsys):
    q1 = [{"role": "user", "content": "What does yield do?"}]
    q2 = "Capital of France?"
    fb.store(model="m", prompt=q1, answer="nothing", rating=-1, correction="It makes a generator.")
    fb.store(model="m", prompt=q2, answer="Paris", rating=1)
    fb.store(model="m", prompt=q2, answer="Lyon", rating=-1)
    fb.store(model="m", prompt=q2, answer="Marseille", rating=None)  # no signal: ignored
    fb.store(model="other", prompt=q2, answer="Berlin", rating=-1)

    out = tmp_path / "export"
    assert main(["feedback", "export", "--out", str(out)]) == 0
    sft, prefs = read_jsonl(out / "sft.jsonl"), read_jsonl(out / "preferences.jsonl")
    assert {"messages": [*q1, {"role": "assistant", "content": "It makes a generator."}]} in sft
    q2m = [{"role": "user", "content": q2}]
    assert {"messages": [*q2m, {"role": "assistant", "content": "Paris"}]} in sft
    assert len(sft) == 2
    pairs = {
        (json.dumps(p["prompt"]), p["chosen"][0]["content"], p["rejected"][0]["content"])
        for p in prefs
    }
    assert pairs == {
        (json.dumps(q1), "It makes a generator.", "nothing"),
        (json.dumps(q2m), "Paris", "Lyon"),  # same prompt and model: up beats down
    }
    assert all(p["chosen"][0]["role"] == "assistant" for p in prefs)
    assert "2 SFT rows" in capsys.readouterr().out
    run = list_runs(verb="feedback export")[0]
    assert run["status"] == "completed" and json.loads(run["summary"])["preference_pairs"] == 2

    only = tmp_path / "only"
    assert main(["feedback", "export", "--out", str(only), "--model", "other"]) == 0
    assert read_jsonl(only / "sft.jsonl") == [] and read_jsonl(only / "preferences.jsonl") == []


def test_export_without_feedback_is_a_clear_error(tmp_path, isolated_workspace, capsys):
    assert main(["feedback", "export", "--out", str(tmp_path / "x")]) == 1
    assert "no feedback recorded" in capsys.readouterr().err
    assert main(["feedback", "export"]) == 2  # --out is required
    assert "--out" in capsys.readouterr().err
