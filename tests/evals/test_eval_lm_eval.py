"""EleutherAI lm-evaluation-harness on Oficina's models, offline, on the demo domain's task file.

* ``lm_eval --model hf`` scores the SmolLM2 checkpoint Oficina converted (a safetensors HF
  directory written by ``oficina.models.sources``);
* ``lm_eval --model local-completions`` scores the same model behind ``oficina serve``
  (log-likelihood through ``echo`` + ``logprobs``).
Both must give the same per-answer log-likelihoods as ``oficina.evals.tasks.classify``.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import free_port, wait_healthy

from oficina.evals.evaluate import (
    LM_EVAL_DATA_PLACEHOLDER,
    LM_EVAL_TASK,
    build_lm_eval_example,
    lm_eval_task_dir,
    load_task,
)


def test_example_task_is_built_from_the_demo_domain(repo_root, tmp_path):
    """examples/lm_eval/ is what the builder makes from the demo domain now (no drift)."""
    built = build_lm_eval_example(tmp_path / "built")
    for name in ("pyref_section.yaml", "pyref_section.jsonl"):
        assert (built / name).read_text() == (repo_root / "examples/lm_eval" / name).read_text()
    spec = yaml.safe_load((built / "pyref_section.yaml").read_text())
    demo = load_task(None, "test")
    assert spec["doc_to_choice"] == demo.labels
    assert spec["doc_to_text"] == demo.template.replace("{text}", "{{text}}")
    assert spec["dataset_kwargs"]["data_files"]["test"] == LM_EVAL_DATA_PLACEHOLDER
    rows = [json.loads(x) for x in (built / "pyref_section.jsonl").read_text().splitlines()]
    assert len(rows) == len(demo.rows)
    assert all(demo.labels[r["gold"]] == r["label"] for r in rows)


def test_runnable_copy_has_an_absolute_data_path(repo_root, tmp_path):
    d = lm_eval_task_dir(tmp_path / "task")
    spec = yaml.safe_load((d / "pyref_section.yaml").read_text())
    path = Path(spec["dataset_kwargs"]["data_files"]["test"])
    assert path.is_absolute() and path == (repo_root / "examples/lm_eval/pyref_section.jsonl")
    assert spec["task"] == LM_EVAL_TASK


# ---------------------------------------------------------------------------- integration

N_HF, N_SERVER = 4, 2


def _lm_eval(model: str, model_args: str, include: Path, out: Path, limit: int, batch: int = 4):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(out / "hf-datasets"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [
        sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args,
        "--tasks", LM_EVAL_TASK, "--include_path", str(include), "--limit", str(limit),
        "--batch_size", str(batch), "--output_path", str(out), "--log_samples",
    ]  # fmt: skip
    if model == "hf":
        cmd += ["--device", "cpu"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(Path(glob.glob(f"{out}/**/results_*.json", recursive=True)[0]).read_text())
    samples_file = glob.glob(f"{out}/**/samples_{LM_EVAL_TASK}_*.jsonl", recursive=True)[0]
    samples = sorted(
        (json.loads(x) for x in Path(samples_file).read_text().splitlines()),
        key=lambda s: s["doc_id"],
    )
    return results["results"][LM_EVAL_TASK], samples


@pytest.fixture(scope="module")
def oficina_scores(smollm2, repo_root):
    """Oficina's own classify() on the first items of the lm-eval task file."""
    from oficina.evals.tasks import classify
    from oficina.infer.engine import Engine

    task = load_task(None, "test")
    lines = (repo_root / "examples/lm_eval/pyref_section.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines[: max(N_HF, N_SERVER)]]
    engine = Engine.from_spec(str(smollm2))
    return classify(engine, rows, task.labels, task.template, batch_size=4, bootstrap=50)


def _same_as_oficina(samples, ours, n):
    assert len(samples) == n
    for s in samples:
        theirs = [float(r[0]) for r in s["filtered_resps"]]
        assert theirs == pytest.approx(ours["scores"][s["doc_id"]], abs=2e-3)
        assert s["acc"] == ours["per_item"][s["doc_id"]]


@pytest.mark.integration
def test_lm_eval_hf_scores_an_oficina_checkpoint(smollm2, oficina_scores, tmp_path):
    task_dir = lm_eval_task_dir(tmp_path / "task")
    res, samples = _lm_eval(
        "hf", f"pretrained={smollm2},dtype=float32", task_dir, tmp_path / "out", N_HF
    )
    _same_as_oficina(samples, oficina_scores, N_HF)
    assert res["acc,none"] == pytest.approx(sum(oficina_scores["per_item"][:N_HF]) / N_HF)
    assert "acc_norm,none" in res


@pytest.mark.integration
def test_lm_eval_local_completions_against_oficina_serve(smollm2, oficina_scores, tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "oficina.cli", "serve", f"smol={smollm2}", "--port", str(port),
         "--embeddings", "none", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, server, output=lambda: (tmp_path / "serve.log").read_text()[-2000:])
        task_dir = lm_eval_task_dir(tmp_path / "task")
        args = (
            f"model=smol,base_url={base}/v1/completions,tokenizer_backend=huggingface,"
            f"tokenizer={smollm2},num_concurrent=1,max_retries=1"
        )
        res, samples = _lm_eval("local-completions", args, task_dir, tmp_path / "out", N_SERVER, 1)
        _same_as_oficina(samples, oficina_scores, N_SERVER)
        assert res["acc,none"] == pytest.approx(
            sum(oficina_scores["per_item"][:N_SERVER]) / N_SERVER
        )
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
