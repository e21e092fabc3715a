"""Bad input to every verb of ``oficina.cli.VERBS``: a missing input file, a malformed YAML, a
YAML that is not a mapping, a wrong type for one field. Each ends in one line on stderr that
names the problem, exit 2 (a config, or a missing input: ``errors.NotFound``, the code the CLI
gives an OS ``ENOENT`` too), no traceback, nothing written. (OS errors while writing — a
path under a file, a full or read-only disk — are tests/test_cli_errors.py's.)
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from oficina.cli import VERBS, main
from oficina.config import _unwrap_optional, leaf_fields

MISSING = "nothing-here"


def _config_class(verb: str):
    v = VERBS[verb]
    return getattr(importlib.import_module(v.module), v.config)


def _positionals(verb: str) -> list[str]:
    """Dummy values for the required positional arguments (argparse asks for them first)."""
    cls = _config_class(verb)
    fields = {d: (_unwrap_optional(a), i) for d, a, i in leaf_fields(cls)}
    out: list[str] = []
    for p in cls.positionals:
        ann, info = fields[p]
        if info.is_required():  # a list takes two (runs compare wants at least two)
            out += ["x", "y"] if getattr(ann, "__origin__", None) is list else ["x"]
    return out


def _missing_input_argv(verb: str, tiny_lm: Path, tmp: Path) -> list[str]:
    """The verb with its main input file (or model folder) missing; verbs that read no file
    get a missing --config file."""
    m, out, lm = str(tmp / f"{MISSING}.jsonl"), str(tmp / "out"), str(tiny_lm)
    table = {
        "models pull": [m],
        "models info": [m],
        "generate": [m, "--prompt", "hi"],
        "chat": [m],
        "batch": [lm, "--input", m, "--output", out],
        "batch lookup": [lm, "--input", m, "--output", out],
        "quantize": [m, "--out", out],
        "serve": [m],
        "data prepare": [m, "--out", out],
        "data pack": [m, "--tokenizer", lm, "--out", out],
        "tokenizer train": [m, "--out", out],
        "tokenizer eval": ["--tokenizers", lm, "--text", m],
        "pretrain": ["--data", m, "--out", out],
        "finetune": [lm, "--data", m, "--out", out],
        "distill": ["--teacher", lm, "--data", m, "--out", out],
        "merge": [m, "--out", out],
        "index": [m, "--out", out],
        "index eval": [m, "--questions", m],
        "ask": [m, "a question", "--model", lm],
        "eval": [lm, "--task", m],
        "ladder": [m, "--out", out],
    }
    args = table.get(verb, [*_positionals(verb), "--config", str(tmp / f"{MISSING}.yaml")])
    return [*verb.split(), *args]


def _wrong_type(verb: str) -> tuple[dict, str, str]:
    """(YAML with one field of the wrong type, the flag it names, the value shown)."""
    cls = _config_class(verb)
    leaves = [(d, _unwrap_optional(a), i) for d, a, i in leaf_fields(cls)]
    free = [x for x in leaves if x[0] not in cls.positionals]
    # required settings get plausible values, so the wrong one is the only problem
    data: dict = {}
    for dotted, ann, info in free:
        if info.is_required() and "." not in dotted:
            data[dotted] = ["x"] if getattr(ann, "__origin__", None) is list else "x"
    scalar = [d for d, a, _ in free if a in (int, float, bool)]
    if scalar:
        data[scalar[0].split(".")[0]] = _nested(scalar[0], "many")
        return data, f"--{scalar[0]}", "'many'"
    text = [d for d, a, _ in free if a is str]
    if text:
        data[text[0].split(".")[0]] = _nested(text[0], [1, 2])
        return data, f"--{text[0]}", "[1, 2]"
    return {"no_such_setting": 1}, "'no_such_setting'", "1"  # a verb without settings


def _nested(dotted: str, value):
    parts = dotted.split(".")[1:]
    for p in reversed(parts):
        value = {p: value}
    return value


def _one_line(capsys, code: int, verb: str) -> str:
    err = capsys.readouterr().err
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith((f"oficina {verb}: error: ", f"oficina {verb}: ")), err
    return lines[0]


VERB_NAMES = list(VERBS)


@pytest.mark.parametrize("verb", VERB_NAMES)
def test_missing_input_file(verb, tiny_lm, tmp_path, capsys):
    argv = _missing_input_argv(verb, tiny_lm, tmp_path)
    code = main(argv)
    line = _one_line(capsys, code, verb)
    assert code == 2, (code, line)
    assert MISSING in line, line
    assert not (tmp_path / "out").exists(), line  # nothing half-written


@pytest.mark.parametrize("verb", VERB_NAMES)
def test_malformed_yaml(verb, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: ok\nsettings: [unclosed\n")
    code = main([*verb.split(), *_positionals(verb), "--config", str(bad)])
    line = _one_line(capsys, code, verb)
    assert code == 2
    assert line.endswith(f"config file {bad} is not valid YAML (line 3)"), line


@pytest.mark.parametrize("verb", VERB_NAMES)
def test_yaml_that_is_not_a_mapping(verb, tmp_path, capsys):
    bad = tmp_path / "list.yaml"
    bad.write_text("- out\n- x\n")
    code = main([*verb.split(), *_positionals(verb), "--config", str(bad)])
    line = _one_line(capsys, code, verb)
    assert code == 2
    assert line.endswith(f"config file {bad} must hold a mapping of settings, got list"), line


@pytest.mark.parametrize("verb", VERB_NAMES)
def test_wrong_type_for_one_field(verb, tmp_path, capsys):
    data, flag, shown = _wrong_type(verb)
    cfg = tmp_path / "typed.yaml"
    cfg.write_text(yaml.safe_dump(data))
    code = main([*verb.split(), *_positionals(verb), "--config", str(cfg)])
    line = _one_line(capsys, code, verb)
    assert code == 2
    assert f"{flag}: {shown}" in line or f"{flag} (value {shown})" in line, line


@pytest.mark.parametrize(
    "var, value", [("OFICINA_DECODE_THREADS", "many"), ("OFICINA_INT8_DECODE", "fast")]
)
def test_a_bad_engine_setting_is_one_line_and_exit_2(tiny_lm, var, value):
    """The engine's settings are read when it is imported: a verb that loads it still answers
    one line naming the variable, exit 2 (a setting), no traceback."""
    import os
    import subprocess
    import sys

    argv = ["generate", str(tiny_lm), "--prompt", "hi", "--max-new-tokens", "1"]
    r = subprocess.run(
        [sys.executable, "-m", "oficina.cli", *argv],
        env={**os.environ, var: value},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    assert f"{var}={value!r}" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
