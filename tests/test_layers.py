"""The import layers and the no-cycle rule (``[tool.importlinter]`` in pyproject.toml) hold on
the real tree, and ``lint-imports`` reports a planted upward import, cycle or unplaced module.

Each check runs the real ``lint-imports`` in a subprocess (a fraction of a second: no model, no
network) on a source tree: the one under test, or a copy of it with one planted line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import oficina

CONFIG = Path(__file__).resolve().parents[1] / "pyproject.toml"
PACKAGE = Path(oficina.__file__).resolve().parent  # the tree under test (src/oficina)


def lint_imports(src_root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contracts, on the ``oficina`` found in ``src_root``."""
    env = {**os.environ, "PYTHONPATH": str(src_root)}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            *("--config", str(CONFIG), "--no-cache", "--no-logo"),
        ],
        cwd=src_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def planted(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the package with ``line`` appended to ``module`` (a path inside oficina/)."""
    shutil.copytree(PACKAGE, tmp_path / "oficina", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "oficina" / module
    with target.open("a", encoding="utf-8") as f:
        f.write(f"\n{line}\n")
    return tmp_path


def test_the_real_tree_keeps_every_contract():
    r = lint_imports(PACKAGE.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 2 kept, 0 broken." in r.stdout


def test_the_copy_is_what_gets_checked(tmp_path):
    # Without this, a plant could "fail" only because the copy was never looked at.
    r = lint_imports(planted(tmp_path, "errors.py", "# nothing imported"))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # Core importing the CLI: the import the layers exist to forbid.
        ("errors.py", "import oficina.cli", "oficina.errors is not allowed to import oficina.cli"),
        # A model-layer module reaching up into inference.
        (
            "models/presets.py",
            "from oficina.infer import engine",
            "oficina.models is not allowed to import oficina.infer",
        ),
        # Siblings in one independent layer: inference must not lean on training.
        (
            "infer/prompting.py",
            "from oficina.train import recipes",
            "oficina.infer is not allowed to import oficina.train",
        ),
    ],
)
def test_an_upward_or_sideways_import_breaks_the_layers(tmp_path, module, line, broken):
    r = lint_imports(planted(tmp_path, module, line))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Layers: core -> models" in r.stdout and " BROKEN" in r.stdout
    assert broken in r.stdout
    importer = "oficina." + module.removesuffix(".py").replace("/", ".")
    imported = line.replace("from ", "").replace(" import ", ".").replace("import ", "")
    assert f"- {importer} -> {imported} (l." in r.stdout  # names the planted import and its line


def test_a_cycle_inside_a_layer_breaks_the_acyclic_contract(tmp_path):
    # counting is imported by sizing and sources; importing sizing back closes a cycle the layers
    # contract cannot see (both modules are in the models layer).
    r = lint_imports(planted(tmp_path, "models/counting.py", "import oficina.models.sizing"))
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "No import cycles between the modules of any package BROKEN" in out
    # the layers alone cannot see this cycle (the report wraps a long contract name: unwrap it)
    assert "-> serve -> cli KEPT" in " ".join(out.split())
    assert "No cycles are allowed in oficina.models." in out
    assert "- .counting -> .sizing (1 import)" in out


def test_a_module_outside_every_layer_is_reported(tmp_path):
    root = planted(tmp_path, "errors.py", "# nothing imported")
    (root / "oficina" / "newthing.py").write_text('"""A module no layer names yet."""\n')
    r = lint_imports(root)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "oficina.newthing" in r.stdout
