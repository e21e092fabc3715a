"""Fault tolerance and scale-out, with real processes: a SIGKILLed run resumes bitwise (one
process, and two FSDP2 processes on gloo with sharded DCP checkpoints), and two DDP or FSDP
processes on gloo match one process at the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def _env(home: Path) -> dict:
    env = dict(os.environ, OFICINA_HOME=str(home), OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _losses(home: Path) -> dict[int, float]:
    """step -> training loss, from every run's metrics.jsonl in this workspace (later runs win)."""
    out: dict[int, float] = {}
    for m in sorted((home / "runs").glob("*/metrics.jsonl")):
        for line in m.read_text().splitlines():
            row = json.loads(line)
            if "loss" in row:
                out[row["step"]] = row["loss"]
    return out


def _pretrain_cmd(tiny_lm, shards, out, steps, *extra) -> list[str]:
    return [
        sys.executable, "-m", "oficina.cli", "pretrain", "--init", str(tiny_lm),
        "--data", str(shards), "--out", str(out), "--max-steps", str(steps),
        "--train.batch-size", "4", "--train.precision", "fp32", "--train.deterministic",
        "--train.log-every", "1", "--train.save-every", "5", "--train.eval-every", "1000",
        "--train.lr", "3e-3", *extra,
    ]  # fmt: skip


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, step: str) -> None:
    """Return once ``out``'s latest checkpoint is ``step`` or later, with the run still going."""
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 900  # a hang guard, not a speed check
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text() >= step:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"


STEPS = 50  # the kill lands at step ~10: 40 steps of margin before the run would end


@pytest.fixture(scope="module")
def reference(tiny_lm, shards, tmp_path_factory) -> Path:
    """One uninterrupted single-process run (fp32, deterministic) that both tests compare to."""
    home = tmp_path_factory.mktemp("reference")
    ref = subprocess.run(
        _pretrain_cmd(tiny_lm, shards, home / "out", STEPS),
        env=_env(home), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]
    return home


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run_bitwise(
    tiny_lm, shards, tmp_path, reference, sig
):
    """SIGKILL (nothing runs: the run is reaped as failed) or SIGTERM (a stop: exit 0, run
    recorded 'stopped'); either way --resume continues from the last checkpoint, bitwise."""
    steps, ref_home, home = STEPS, reference, tmp_path / "killed"

    out = tmp_path / "out"
    proc = subprocess.Popen(
        _pretrain_cmd(tiny_lm, shards, out, steps), env=_env(home),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait_for_checkpoint(proc, out, "step-000010")
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    assert not (out / "model.safetensors").exists()
    killed_at = max(_losses(home))
    assert killed_at < steps

    resumed = subprocess.run(
        _pretrain_cmd(tiny_lm, shards, out, steps, "--resume"),
        env=_env(home), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step" in resumed.stdout + resumed.stderr

    want, got = _losses(ref_home), _losses(home)
    assert sorted(got) == sorted(want) == list(range(1, steps + 1))
    assert got == want  # every step's loss, bitwise (floats round-trip through JSON exactly)
    a, b = (
        load_file(ref_home / "out" / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the killed run is marked failed in the registry, the resumed one completed
    from oficina.workspace import list_runs

    statuses = sorted(r["status"] for r in list_runs(root=home))
    assert statuses == ["completed", "failed" if sig == signal.SIGKILL else "stopped"]


def _two_process_cmd(tiny_lm, shards, out, parallel: str, *extra) -> list[str]:
    """torchrun, 2 gloo processes × 2 rows: the same global batch as the 1 × 4 reference."""
    cmd = _pretrain_cmd(tiny_lm, shards, out, STEPS, "--train.parallel", parallel, *extra)
    cmd[cmd.index("--train.batch-size") + 1] = "2"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return torchrun + cmd[1:]


def _two_process_env(home: Path) -> dict:
    env = _env(home)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run_two_processes(tiny_lm, shards, home: Path, parallel: str) -> Path:
    """An uninterrupted 2-process run of STEPS steps; its workspace is ``home``, its model
    ``home / "out"``."""
    done = subprocess.run(
        _two_process_cmd(tiny_lm, shards, home / "out", parallel),
        env=_two_process_env(home), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout + done.stderr
    return home


@pytest.fixture(scope="module")
def fsdp_run(tiny_lm, shards, tmp_path_factory) -> Path:
    """One uninterrupted FSDP2 run (2 gloo processes), shared by the two FSDP tests."""
    return _run_two_processes(tiny_lm, shards, tmp_path_factory.mktemp("fsdp"), "fsdp")


def _workers_of(pid: int) -> list[int]:
    """The torchrun agent's worker processes (its children running oficina), from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == pid and b"oficina.cli" in cmdline:
            out.append(int(stat.parent.name))
    return sorted(out)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(
    tiny_lm, shards, tmp_path, reference, parallel, request
):
    """Global batch 4: one process × 4 rows vs two processes × 2 rows (DDP, or FSDP2 with
    fully_shard on a CPU mesh). Tolerance 1e-4 on each step's loss: the gradient all-reduce
    (or reduce-scatter) only changes the order of float additions (seen: ~1e-6)."""
    steps = STEPS
    if parallel == "fsdp":
        home = request.getfixturevalue("fsdp_run")
    else:
        home = _run_two_processes(tiny_lm, shards, tmp_path / "h2", parallel)
    one, two = _losses(reference), _losses(home)
    assert sorted(one) == sorted(two) == list(range(1, steps + 1))
    for s in one:
        assert two[s] == pytest.approx(one[s], abs=1e-4), (s, one[s], two[s])
    print(f"max |loss difference| {parallel} vs single:", max(abs(one[s] - two[s]) for s in one))
    assert len(list((home / "runs").iterdir())) == 1  # one record, from rank 0
    a = load_file(reference / "out" / "model.safetensors")
    b = load_file(home / "out" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


@pytest.mark.slow
def test_fsdp_sigkill_mid_run_then_resume_matches_an_uninterrupted_fsdp_run_bitwise(
    tiny_lm, shards, tmp_path, fsdp_run
):
    """Both FSDP2 workers SIGKILLed after the step-10 checkpoint (sharded: DCP, one file of
    weight and AdamW-moment shards per rank), then ``--resume`` under torchrun: every step's
    loss equals the uninterrupted FSDP run's bitwise, and so does the exported model."""
    steps, home, out = STEPS, tmp_path / "killed", tmp_path / "out"
    proc = subprocess.Popen(
        _two_process_cmd(tiny_lm, shards, out, "fsdp"), env=_two_process_env(home),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait_for_checkpoint(proc, out, "step-000010")
    workers = _workers_of(proc.pid)
    assert len(workers) == 2, workers
    for pid in workers:  # a node failure: both ranks die at once, mid-step
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=60) != 0  # the torchrun agent reports the failed workers
    assert not (out / "model.safetensors").exists()
    killed_at = max(_losses(home))
    assert 10 <= killed_at < steps

    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert (ckpt / "sharded" / ".metadata").is_file()
    assert len(list((ckpt / "sharded").glob("*.distcp"))) == 2  # one shard file per rank
    assert sorted(p.name for p in ckpt.glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    assert not (ckpt / "weights.safetensors").exists()  # no rank gathered the whole model
    from oficina.errors import UserError
    from oficina.train.checkpoint import Checkpointer

    with pytest.raises(UserError, match="--train.parallel fsdp"):  # not in one process
        Checkpointer(out / "checkpoints").load(None, None, None)

    resumed = subprocess.run(
        _two_process_cmd(tiny_lm, shards, out, "fsdp", "--resume"),
        env=_two_process_env(home), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stdout + resumed.stderr

    want, got = _losses(fsdp_run), _losses(home)
    assert sorted(got) == sorted(want) == list(range(1, steps + 1))
    assert got == want  # every step's loss, bitwise (floats round-trip through JSON exactly)
    a, b = load_file(fsdp_run / "out" / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)  # a plain HF model, gathered on rank 0
    assert not (out / "checkpoints").exists()  # cleared after the successful run
    from oficina.workspace import list_runs

    statuses = sorted(r["status"] for r in list_runs(root=home))
    assert statuses == ["completed", "failed"]


def test_sharded_checkpoint_loading_refuses_pickled_code(tmp_path):
    """A tampered DCP folder cannot run code: ``.metadata`` and the non-tensor entries are
    unpickled with allow-lists (DCP itself would ``pickle.load`` them)."""
    import io
    import pickle

    from oficina.train.checkpoint import _safe_planner, _safe_reader

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        _safe_reader(tmp_path).read_metadata()
    with pytest.raises(pickle.UnpicklingError):
        _safe_planner().load_bytes(None, io.BytesIO(pickle.dumps(Evil())))


def test_sharded_checkpoint_round_trips_in_one_process(tmp_path):
    """The allow-listed reader and planner load what DCP writes: tensors and the optimizer's
    plain hyperparameters come back equal."""
    import torch.distributed.checkpoint as dcp

    from oficina.train.checkpoint import _safe_planner, _safe_reader

    saved = {"w": torch.randn(3, 4), "groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "p": ["w"]}]}
    dcp.save(saved, storage_writer=dcp.FileSystemWriter(str(tmp_path)), no_dist=True)
    back = {"w": torch.zeros(3, 4), "groups": [{"lr": 0.0, "betas": (0.0, 0.0), "p": []}]}
    dcp.load(back, storage_reader=_safe_reader(tmp_path), planner=_safe_planner(), no_dist=True)
    assert torch.equal(back["w"], saved["w"])
    assert back["groups"] == saved["groups"]


def test_an_unsharded_checkpoint_is_not_resumed_under_fsdp(tmp_path):
    from oficina.errors import UserError
    from oficina.train.checkpoint import Checkpointer

    step = tmp_path / "step-000005"
    step.mkdir()
    (step / "state.json").write_text('{"step": 5}')
    with pytest.raises(UserError, match="written without FSDP"):
        Checkpointer(tmp_path, sharded=True).load(None, None, None)


def test_a_checkpoint_resumes_only_with_the_world_size_it_was_written_with(tmp_path):
    """Data position, per-rank RNG files and the global batch assume the writer's world size:
    a one-process checkpoint resumed by 2 ranks (or the reverse) is refused before loading."""
    from oficina.errors import UserError
    from oficina.train.checkpoint import Checkpointer

    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    Checkpointer(tmp_path).save(3, model, opt, sched, {"history": []})
    state = json.loads((tmp_path / "step-000003" / "state.json").read_text())
    assert state["world"] == 1 and state["step"] == 3
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    with pytest.raises(UserError, match="written by 1 process.*this run has 2.*nproc-per-node 1"):
        Checkpointer(tmp_path, rank=0, world=2).load(model, opt, sched)
    assert torch.count_nonzero(model.weight) == 0  # refused before touching the model
    assert Checkpointer(tmp_path).load(model, opt, sched)["step"] == 3
    assert torch.equal(model.weight, before)


@pytest.mark.slow
def test_lora_under_fsdp_resumes_from_a_mid_run_checkpoint_bitwise(tiny_lm, repo_root, tmp_path):
    """LoRA adapters on an FSDP2-sharded base (2 gloo processes): resuming from the step-25
    sharded checkpoint replays steps 26-30 with the same losses, bitwise, and writes the same
    adapter (a PEFT directory) as the run that went through."""
    import shutil

    def cmd(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "oficina.cli", "finetune", str(tiny_lm), "--method", "lora",
            "--data", str(repo_root / "examples/demo/task/train.jsonl"),
            "--template", "Passage: {text}\nAnswer:", "--out", str(out), "--max-steps", "30",
            "--max-len", "64", "--val-fraction", "0", "--train.batch-size", "2",
            "--train.precision", "fp32", "--train.deterministic", "--train.log-every", "1",
            "--train.save-every", "5", "--train.eval-every", "1000", "--train.lr", "1e-2",
            "--train.parallel", "fsdp", *extra,
        ]  # fmt: skip

    full, out = tmp_path / "full", tmp_path / "full" / "out"
    done = subprocess.run(
        cmd(out, "--train.keep-checkpoints"), env=_two_process_env(full),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000025", "step-000030"]
    assert (ckpts / "step-000025" / "sharded" / ".metadata").is_file()
    want_adapter = load_file(out / "adapter_model.safetensors")

    # the same run, stopped after its step-25 checkpoint: that checkpoint and nothing after it
    again = tmp_path / "again" / "out"
    (again / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpts / "step-000025", again / "checkpoints" / "step-000025")
    (again / "checkpoints" / "latest").write_text("step-000025")
    resumed = subprocess.run(
        cmd(again, "--resume"), env=_two_process_env(tmp_path / "again"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 25" in resumed.stdout + resumed.stderr

    want, got = _losses(full), _losses(tmp_path / "again")
    assert sorted(got) == [26, 27, 28, 29, 30]
    assert {s: want[s] for s in got} == got  # bitwise
    assert len(set(got.values())) > 1  # the adapter is learning: losses move
    adapter = load_file(again / "adapter_model.safetensors")
    assert sorted(adapter) == sorted(want_adapter)
    assert all(torch.equal(adapter[k], want_adapter[k]) for k in adapter)
    assert (again / "adapter_config.json").is_file() and not (again / "model.safetensors").exists()
