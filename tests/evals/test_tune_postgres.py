"""Two ``oficina tune`` workers share one study on a real PostgreSQL server (Debian's, started
and stopped here on a free local port, as the ``postgres`` user): the trials split between
them, none is run twice, and the plan is met exactly."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _need_postgres() -> Path:
    if not PG_BIN:
        msg = "PostgreSQL server binaries missing: `make setup` installs them (apt postgresql)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    if os.geteuid() != 0:
        pytest.skip("starting a throw-away cluster as the postgres user needs root (runuser)")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("the postgresql package made no postgres user")
    return Path(PG_BIN[-1]).parent


@pytest.fixture
def postgres_url():
    bin_dir = _need_postgres()
    root = Path(tempfile.mkdtemp(prefix="oficina-pg-", dir="/tmp"))
    shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()

    def as_pg(*cmd: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True,
                       capture_output=True, timeout=120)  # fmt: skip

    as_pg(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    as_pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w",
          "start")  # fmt: skip
    try:
        as_pg(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
              "tune")  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/tune"
    finally:
        as_pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pack(tiny_lm, tmp_path_factory) -> Path:
    from oficina.data.pack import PackConfig
    from oficina.data.pack import run as pack_run

    out = tmp_path_factory.mktemp("pack") / "demo"
    pack_run(PackConfig(input=[str(ROOT / "examples/demo/reference.jsonl")],
                        tokenizer=str(tiny_lm), out=str(out), seq_len=64, val_fraction=0.1))  # fmt: skip
    return out


def test_two_workers_share_one_study_on_postgresql(postgres_url, pack, tmp_path):
    import optuna
    from optuna.trial import TrialState

    cfg = yaml.safe_load((ROOT / "examples/tune_tiny.yaml").read_text())
    cfg.update(data=str(pack), max_steps=60)
    p = tmp_path / "tune.yaml"
    p.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def worker(name: str) -> subprocess.Popen:
        args = [sys.executable, "-m", "oficina.cli", "--workspace", str(tmp_path / f"ws-{name}"),
                "tune", str(p), "--trials", "6", "--pruner", "off", "--storage", postgres_url,
                "--study", "shared", "--out", str(tmp_path / f"out-{name}")]  # fmt: skip
        log = open(tmp_path / f"{name}.log", "w")
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)

    a = worker("a")
    try:
        deadline = time.monotonic() + 300
        while True:  # the second worker joins once the first has created the study and a trial
            assert a.poll() is None, (tmp_path / "a.log").read_text()
            assert time.monotonic() < deadline, "the first worker never started a trial"
            if "trials planned" not in (tmp_path / "a.log").read_text():
                time.sleep(0.5)
                continue  # not before the worker has made the tables and the study
            try:
                started = bool(optuna.load_study(study_name="shared", storage=postgres_url).trials)
            except KeyError:  # the study is not in the database yet
                started = False
            if started:
                break
            time.sleep(0.5)
        b = worker("b")
        for proc, name in ((a, "a"), (b, "b")):
            assert proc.wait(timeout=900) == 0, (tmp_path / f"{name}.log").read_text()
    finally:
        for proc in (a, locals().get("b")):
            if proc is not None and proc.poll() is None:
                proc.kill()

    trials = optuna.load_study(study_name="shared", storage=postgres_url).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6  # the plan, met exactly by the two together
    by_worker: dict[int, list[int]] = {}
    for t in finished:
        by_worker.setdefault(t.user_attrs["pid"], []).append(t.number)
    assert len(by_worker) == 2 and all(by_worker.values()), by_worker  # both did some
    params = [json.dumps(t.params, sort_keys=True) for t in finished]
    assert len(set(params)) == 6  # no point trained twice
    runs = [r for t in finished for r in t.user_attrs["run_ids"]]
    assert len(set(runs)) == 6
    # Each worker's outputs see the whole study, not only its own trials.
    for name in ("a", "b"):
        rows = (tmp_path / f"out-{name}" / "trials.jsonl").read_text().splitlines()
        done = [json.loads(x) for x in rows if json.loads(x)["state"] == "COMPLETE"]
        assert {r["number"] for r in done} <= {t.number for t in finished}
    metas = [json.loads((tmp_path / f"out-{n}" / "tune.json").read_text()) for n in "ab"]
    assert max(m["finished"] for m in metas) == 6  # the worker that ended last saw them all
    assert all("postgresql" in m["storage"] and "@127.0.0.1" in m["storage"] for m in metas)
