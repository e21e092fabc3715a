"""config.py's own errors and helpers, each on exact values: load_yaml's three refusals (missing
file, invalid YAML with its line, not a mapping), the one-line validation messages, dotted
overrides, deep merges and how flag strings become values."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import Field

from oficina.config import (
    ConfigError,
    Section,
    VerbConfig,
    _allowed,
    _coerce_cli,
    deep_merge,
    dump_yaml,
    leaf_fields,
    load,
    load_yaml,
    make_parser,
    parse_args,
    set_dotted,
)


class Inner(Section):
    lr: float = Field(0.1, gt=0)
    steps: int = 3


class Conf(VerbConfig):
    positionals = ("inputs",)
    inputs: list[str] = []
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    limit: int | None = None
    opts: dict[str, int] = {}
    flag: bool = False
    inner: Inner = Inner()


def test_load_yaml_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as e:
        load_yaml(p)
    assert str(e.value) == f"config file not found: {p}"
    assert e.value.exit_code == 2
    (tmp_path / "a-dir.yaml").mkdir()  # a folder is not a config file either
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "a-dir.yaml")


def test_load_yaml_invalid_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: ok\nmode: a\ninner: {lr: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(p)
    assert str(e.value).startswith(f"config file {p} is not valid YAML (line ")
    line = int(str(e.value).split("(line ")[1].rstrip(")"))
    assert line in (3, 4)  # the unclosed bracket: line 3, or the end of the file just after it
    assert "\n" not in str(e.value) and e.value.exit_code == 2
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 2\)"):
        load_yaml(p)


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just words\n", "str"), ("3\n", "int")])  # fmt: skip
def test_load_yaml_not_a_mapping(tmp_path, text, kind):
    p = tmp_path / "list.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_yaml(p)
    assert str(e.value) == f"config file {p} must hold a mapping of settings, got {kind}"
    assert e.value.exit_code == 2


def test_load_yaml_values_and_an_empty_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: café\ninner:\n  lr: 0.5\n")
    assert load_yaml(p) == {"name": "café", "inner": {"lr": 0.5}}
    assert load_yaml(str(p)) == {"name": "café", "inner": {"lr": 0.5}}  # a str path too
    p.write_text("")
    assert load_yaml(p) == {}
    p.write_text("# only a comment\n")
    assert load_yaml(p) == {}


def test_validation_messages_are_one_exact_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(Conf, None, {"inner": {"lr": -1}})
    assert str(e.value) == "invalid value for --inner.lr: -1 — input should be greater than 0"
    with pytest.raises(ConfigError) as e:
        load(Conf, None, {"inner": {"lrr": 2}})
    assert str(e.value) == (
        "unknown setting 'inner.lrr' (value 2); see --help for the settings this verb takes"
    )

    class Needs(VerbConfig):
        model: str

    with pytest.raises(ConfigError) as e:
        load(Needs, None, {})
    assert str(e.value) == "missing required setting --model"
    with pytest.raises(ConfigError) as e:  # a list index is not part of the flag's name
        load(Conf, None, {"inputs": ["a", 3]})
    assert str(e.value).startswith("invalid value for --inputs: 3 — input should be a valid")


def test_set_dotted_and_deep_merge():
    tree: dict = {}
    set_dotted(tree, "a.b.c", 1)
    set_dotted(tree, "a.d", 2)
    set_dotted(tree, "e", 3)
    assert tree == {"a": {"b": {"c": 1}, "d": 2}, "e": 3}
    with pytest.raises(ConfigError) as e:
        set_dotted(tree, "e.f", 4)
    assert str(e.value) == "'e.f': 'e' is a value, not a section"
    base = {"a": {"b": 1, "c": 2}, "d": 3, "e": {"f": 1}}
    got = deep_merge(base, {"a": {"c": 9, "x": 0}, "d": {"n": 1}, "e": 5})
    assert got == {"a": {"b": 1, "c": 9, "x": 0}, "d": {"n": 1}, "e": 5}
    assert base == {"a": {"b": 1, "c": 2}, "d": 3, "e": {"f": 1}}  # the inputs are untouched


def test_flag_strings_become_values():
    assert _coerce_cli('{"k": 1, "v": [1, 2]}', dict[str, list]) == {"k": 1, "v": [1, 2]}
    assert _coerce_cli("k: 2", dict[str, int] | None) == {"k": 2}
    assert (
        _coerce_cli("{bad", dict[str, int]) == "{bad"
    )  # left for pydantic to refuse with its field name
    assert _coerce_cli("None", int | None) is None and _coerce_cli("null", int) is None
    assert _coerce_cli("None", str) == "None"  # a text field keeps the word
    assert _coerce_cli("7", int) == "7"  # pydantic does the conversion, and names the field
    cfg = parse_args("t", Conf, ["f1", "f2", "--limit", "none", "--opts", "{a: 1}", "--mode", "b"])
    assert (cfg.inputs, cfg.limit, cfg.opts, cfg.mode) == (["f1", "f2"], None, {"a": 1}, "b")


def test_allowed_and_leaf_fields():
    assert _allowed(Literal["a", "b"]) == "a | b"
    assert _allowed(list[str]) == "a list" and _allowed(tuple[int, int] | None) == "a list"
    assert [_allowed(t) for t in (int, float, bool, str)] == [
        "an integer",
        "a number",
        "true/false",
        "text",
    ]
    assert _allowed(int | None) == "an integer" and _allowed(Inner) == "Inner"
    names = [d for d, _, _ in leaf_fields(Conf)]
    assert names == ["inputs", "name", "mode", "limit", "opts", "flag", "inner.lr", "inner.steps"]


def test_yaml_round_trip(tmp_path):
    cfg = parse_args("t", Conf, ["--inner.steps", "9", "--flag", "--name", "ü"])
    p = tmp_path / "dump.yaml"
    p.write_text(dump_yaml(cfg))
    assert "ü" in p.read_text()  # written as text, not escaped
    assert load(Conf, p) == cfg


class Helped(VerbConfig):
    """A verb."""

    positionals = ("model", "more")
    model: str = Field(description="the model")
    more: list[str] = Field(default_factory=list, description="extra inputs")
    max_new: int = Field(5, description="how many, 50%")
    mode: Literal["a", "b"] = Field("a", description="which mode")
    quiet: bool = Field(False, description="say less")
    opts: dict[str, int] = Field(default_factory=dict, description="options")
    names: list[str] = Field(default_factory=list, description="some names")
    inner: Inner = Inner()
    req: str = Field(description="needed")


def test_help_shows_every_setting_its_default_and_choices():
    text = " ".join(make_parser("prog", Helped).format_help().split())  # unwrap the columns
    for want in [
        "usage: prog [-h] [--config FILE.yaml] [--max-new MAX_NEW] [--mode MODE] "
        "[--quiet | --no-quiet] [--opts JSON] [--names [X ...]] [--inner.lr LR] "
        "[--inner.steps STEPS] [--req REQ] [MODEL] [MORE ...]",
        "A verb.",
        "MODEL the model (required: here, or as 'model:' in the --config file) "
        "MORE extra inputs (default: [])",
        "--config FILE.yaml read settings from a YAML file (flags override it)",
        "--max-new MAX_NEW, --max_new MAX_NEW how many, 50% (default: 5)",
        "--mode MODE which mode (default: a) [choices: a | b]",
        "--quiet, --no-quiet say less (default: False)",
        "--opts JSON options (default: {})",
        "--names [X ...] some names (default: [])",
        "--inner.lr LR (default: 0.1)",
        "--req REQ needed (required)",
    ]:
        assert want in text, want
    assert "PydanticUndefined" not in text
    assert make_parser("prog", Helped, "Told otherwise.").description == "Told otherwise."


def test_a_bad_flag_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args("prog", Helped, ["m", "--req", "r", "--nope"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "prog: error: unrecognized arguments: --nope\n"


def test_boolean_words_for_every_boolean_flag():
    class B(VerbConfig):
        positionals = ("name",)
        name: str = "x"
        dry_run: bool = False
        loud: bool = True

    c = parse_args("t", B, ["--dry-run", "yes", "--loud", "OFF", "n1"])
    assert (c.dry_run, c.loud, c.name) == (True, False, "n1")
    c = parse_args("t", B, ["--dry_run", "1", "--loud", "no"])
    assert (c.dry_run, c.loud) == (True, False)
    c = parse_args("t", B, ["n2", "--loud"])  # a flag last, with no word after it
    assert (c.name, c.loud) == ("n2", True)
    c = parse_args("t", B, ["--loud", "false", "--dry-run", "on"])
    assert (c.loud, c.dry_run) == (False, True)


def test_dump_yaml_keeps_field_order_aliases_and_plain_values():
    class D(VerbConfig):
        zeta: int = 1
        alpha: tuple[int, int] = (1, 2)
        json_: bool = Field(False, alias="json")

    assert dump_yaml(D()) == "zeta: 1\nalpha:\n- 1\n- 2\njson: false\n"
