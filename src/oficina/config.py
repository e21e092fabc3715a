"""Typed configs for every verb: pydantic models, YAML files and dotted CLI overrides.

Each verb owns exactly one config class (a subclass of ``VerbConfig``). The CLI builds its
argument parser from that class, so ``--help`` always shows the real fields and defaults:

    oficina pretrain --config examples/pretrain.yaml --train.lr 3e-4 --max-steps 200

Precedence, lowest first: the class defaults, the YAML file, the command-line flags.
A bad value never reaches the verb: it stops here with one line naming the field, the value
and what is allowed (exit code 2).
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from oficina.errors import UserError


class ConfigError(UserError):
    """A config or flag that cannot be used; the message is one line for the user (exit 2)."""

    exit_code = 2


class Section(BaseModel):
    """A nested group of settings (``--train.lr``). Unknown keys are errors, not ignored."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, protected_namespaces=(), populate_by_name=True
    )


class VerbConfig(Section):
    """Base of every verb's config.

    ``positionals`` names the fields filled from positional arguments, in order; a field
    typed ``list[...]`` there takes all remaining positionals (``oficina index A B C``).
    """

    positionals: ClassVar[tuple[str, ...]] = ()
    # True for verbs whose main argument *is* a YAML config (``oficina ladder CONFIG.yaml``).
    config_positional: ClassVar[bool] = False
    # Named profiles switched on by a boolean field (``--quick``): their values replace the
    # YAML file's, and flags on the command line still win over them.
    profiles: ClassVar[dict[str, dict]] = {}


# ---------------------------------------------------------------------------- field walking


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X`` (the CLI never needs to spell None explicitly)."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_section(annotation: Any) -> bool:
    ann = _unwrap_optional(annotation)
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def leaf_fields(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Every settable leaf as (dotted name, annotation, FieldInfo), nested sections flattened."""
    out: list[tuple[str, Any, Any]] = []
    for name, info in cls.model_fields.items():
        dotted = f"{prefix}{info.alias or name}"
        if _is_section(info.annotation):
            out.extend(leaf_fields(_unwrap_optional(info.annotation), dotted + "."))
        else:
            out.append((dotted, info.annotation, info))
    return out


def _allowed(annotation: Any) -> str:
    ann = _unwrap_optional(annotation)
    if get_origin(ann) is Literal:
        return " | ".join(str(a) for a in get_args(ann))
    if get_origin(ann) in (list, tuple):
        return "a list"
    if isinstance(ann, type):
        return {int: "an integer", float: "a number", bool: "true/false", str: "text"}.get(
            ann, ann.__name__
        )
    return str(ann)


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """tree['a']['b'] = value for dotted 'a.b', creating dicts on the way."""
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"'{dotted}': '{p}' is a value, not a section")
    node[parts[-1]] = value


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------- loading


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {p} must hold a mapping of settings, got {type(data).__name__}"
        )
    return data


def format_validation_error(err: ValidationError, data: dict | None = None) -> str:
    """The first pydantic error as one line: field, bad value, what is allowed."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"] if not isinstance(p, int)) or "config"
    flag = "--" + loc
    kind = e["type"]
    value = e.get("input")
    if kind == "extra_forbidden":
        return f"unknown setting '{loc}' (value {value!r}); see --help for the settings this verb takes"
    if kind == "missing":
        return f"missing required setting {flag}"
    msg = e["msg"]
    return f"invalid value for {flag}: {value!r} — {msg[0].lower() + msg[1:]}"


def build(cls: type[VerbConfig], data: dict) -> VerbConfig:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        if (
            first["type"] == "missing"
            and len(first["loc"]) == 1
            and first["loc"][0] in cls.positionals
        ):
            name = str(first["loc"][0])
            raise ConfigError(
                f"missing {name.upper()}: give it as an argument, or as '{name}:' in the --config file"
            ) from None
        raise ConfigError(format_validation_error(err, data)) from None


def load(
    cls: type[VerbConfig], path: str | Path | None = None, overrides: dict | None = None
) -> VerbConfig:
    """Defaults <- YAML file <- overrides (a nested dict); validated."""
    file_data = load_yaml(path) if path else {}
    data = deep_merge(file_data, overrides or {})
    for flag, profile in getattr(cls, "profiles", {}).items():
        if data.get(flag) is True:
            data = deep_merge(deep_merge(file_data, profile), overrides or {})
    return build(cls, data)


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(
        cfg.model_dump(mode="json", by_alias=True), sort_keys=False, allow_unicode=True
    )


# ---------------------------------------------------------------------------- argparse


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line and exit code 2 (no usage dump)."""

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def make_parser(prog: str, cls: type[VerbConfig], description: str = "") -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=prog,
        description=description or inspect.cleandoc(cls.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="read settings from a YAML file (flags override it)"
    )
    if cls.config_positional:
        parser.add_argument(
            "_config_file",
            metavar="CONFIG.yaml",
            nargs="?",
            help="the settings file (same as --config)",
        )
    fields = dict((d, (a, i)) for d, a, i in leaf_fields(cls))
    for name in cls.positionals:
        ann, info = fields[name]
        ann_u = _unwrap_optional(ann)
        variadic = get_origin(ann_u) in (list, tuple)
        required = info.is_required()
        # Optional to argparse even when required: a --config file may supply it; pydantic then
        # names it if neither did (``oficina finetune --config examples/finetune.yaml`` works).
        nargs = "*" if variadic else "?"
        parser.add_argument(
            f"_pos_{name}",
            metavar=name.upper(),
            nargs=nargs,
            default=None,
            help=(
                (info.description or "")
                + (
                    f" (required: here, or as '{name}:' in the --config file)"
                    if required
                    else f" (default: {info.get_default(call_default_factory=True)})"
                )
            ).replace("%", "%%"),
        )
    for dotted, ann, info in leaf_fields(cls):
        if dotted in cls.positionals:
            continue
        ann_u = _unwrap_optional(ann)
        flags = [f"--{dotted}"]
        dashed = f"--{dotted.replace('_', '-')}"
        if dashed != flags[0]:
            flags.insert(0, dashed)
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = None
        help_text = info.description or ""
        if info.is_required():
            help_text += " (required)"
        elif ann_u is not bool:
            help_text += f" (default: {default})"
        if get_origin(ann_u) is Literal:
            help_text += f" [choices: {_allowed(ann_u)}]"
        kwargs: dict[str, Any] = {
            "dest": "_opt_" + dotted,
            "default": argparse.SUPPRESS,
            "help": help_text.replace("%", "%%"),  # argparse formats help with %
        }
        if ann_u is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["help"] = (help_text + f" (default: {default})").replace("%", "%%")
        elif get_origin(ann_u) in (list, tuple):
            kwargs["nargs"] = "*"
            kwargs["metavar"] = "X"
        elif get_origin(ann_u) is dict:
            kwargs["metavar"] = "JSON"
        else:
            kwargs["metavar"] = dotted.split(".")[-1].upper()
        parser.add_argument(*flags, **kwargs)
    return parser


def _coerce_cli(value: Any, annotation: Any) -> Any:
    """Flag strings -> python values pydantic can validate (dicts arrive as JSON/YAML)."""
    ann = _unwrap_optional(annotation)
    if get_origin(ann) is dict and isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    if isinstance(value, str) and value.lower() in ("none", "null") and ann is not str:
        return None
    return value


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _bool_words(cls: type[VerbConfig], argv: list[str]) -> list[str]:
    """Let a boolean flag take a word, as dotted overrides do: ``--rungs.rag.enabled false``."""
    flags = set()
    for dotted, ann, _ in leaf_fields(cls):
        if _unwrap_optional(ann) is bool:
            flags |= {f"--{dotted}", f"--{dotted.replace('_', '-')}"}
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1].lower() if i + 1 < len(argv) else None
        if a in flags and nxt in _TRUE | _FALSE:
            out.append(a if nxt in _TRUE else "--no-" + a[2:])
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def parse_args(
    prog: str, cls: type[VerbConfig], argv: list[str], description: str = ""
) -> VerbConfig:
    """Parse argv for one verb into a validated config (raises ConfigError)."""
    parser = make_parser(prog, cls, description)
    ns = vars(parser.parse_intermixed_args(_bool_words(cls, argv)))
    fields = {d: a for d, a, _ in leaf_fields(cls)}
    overrides: dict = {}
    for key, value in ns.items():
        if key.startswith("_pos_") and value is not None and value != []:
            name = key[5:]
            set_dotted(overrides, name, _coerce_cli(value, fields[name]))
        elif key.startswith("_opt_"):
            name = key[5:]
            set_dotted(overrides, name, _coerce_cli(value, fields[name]))
    config_path = ns.get("config") or ns.get("_config_file")
    return load(cls, config_path, overrides)
