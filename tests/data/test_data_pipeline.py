"""The prepare pipeline end to end: the demo config, idempotency, a real SIGKILL and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from data_planted import prose_corpus, write_jsonl

from oficina.config import load
from oficina.data.pipeline import PrepareConfig, run

ROOT = Path(__file__).resolve().parents[2]
STAGES_YAML = """
shard_docs: 10
stages:
  - {type: normalize}
  - {type: langid, languages: [en, pt]}
  - {type: quality, min_words: 20}
  - {type: spam}
  - {type: pii}
  - {type: exact_dedup}
  - {type: near_dedup, threshold: 0.8}
"""


def _table(out: Path):
    files = sorted(out.glob("part-*.parquet"))
    return [pq.read_table(f).to_pylist() for f in files]


def _counts(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("throughput", "resumed_shards")}


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "clean"
    os.environ.setdefault("OFICINA_HOME", str(out.parent / "ws"))
    cwd = os.getcwd()
    os.chdir(ROOT)  # the example config names the eval files relative to the repository
    try:
        cfg = load(
            PrepareConfig,
            ROOT / "examples/data.yaml",
            {"inputs": [str(ROOT / "examples/demo/reference.jsonl")], "out": str(out)},
        )
        run(cfg)
    finally:
        os.chdir(cwd)
    return out


def test_demo_config_runs_and_reports(demo_out):
    report = json.loads((demo_out / "report.json").read_text())
    assert report["docs_in"] == 79 and 50 <= report["docs_kept"] < 79
    names = [s["name"] for s in report["stages"]]
    assert names == [
        "normalize",
        "decontam",
        "pii",
        "langid",
        "licence",
        "quality",
        "spam",
        "exact_dedup",
        "near_dedup",
    ]
    for s in report["stages"]:
        assert s["in"] == s["kept"] + s["removed_total"] == s["kept"] + sum(s["removed"].values())
    # The real Python reference (465k characters of prose and code) holds no PII: no false hits.
    assert report["stages"][names.index("pii")]["modified"] == {}
    # The task's test and validation passages were cut out of the training text.
    assert report["stages"][names.index("decontam")]["modified"]["spans_cut"] > 50
    assert report["licences"] == {"PSF-2.0": report["docs_kept"]}
    html = (demo_out / "report.html").read_text()
    assert "data:image/png;base64," in html and "too_few_words" in html and "<script" not in html
    manifest = json.loads((demo_out / "manifest.json").read_text())
    assert sum(s["docs"] for s in manifest["shards"]) == report["docs_kept"]
    assert sum(len(t) for t in _table(demo_out)) == report["docs_kept"]


def test_second_run_over_its_own_output_removes_nothing(demo_out, tmp_path):
    out2 = tmp_path / "again"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        cfg = load(
            PrepareConfig,
            ROOT / "examples/data.yaml",
            {"inputs": [str(demo_out)], "out": str(out2)},
        )
        run(cfg)
    finally:
        os.chdir(cwd)
    first = json.loads((demo_out / "report.json").read_text())
    again = json.loads((out2 / "report.json").read_text())
    assert again["docs_in"] == again["docs_kept"] == first["docs_kept"]
    assert all(s["removed_total"] == 0 for s in again["stages"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_the_uninterrupted_output(tmp_path, sig):
    """SIGKILL (nothing runs) or SIGTERM (a stop: exit 0, run recorded 'stopped'); both resume."""
    rows = prose_corpus(300, seed=5, dup_every=7)
    data = write_jsonl(tmp_path / "corpus.jsonl", rows)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(STAGES_YAML)
    ref = tmp_path / "ref"
    run(load(PrepareConfig, cfg_file, {"inputs": [str(data)], "out": str(ref)}))
    ref_report = json.loads((ref / "report.json").read_text())
    assert ref_report["stages"][-1]["removed"].get("near_duplicate", 0) > 10  # across shards too

    out = tmp_path / "killed"
    env = {**os.environ, "OFICINA_HOME": str(tmp_path / "ws2")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oficina.cli",
            "data",
            "prepare",
            str(data),
            "--out",
            str(out),
            "--config",
            str(cfg_file),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 900  # a hang guard, not a speed check
    while not (out / "_state" / "00003.json").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 0, err
        assert (
            err.strip()
            .splitlines()[-1]
            .endswith(
                "stopped by SIGTERM; finished work is saved, rerun the same command to continue from there"
            )
        ), err
        from oficina.workspace import list_runs

        (rec,) = list_runs(root=tmp_path / "ws2")
        assert rec["status"] == "stopped" and rec["error"] == "stopped by SIGTERM", rec
    done = len(list((out / "_state").glob("0*.json")))
    assert 4 <= done < 30, done  # really stopped mid-run
    assert not (out / "report.json").exists()

    run(load(PrepareConfig, cfg_file, {"inputs": [str(data)], "out": str(out)}))
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_shards"] == done
    assert _counts(report) == _counts(ref_report)
    assert _table(out) == _table(ref)
    assert not list(out.glob(".*tmp*"))


def test_changed_settings_are_refused_on_resume(tmp_path):
    from oficina.errors import UserError

    data = write_jsonl(tmp_path / "c.jsonl", prose_corpus(30))
    out = tmp_path / "o"
    run(PrepareConfig(inputs=[str(data)], out=str(out), shard_docs=10))
    with pytest.raises(UserError, match="other inputs or settings"):
        run(PrepareConfig(inputs=[str(data)], out=str(out), shard_docs=5))
    run(PrepareConfig(inputs=[str(data)], out=str(out), shard_docs=5, restart=True))
    assert len(list(out.glob("part-*.parquet"))) == 6


def test_cli_prints_the_report_path(tmp_path, capsys):
    from oficina.cli import main

    data = write_jsonl(tmp_path / "c.jsonl", prose_corpus(12))
    assert (
        main(["data", "prepare", str(data), "--out", str(tmp_path / "o"), "--shard-docs", "5"]) == 0
    )
    out = capsys.readouterr().out.splitlines()
    reports = [ln.removeprefix("report: ") for ln in out if ln.startswith("report: ")]
    o = (tmp_path / "o").resolve()
    assert reports == [str(o / "report.html"), str(o / "report.json")]
    assert "<html" in Path(reports[0]).read_text()
    assert json.loads(Path(reports[1]).read_text())["docs_in"] == 12
    missing = tmp_path / "missing.jsonl"
    assert main(["data", "prepare", str(missing), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"oficina data prepare: error: input not found: {missing}"
    assert not (tmp_path / "p").exists()  # nothing half-written


def test_worker_processes_give_the_same_output(tmp_path):
    data = write_jsonl(tmp_path / "c.jsonl", prose_corpus(90, seed=3, dup_every=4))
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(STAGES_YAML.replace("  - {type: langid, languages: [en, pt]}\n", ""))
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        run(
            load(
                PrepareConfig,
                cfg_file,
                {"inputs": [str(data)], "out": str(out), "workers": workers},
            )
        )
        outs.append((_counts(json.loads((out / "report.json").read_text())), _table(out)))
    assert outs[0] == outs[1]
    assert outs[0][0]["stages"][-1]["removed"]["near_duplicate"] > 5


@pytest.mark.parametrize("verb", ["data prepare", "data pack", "tokenizer train", "tokenizer eval"])
def test_help_lists_the_settings(verb, capsys):
    from oficina.cli import main

    with pytest.raises(SystemExit) as e:
        main([*verb.split(), "--help"])
    assert e.value.code == 0
    flag = "--tokenizers" if verb == "tokenizer eval" else "--out"
    assert flag in capsys.readouterr().out
