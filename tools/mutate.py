"""Mutation testing (mutmut 3) of the modules where a silent error changes a user's result.

    python tools/mutate.py                      # every module below, one after the other
    python tools/mutate.py metrics dedup        # some of them
    python tools/mutate.py recipes --sample 60  # a seeded sample of a module's mutants

Each module runs in its own scratch copy of the project (``.mutate/<name>/``: src, tests,
examples and a pyproject.toml whose ``[tool.mutmut]`` names that one file and its targeted
tests), because mutmut reads one config per directory and a per-module test selection keeps a run in minutes.
mutmut then runs, for each mutant, only the selected tests that call the mutated function; the
sampled modules (training and evaluation runs) skip mutmut's forked runner and run each sampled
mutant's whole selection in a fresh interpreter (see RECHECK_S for why).
Prints one line per module: killed / tested = score, and the survivors' names; with
``--json FILE`` the same as JSON. Slow (minutes to an hour): ``make mutate``, never in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutate"

# name -> (file to mutate, the tests that exercise it, mutant-name globs or None for all).
# No `integration` test (SmolLM2, MiniLM) belongs here: the tiny-model tests run in seconds.
MODULES: dict[str, tuple[str, list[str], list[str] | None]] = {
    "metrics": (
        "src/oficina/evals/metrics.py",
        ["tests/evals/test_eval_metrics.py", "tests/evals/test_ladder_recommend.py"],
        None,
    ),
    "config": (
        "src/oficina/config.py",
        ["tests/test_config_cli.py", "tests/test_config_errors.py"],
        None,
    ),
    "dedup": (
        "src/oficina/data/stages/dedup.py",
        [
            "tests/data/test_data_dedup_values.py",
            "tests/data/test_data_dedup.py",
            "tests/data/test_data_stages.py",
        ],
        None,
    ),
    # The ladder's recommendation (compare, recommend): ladder/recommend.py.
    "recommend": (
        "src/oficina/ladder/recommend.py",
        [
            "tests/ladder/test_ladder_stats.py",
            "tests/ladder/test_ladder_report.py",
            "tests/ladder/test_ladder_recommend_text.py",
        ],
        None,
    ),
    "evaluate": (
        "src/oficina/evals/evaluate.py",
        [
            "tests/evals/test_eval_task_loading.py",
            "tests/evals/test_eval_cli.py",
            "tests/evals/test_eval_tasks.py",
            "tests/evals/test_eval_head.py",
            "-m",
            "not integration",
        ],
        None,
    ),
    "objectives": (
        "src/oficina/train/objectives.py",
        [
            "tests/train/test_objectives_values.py",
            "tests/train/test_data_objectives.py",
            "tests/train/test_fused_ce.py",
        ],
        None,
    ),
    "recipes": (
        "src/oficina/train/recipes.py",
        [
            "tests/train/test_recipes_pieces.py",
            "tests/train/test_finetune_distill.py",
            "tests/train/test_loop.py",  # pretrain
            "tests/train/test_recipes_lineage.py",
        ],
        None,
    ),
}

# Modules whose every mutant reruns whole training or eval runs: a seeded sample of their mutants
# by default (an hour each otherwise on 2 cores); --sample overrides.
DEFAULT_SAMPLE = {"objectives": 30, "evaluate": 30, "recipes": 30}

MUTMUT = [sys.executable, "-m", "mutmut"]
STATUS = re.compile(r"^\s*(\S+): (.+)$")


def _prepare(name: str) -> Path:
    """A fresh scratch copy with [tool.mutmut] for this module alone."""
    path, tests, _ = MODULES[name]
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for d in ("src", "tests", "examples"):  # tests read examples/ (the demo task, configs)
        shutil.copytree(ROOT / d, work / d, ignore=ignore)
    # a test file named here but not written yet is left out (the "before" score)
    tests = [t for t in tests if not t.startswith("tests/") or (ROOT / t).exists()]
    selection = ", ".join(json.dumps(t) for t in tests)
    conf = (ROOT / "pyproject.toml").read_text()
    conf += (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        'also_copy = ["examples"]\n'
        f"only_mutate = [{json.dumps(path)}]\n"
        f"pytest_add_cli_args_test_selection = [{selection}]\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]\n'
        # A mutant's time limit is (its tests' time + this) * 15. The timed test phase leaves out
        # a forked run's session fixtures (the tiny model is rebuilt in each fork): without room
        # for them a busy machine "kills" mutants by timeout that no test caught.
        "timeout_constant = 10.0\n"
    )
    (work / "pyproject.toml").write_text(conf)
    # mutmut copies src/ into mutants/ later; the folder must exist before Python starts, or the
    # import system caches "nothing here" for it and the tests import the unmutated package.
    (work / "mutants" / "src").mkdir(parents=True)
    return work


def _statuses(work: Path) -> dict[str, str]:
    out = subprocess.run(
        [*MUTMUT, "results", "--all", "true"], cwd=work, capture_output=True, text=True
    ).stdout
    return {m.group(1): m.group(2).strip() for ln in out.splitlines() if (m := STATUS.match(ln))}


def _matches(key: str, globs: list[str] | None) -> bool:
    import fnmatch

    return globs is None or any(fnmatch.fnmatch(key, g) for g in globs)


# A mutant that mutmut's forked runner timed out on is run again in a fresh interpreter, with
# this wall-clock limit. Why: in the sampled modules (recipes) 17 of 30 mutants "timed out" at
# load 12, and the first one rechecked (`_save_hf`'s `world > 1` -> `world > 2`, a no-op at world
# 1) passed its whole selection in 52 s — a fork of a process that has already run torch is slow
# or stuck, so mutmut's timeout is no evidence that any test noticed the mutant.
RECHECK_S = 1200


def _recheck(work: Path, env: dict, key: str, selection: list[str]) -> str:
    """``killed`` if the selected tests fail with mutant ``key`` active, ``survived`` if they
    pass, ``timeout`` only if they really run past RECHECK_S."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *selection]
    try:
        rc = subprocess.run(
            cmd, cwd=work, env={**env, "MUTANT_UNDER_TEST": key}, capture_output=True,
            timeout=RECHECK_S,
        ).returncode  # fmt: skip
    except subprocess.TimeoutExpired:
        return "timeout"
    # 0: every test passed; 5: none collected. Any other code (a failing assertion, an import or
    # collection error the mutant caused) means the tests noticed it.
    return "survived" if rc in (0, 5) else "killed"


def run_module(name: str, children: int, sample: int | None, rerun: bool = True) -> dict:
    """Mutation score of one module; ``rerun=False`` keeps the last run's mutmut verdicts in
    ``.mutate/<name>`` and only rechecks its timeouts."""
    work = _prepare(name) if rerun else WORK / name
    globs = MODULES[name][2]
    env = {**os.environ, "PYTHONPATH": str(work / "mutants" / "src")}
    names = globs or []
    if sample:
        if rerun:
            # Generate the mutants (and mutmut's test map) with a filter that selects nothing,
            # then draw the sample from their names.
            subprocess.run([*MUTMUT, "run", "--max-children", str(children), "no-such-mutant"],
                           cwd=work, env=env, capture_output=True)  # fmt: skip
        keys = sorted(k for k in _statuses(work) if _matches(k, globs))
        names = sorted(random.Random(0).sample(keys, min(sample, len(keys))))
    selection = [t for t in MODULES[name][1] if not t.startswith("tests/") or (work / t).exists()]
    if sample and rerun:
        # Each sampled mutant in a fresh interpreter, not in mutmut's forked runner: its forks
        # of a process that has run torch sat at 0% CPU until mutmut's timeout (seen with ps on
        # 2026-11-29: every child of the recipes and objectives runs asleep), so a sample took
        # hours and its "timeouts" said nothing. The whole selection runs (-x: the first failure
        # ends it); a mutant no selected test calls survives, as mutmut's "no tests" does.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(children) as pool:
            verdicts = dict(
                zip(
                    names, pool.map(lambda k: _recheck(work, env, k, selection), names), strict=True
                )
            )
        return _score(name, verdicts, {}, True)
    if rerun:
        with open(work / "mutmut.log", "w") as log:  # its spinner is one long line per second
            subprocess.run([*MUTMUT, "run", "--max-children", str(children), *names],
                           cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    status = {k: v for k, v in _statuses(work).items() if _matches(k, globs)}
    if sample:
        status = {k: status[k] for k in names if k in status}
    tested = {k: v for k, v in status.items() if v not in ("skipped", "not checked")}
    rechecked = {}
    for k in sorted(k for k, v in tested.items() if v == "timeout"):
        rechecked[k] = _recheck(work, env, k, selection)
        tested[k] = {"killed": "killed", "survived": "survived", "timeout": "timeout"}[rechecked[k]]
    return _score(name, tested, rechecked, bool(sample))


def _score(name: str, tested: dict[str, str], rechecked: dict[str, str], sampled: bool) -> dict:
    killed = [k for k, v in tested.items() if v in ("killed", "timeout")]
    survivors = sorted(k for k, v in tested.items() if k not in killed)
    return {
        "module": name,
        "file": MODULES[name][0],
        "killed": len(killed),
        "tested": len(tested),
        "score": round(100 * len(killed) / max(len(tested), 1), 1),
        "sampled": sampled,
        "timeouts_rechecked": rechecked,
        "survivors": {k: tested[k] for k in survivors},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    ap.add_argument("--children", type=int, default=2, help="mutants tested at once")
    ap.add_argument("--sample", type=int, help="test this many mutants per module (seeded)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--recheck-only",
        action="store_true",
        help="keep the last run's verdicts in .mutate/<module>, only recheck its timeouts",
    )
    args = ap.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)}")
    results = []
    for name in args.modules or list(MODULES):
        r = run_module(
            name, args.children, args.sample or DEFAULT_SAMPLE.get(name), not args.recheck_only
        )
        results.append(r)
        print(
            f"{name}: {r['killed']}/{r['tested']} killed = {r['score']}%"
            + (" (sample)" if r["sampled"] else "")
            + (
                f"; {len(r['timeouts_rechecked'])} fork timeouts rechecked alone: "
                + ", ".join(
                    f"{v} {list(r['timeouts_rechecked'].values()).count(v)}"
                    for v in ("killed", "survived", "timeout")
                )  # fmt: skip
                if r["timeouts_rechecked"]
                else ""
            )
        )
        for k, v in r["survivors"].items():
            print(f"    {k}: {v}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
