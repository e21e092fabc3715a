"""``oficina eval`` on the real SmolLM2 (small --limit) and the example config."""

from __future__ import annotations

import json

import pytest

from oficina.cli import main
from oficina.config import load
from oficina.evals.evaluate import EvalConfig


def test_example_config_is_valid(repo_root, tiny_lm, monkeypatch, capsys):
    cfg = load(EvalConfig, repo_root / "examples/eval.yaml")
    assert cfg.model == "smollm2-135m-instruct" and cfg.split == "test"
    monkeypatch.chdir(repo_root)  # the config's task path is relative to the repository
    code = main(["eval", str(tiny_lm), "--config", "examples/eval.yaml", "--limit", "3",
                 "--bootstrap", "50", "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["model"]["spec"] == str(tiny_lm) and out["task"]["items"] == 3


@pytest.mark.integration
def test_eval_smollm2_on_the_demo_domain(smollm2, capsys):
    code = main(["eval", "smollm2-135m-instruct", "--limit", "4", "--bootstrap", "200", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["model"]["params"] == 134_515_008
    m = out["metrics"]
    assert 0 <= m["accuracy"]["ci"][0] <= m["accuracy"]["value"] <= m["accuracy"]["ci"][1] <= 1
    # a real model reads the Python reference far better than chance (perplexity ~ 49k)
    assert 2 < m["perplexity"]["value"] < 60
    assert 0.5 < m["bits_per_byte"]["value"] < 2.0
    inf = out["inference"]
    # the process held the fp32 weights (513 MB) at its peak
    assert inf["peak_rss_mb"] > inf["weights_mb"] > 500
    assert inf["prompt_tokens_mean"] > 50 and inf["latency_s_per_item"] > 0
