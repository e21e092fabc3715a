"""The CLI contract: typed configs, YAML + dotted overrides, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from oficina.cli import VERBS, main
from oficina.config import ConfigError, Section, VerbConfig, load, parse_args


class Train(Section):
    lr: float = Field(3e-4, gt=0, description="peak learning rate")
    steps: int = 100


class Demo(VerbConfig):
    positionals = ("model",)
    model: str
    method: Literal["lora", "full"] = "lora"
    train: Train = Train()
    json_: bool = Field(False, alias="json")
    inputs: list[str] = []


def test_defaults_yaml_and_dotted_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("method: full\ntrain:\n  lr: 0.01\n  steps: 7\n")
    cfg = parse_args("t", Demo, ["m1", "--config", str(y), "--train.lr", "3e-4", "--json"])
    assert cfg.model == "m1" and cfg.method == "full"
    assert (
        cfg.train.lr == pytest.approx(3e-4) and cfg.train.steps == 7
    )  # flag beats file, file beats default
    assert cfg.json_ is True


def test_dashed_and_underscored_flags_are_the_same(tmp_path):
    class C(VerbConfig):
        max_new_tokens: int = 5

    assert parse_args("t", C, ["--max-new-tokens", "9"]).max_new_tokens == 9
    assert parse_args("t", C, ["--max_new_tokens", "11"]).max_new_tokens == 11


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["m", "--train.lr", "abc"], "--train.lr: 'abc'"),
        (["m", "--train.lr", "-1"], "--train.lr: '-1'"),
        (["m", "--method", "qlora"], "'lora' or 'full'"),
    ],
)
def test_bad_values_name_field_value_and_allowed(argv, needle):
    with pytest.raises(ConfigError) as e:
        parse_args("t", Demo, argv)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert e.value.exit_code == 2


def test_unknown_yaml_key_is_an_error(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model: x\ntrain:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'train.lrr'"):
        load(Demo, y)


def test_cli_bad_flag_one_line_exit_2():
    r = subprocess.run(
        [sys.executable, "-m", "oficina.cli", "runs", "list", "--limit", "zero"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--limit" in r.stderr and "zero" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_unknown_verb_and_version(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown verb 'frobnicate'" in capsys.readouterr().err
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("oficina ")


def test_every_verb_has_help(capsys):
    for name in VERBS:
        with pytest.raises(SystemExit) as e:
            main([*name.split(), "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "--config" in out, name


def test_boolean_flags_take_words_too():
    class C(VerbConfig):
        positionals = ("name",)
        name: str = "x"
        enabled: bool = True

    assert parse_args("t", C, ["--enabled", "false"]).enabled is False
    assert parse_args("t", C, ["--no-enabled"]).enabled is False
    c = parse_args("t", C, ["--enabled", "n1"])  # not a bool word: stays a positional
    assert c.enabled is True and c.name == "n1"


def test_percent_in_help_and_defaults(capsys):
    class C(VerbConfig):
        """A verb."""

        fmt: str = Field("100% {x}", description="a 5% thing")

    with pytest.raises(SystemExit):
        parse_args("t", C, ["--help"])
    assert "a 5% thing (default: 100% {x})" in capsys.readouterr().out


def test_profile_beats_yaml_and_flags_beat_profile(tmp_path):
    class P(VerbConfig):
        profiles = {"quick": {"steps": 5, "train": {"lr": 0.5}}}
        quick: bool = False
        steps: int = 100
        train: Train = Train()

    y = tmp_path / "c.yaml"
    y.write_text("steps: 50\ntrain:\n  steps: 9\n")
    assert parse_args("t", P, ["--config", str(y)]).steps == 50
    c = parse_args("t", P, ["--config", str(y), "--quick"])
    assert (c.steps, c.train.lr, c.train.steps) == (5, 0.5, 9)
    assert parse_args("t", P, ["--config", str(y), "--quick", "--steps", "7"]).steps == 7


def test_every_verb_entry_follows_one_convention():
    """cli.VERBS: each entry exists, takes the verb's config and is annotated to return the exit
    code (library functions returning results, like recipes.finetune, are not entries)."""
    import importlib
    import inspect

    from oficina.cli import VERBS

    for name, verb in VERBS.items():
        module = importlib.import_module(verb.module)
        entry = getattr(module, verb.entry)
        sig = inspect.signature(entry)
        assert list(sig.parameters) == ["cfg"], name
        assert sig.return_annotation in (int, "int"), f"{name}: {sig.return_annotation}"
        assert sig.parameters["cfg"].annotation in (verb.config, getattr(module, verb.config)), name


def test_a_positional_may_come_from_the_config_file(tmp_path, capsys):
    """`oficina finetune --config examples/finetune.yaml` (as the example says) needs no MODEL
    argument; with neither, one line names what is missing."""
    from oficina.cli import main
    from oficina.config import ConfigError, parse_args
    from oficina.train.recipes import FinetuneConfig

    example = str(Path(__file__).resolve().parents[1] / "examples/finetune.yaml")
    cfg = parse_args("oficina finetune", FinetuneConfig, ["--config", example])
    assert cfg.model == "smollm2-135m-instruct" and cfg.method == "lora"
    assert (
        parse_args("oficina finetune", FinetuneConfig, ["tiny", "--config", example]).model
        == "tiny"
    )
    with pytest.raises(ConfigError, match="missing MODEL"):
        parse_args("oficina finetune", FinetuneConfig, ["--data", "x.jsonl", "--out", "o"])
    assert main(["finetune", "--data", "x.jsonl", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing MODEL" in err
