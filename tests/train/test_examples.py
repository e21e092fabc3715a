"""The example configs load and validate, and every verb has a working --help."""

from __future__ import annotations

import pytest

from oficina.config import load
from oficina.demo_domain import TEMPLATE
from oficina.train.recipes import DistillConfig, FinetuneConfig, PretrainConfig


@pytest.mark.parametrize(
    "name,cls",
    [("pretrain", PretrainConfig), ("finetune", FinetuneConfig), ("distill", DistillConfig)],
)
def test_example_configs_load(repo_root, name, cls):
    cfg = load(cls, repo_root / "examples" / f"{name}.yaml")
    assert cfg.out.startswith("workspace/models/")
    if name == "finetune":
        assert cfg.template == TEMPLATE and cfg.method == "lora"


@pytest.mark.parametrize("verb", ["pretrain", "finetune", "distill", "merge"])
def test_verbs_have_help(verb, capsys):
    from oficina.cli import main

    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert "--resume" in capsys.readouterr().out or verb == "merge"


def test_flag_overrides_reach_the_config():
    from oficina.config import parse_args

    cfg = parse_args(
        "oficina finetune",
        FinetuneConfig,
        ["m", "--data", "d.jsonl", "--out", "o", "--train.lr", "1e-3", "--lora.r", "4"],
    )
    assert cfg.model == "m" and cfg.train.lr == 1e-3 and cfg.lora.r == 4
