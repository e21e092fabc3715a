"""``oficina tune``: hyperparameter search over any training verb, with Optuna.

    oficina tune examples/finetune.yaml --space space.yaml --trials 20 --out tune/lora
    oficina tune examples/tune_tiny.yaml --trials 8 --out tune/tiny        # space: inside
    oficina tune CONFIG.yaml --out DIR --storage postgresql://u@db/tune    # on each machine
    oficina tune CONFIG.yaml --out DIR --workers 2      # 2 trials at once here, a thread each
    oficina tune show tune/lora
    oficina tune show tune/demo --rerun EVAL_RUN    # best trial's CV score vs its re-run's eval

CONFIG.yaml is the verb's own config (``finetune``, ``pretrain`` or ``distill``; the verb is
read from a ``verb:`` key or from the fields present) and may carry ``space:`` (the search
space) and ``tune:`` (this command's settings; flags win). The space maps dotted keys of the
verb's config to a distribution::

    train.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
    lora.r: {type: int, low: 2, high: 16, log: true}
    train.batch_size: [4, 8]                        # a list is categorical
    lora.target_modules: [[q_proj, v_proj], [q_proj, k_proj, v_proj, o_proj]]

Each trial is one run of the verb (a recorded run, comparable with ``oficina runs compare``)
scored on a validation metric: ``val_loss`` (every verb), or ``accuracy`` / ``macro_f1`` of a
classification head (``finetune`` on {text, label} rows). Pruning (median, successive halving,
Hyperband) is fed from the validation the training loop already runs (``FitHooks.on_eval``),
so a pruned trial costs only the steps it ran; every trial records that cost in trial-steps.
``--cv K`` scores each trial as the mean over K stratified folds of the training file (the
validation and test files are never read). The study lives in ``$OFICINA_HOME/tune.db`` or any
Optuna RDB URL, so workers share it; a worker killed mid-trial leaves a trial that the next
worker on the same host marks failed and enqueues again, so a rerun finishes the planned
``--trials`` without repeating a finished trial.

Outputs in DIR: ``best.yaml`` (the verb's full config with the best values: run it with
``oficina VERB --config DIR/best.yaml``), ``trials.jsonl`` (number, state, params, value, cost),
``report.html`` (history, importances, learning curves; self-contained) and ``tune.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from oficina.config import (
    ConfigError,
    VerbConfig,
    build,
    deep_merge,
    dump_yaml,
    leaf_fields,
    load_yaml,
)
from oficina.workspace import atomic_write_json, atomic_write_text, home

VERBS = ("finetune", "pretrain", "distill")
# Settings a search must not vary: where the trial writes, and whether it resumes.
FIXED_KEYS = {"out", "resume"}
MAX_FAILURES_IN_A_ROW = 3  # then the space, not the luck of a point, is what is wrong
METRIC_KEYS = {"val_loss": "val_loss", "accuracy": "val_accuracy", "macro_f1": "val_macro_f1"}


class TuneConfig(VerbConfig):
    """Search the hyperparameters of a training verb (TPE or grid), pruning poor trials from
    the validation the training loop already runs; optional K-fold cross-validation; the study
    is stored (SQLite in the workspace, or --storage URL) so it resumes and scales out."""

    positionals = ("spec",)
    spec: str = Field(description="the verb's config YAML (may hold space: and tune:)")
    space: str | None = Field(None, description="search-space YAML (default: space: in CONFIG)")
    out: str = Field(description="output folder: best.yaml, trials.jsonl, report.html")
    verb: Literal["finetune", "pretrain", "distill"] | None = Field(
        None, description="the training verb (default: verb: in CONFIG, else from its fields)"
    )
    trials: int = Field(20, ge=1, description="finished trials the study plans (all workers)")
    timeout: float | None = Field(None, gt=0, description="start no trial after S seconds")
    metric: str = Field("val_loss", description="val_loss | accuracy | macro_f1 (validation)")
    direction: Literal["auto", "minimize", "maximize"] = Field(
        "auto", description="auto: minimize a loss, maximize a score"
    )
    sampler: Literal["tpe", "grid", "random"] = Field(
        "tpe",
        description="how trials are drawn: tpe (its first trials a Latin hypercube over the "
        "ranges, then TPE), grid, random",
    )
    pruner: Literal["median", "halving", "hyperband", "off"] = Field(
        "median", description="stop poor trials early, from the periodic validation"
    )
    max_steps: int | None = Field(
        None, ge=1, description="per-trial step budget (sets the verb's max_steps)"
    )
    cv: int | None = Field(None, ge=2, description="K-fold cross-validation (finetune JSONL)")
    storage: str | None = Field(None, description="Optuna RDB URL (default: workspace SQLite)")
    study: str | None = Field(None, description="study name (default: the --out folder's name)")
    seed: int = Field(0, description="sampler seed")
    prune_after: int | None = Field(
        None,
        ge=1,
        description="the first training step at which the median pruner may judge a trial "
        "(default: the second validation)",
    )
    spare_improving: bool = Field(
        False,
        description="never prune a trial whose last validation is at or above its best so far "
        "(optuna's PatientPruner around the pruner): a slow starter still learning is not cut",
    )
    keep_models: bool = Field(False, description="keep each trial's trained model on disk")
    workers: int = Field(
        1,
        ge=1,
        description="trials run at once on this machine, each in its own process with an equal "
        "share of the CPU threads (on 2 cores two 1-thread LoRA trials finished a search in 0.55x "
        "the time of one 2-thread trial after the other: benchmarks/search_workers.py)",
    )


class TuneShowConfig(VerbConfig):
    """Show a finished (or running) search: its trials, the best one and what pruning saved."""

    positionals = ("out",)
    out: str = Field(description="the --out folder of oficina tune")
    rerun: str | None = Field(
        None,
        description="an oficina eval run (id or folder) of best.yaml's model: the gap between "
        "the best trial's CV score and that re-run (the winner's curse)",
    )
    json_: bool = Field(False, alias="json", description="print tune.json instead of a table")


# ---------------------------------------------------------------------------- the space


_TYPES = ("loguniform", "uniform", "float", "int", "categorical")


@dataclass
class Param:
    """One searched setting. Categorical choices that are not scalars (lists) go to Optuna as
    their JSON text, which Optuna can store, and come back decoded."""

    key: str
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list = field(default_factory=list)

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, [_encode(c) for c in self.choices])
        if self.kind == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def decode(self, value: Any) -> Any:
        if self.kind == "categorical" and isinstance(value, str):
            for c in self.choices:
                if _encode(c) == value:
                    return c
        return value

    def grid(self) -> list:
        """The values a grid search visits."""
        if self.kind == "categorical":
            return [_encode(c) for c in self.choices]
        if self.step is None and self.kind == "float":
            raise ConfigError(
                f"the grid sampler needs a step or choices for '{self.key}' (a float range has "
                "no grid): add step: or use --sampler tpe"
            )
        step = self.step or 1
        n = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        vals = [self.low + i * step for i in range(n)]
        return [int(v) for v in vals] if self.kind == "int" else [round(v, 12) for v in vals]

    def at(self, u: float) -> Any:
        """The value at quantile ``u`` in [0, 1) of this range (log-scaled where the range is,
        every integer / grid value / choice an equal share): a space-filling start's point."""
        u = min(max(u, 0.0), 1.0 - 1e-12)
        if self.kind == "categorical":
            return _encode(self.choices[int(u * len(self.choices))])
        if self.step is not None or (self.kind == "int" and not self.log):
            values = self.grid()
            return values[int(u * len(values))]
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            v = math.exp(lo + u * (hi - lo))
        else:
            v = self.low + u * (self.high - self.low)
        if self.kind == "int":  # a log int range: round in log space, stay inside
            return int(min(max(round(v), self.low), self.high))
        return v

    def extremes(self) -> list:
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def _encode(choice: Any) -> Any:
    if choice is None or isinstance(choice, bool | int | float | str):
        return choice
    return json.dumps(choice)


def parse_space(raw: Any, verb: str, cfg_cls: type[VerbConfig]) -> list[Param]:
    """The space YAML -> checked params; every problem is one ConfigError line."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            "the search space is empty: give --space SPACE.yaml or a space: mapping of dotted "
            "keys (e.g. train.lr: {type: loguniform, low: 1e-4, high: 1e-2})"
        )
    valid = [d for d, _, _ in leaf_fields(cfg_cls) if d not in FIXED_KEYS]
    params = []
    for key, spec in raw.items():
        if key not in valid:
            raise ConfigError(
                f"unknown key '{key}' in the space: {verb}'s keys are {', '.join(valid)}"
            )
        params.append(_param(key, spec))
    return params


def _param(key: str, spec: Any) -> Param:
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(
            f"space '{key}': give a list of choices or a mapping with type: ({', '.join(_TYPES)})"
        )
    spec = dict(spec)
    kind = spec.pop("type", "categorical" if "choices" in spec else None)
    allowed = {"low", "high", "log", "step", "choices"}
    extra = set(spec) - allowed
    if kind not in _TYPES:
        raise ConfigError(f"space '{key}': type {kind!r} is not one of {', '.join(_TYPES)}")
    if extra:
        raise ConfigError(
            f"space '{key}': unknown field(s) {', '.join(sorted(extra))}; use {', '.join(sorted(allowed))}"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"space '{key}': empty choices; list at least one value")
        return Param(key, "categorical", choices=choices)
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except KeyError:
        raise ConfigError(f"space '{key}': {kind} needs low: and high:") from None
    except (TypeError, ValueError):
        raise ConfigError(f"space '{key}': low and high must be numbers") from None
    log = kind == "loguniform" or bool(spec.get("log", False))
    step = spec.get("step")
    if not low < high:
        raise ConfigError(f"space '{key}': empty range low={low:g} >= high={high:g}")
    if log and low <= 0:
        raise ConfigError(f"space '{key}': a log range needs low > 0 (got {low:g})")
    if step is not None and (not isinstance(step, int | float) or step <= 0):
        raise ConfigError(f"space '{key}': step must be a positive number")
    if log and step is not None:
        raise ConfigError(f"space '{key}': a log range cannot have a step")
    if kind == "int":
        if low != int(low) or high != int(high):
            raise ConfigError(f"space '{key}': an int range needs whole low and high")
    return Param(key, "int" if kind == "int" else "float", low, high, log, step)


# ---------------------------------------------------------------------------- the verb


def verb_class(verb: str):
    """(config class, recipe function) of a training verb."""
    from oficina.train import recipes

    return {
        "finetune": (recipes.FinetuneConfig, recipes.finetune),
        "pretrain": (recipes.PretrainConfig, recipes.pretrain),
        "distill": (recipes.DistillConfig, recipes.distill),
    }[verb]


def _guess_verb(data: dict) -> str:
    if "teacher" in data:
        return "distill"
    if "init" in data or (data.get("data") and Path(str(data["data"])).is_dir()):
        return "pretrain"
    if "model" in data and ("method" in data or "task" in data or "lora" in data):
        return "finetune"
    return "pretrain" if str(data.get("model", "")) in ("tiny", "mini", "small") else "finetune"


def _with(cfg: VerbConfig, values: dict[str, Any]) -> VerbConfig:
    """The config with dotted values set, validated again (a value the verb refuses is a
    ConfigError naming it)."""
    from oficina.config import set_dotted

    data = cfg.model_dump(mode="json", by_alias=True)
    over: dict = {}
    for k, v in values.items():
        set_dotted(over, k, v)
    return build(type(cfg), deep_merge(data, over))


def _task(verb: str, cfg) -> str | None:
    """What a finetune config trains (sft | classification | regression), read off its data."""
    if verb != "finetune":
        return None
    from oficina.jsonl import read_jsonl
    from oficina.train.data import detect_task

    if cfg.task != "auto":
        return cfg.task
    rows, _ = read_jsonl(cfg.data, "training data")
    if not rows:
        raise ConfigError(f"{cfg.data} has no rows")
    return detect_task(rows, cfg.template)


def reported_metrics(verb: str, cfg) -> dict[str, str]:
    """The validation metrics this verb's run reports, each with its natural direction."""
    out = {"val_loss": "minimize"}
    if _task(verb, cfg) == "classification":
        out.update(accuracy="maximize", macro_f1="maximize")
    return out


def _check_validation(verb: str, cfg, cv: int | None) -> None:
    """A metric needs a validation set: refuse before training when there is none."""
    if verb == "finetune":
        if cv or cfg.val_data or cfg.val_fraction > 0:
            return
        raise ConfigError("the search needs a validation metric: give val_data or val_fraction > 0")
    data = Path(cfg.data)
    if data.is_dir() and not (data / "val.bin").is_file():
        raise ConfigError(f"{data} has no val.bin: pack with --val-fraction > 0 to tune on it")


def head_predictions(model, batches: list[dict]) -> tuple[list[int], list[int], list[list[float]]]:
    """(predicted class ids, gold ids, each row's log-probabilities over the classes) of a
    classification head over batches with ``labels``."""
    import torch

    was = model.training
    model.eval()
    preds: list[int] = []
    golds: list[int] = []
    logp: list[list[float]] = []
    with torch.no_grad():
        for b in batches:
            kw = {"input_ids": b["input_ids"], "attention_mask": b.get("attention_mask")}
            logits = model(**kw).logits.float()
            preds += logits.argmax(-1).tolist()
            golds += b["labels"].tolist()
            logp += torch.log_softmax(logits, -1).tolist()
    model.train(was)
    return preds, golds, logp


def classification_metrics(model, batches: list[dict]) -> dict[str, float]:
    """Accuracy and macro-F1 of a classification head over the validation batches, and how
    many rows they scored (``rows``: a fold scored on part of its rows is a noisier, and on a
    file sorted by topic a biased, estimate)."""
    from oficina.evals import metrics as M

    preds, golds, _ = head_predictions(model, batches)
    return {
        "accuracy": M.accuracy(preds, golds),
        "macro_f1": M.macro_f1(preds, golds),
        "rows": float(len(golds)),
    }


def cover_validation(cfg, n_rows: int):
    """The finetune config with ``train.eval_batches`` raised to score all ``n_rows``
    validation rows: the loop keeps the weights of the best validation loss and a trial is
    scored there, so both must see the whole validation set, not its first batches (the demo
    files are in topic order: the first 48 of a fold's 144 rows were 50-62% one label)."""
    need = math.ceil(n_rows / cfg.train.batch_size)
    if cfg.train.eval_batches >= need:
        return cfg
    return _with(cfg, {"train.eval_batches": need})


def _validation_rows(cfg) -> int:
    """Rows of the validation set a finetune run will score (val_data, or its held-out part)."""
    if cfg.val_data:
        return len(_rows(cfg.val_data))
    n = len(_rows(cfg.data))
    return max(1, int(round(n * cfg.val_fraction))) if cfg.val_fraction > 0 and n >= 10 else 0


# ---------------------------------------------------------------------------- folds


def stratified_folds(rows: list[dict], k: int, seed: int) -> list[list[int]]:
    """K folds of row indices; rows with a ``label`` are dealt out per label so every fold
    keeps the label mix (round-robin over each label's shuffled rows)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_label.setdefault(str(r.get("label", "")), []).append(i)
    folds: list[list[int]] = [[] for _ in range(k)]
    start = 0
    for label in sorted(by_label):
        idx = [by_label[label][j] for j in rng.permutation(len(by_label[label]))]
        for j, i in enumerate(idx):
            folds[(start + j) % k].append(i)
        start = (start + len(idx)) % k  # the next label's first row goes to the next fold
    return [sorted(f) for f in folds]


def _write_folds(cfg, k: int, seed: int, root: Path) -> list[tuple[Path, Path]]:
    from oficina.jsonl import read_jsonl

    rows, _ = read_jsonl(cfg.data, "training data")
    if len(rows) < 2 * k:
        raise ConfigError(f"--cv {k} needs at least {2 * k} rows; {cfg.data} has {len(rows)}")
    folds = stratified_folds(rows, k, seed)
    out = []
    for i, held in enumerate(folds):
        keep = set(held)
        tr, va = root / f"fold{i}-train.jsonl", root / f"fold{i}-val.jsonl"
        text = lambda idx: "".join(json.dumps(rows[j], ensure_ascii=False) + "\n" for j in idx)  # noqa: E731
        atomic_write_text(tr, text(j for j in range(len(rows)) if j not in keep))
        atomic_write_text(va, text(held))
        out.append((tr, va))
    return out


# ---------------------------------------------------------------------------- storage


def default_storage() -> str:
    return f"sqlite:///{home() / 'tune.db'}"


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL we cannot parse is shown without its credentials
        return url.split("@")[-1]


def open_storage(url: str | None):
    """An Optuna RDBStorage, or one UserError line saying why it cannot be reached."""
    import optuna

    url = url or default_storage()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        for attempt in range(5):
            try:
                storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
                if url.startswith("sqlite"):
                    _lock_on_begin(storage.engine)
                return storage
            except Exception as e:
                # Two processes opening a new database at once both create Optuna's tables;
                # the loser sees "already exists" and only has to open it again.
                if "already exists" not in str(e) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"storage {_safe_url(url)} needs the {e.name} driver: pip install it"
        ) from None
    except Exception as e:  # noqa: BLE001 - SQLAlchemy/driver errors: one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot reach the study storage {_safe_url(url)}: {first}") from None


def _lock_on_begin(engine) -> None:
    """Every SQLite transaction takes the write lock at its start (BEGIN IMMEDIATE). SQLite
    ignores Optuna's SELECT ... FOR UPDATE and Python's sqlite3 begins a transaction only at the
    first write, so two workers could both read a queued trial as WAITING and both run it: CI
    saw it (the second's tell failed, "Trial#0 has already finished"), and
    test_workers_popping_queued_trials_at_once_never_take_the_same_one had 12 of 60 trials
    taken twice. Transactions here are a few milliseconds against minutes of training, so
    serialising them costs nothing that shows."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver's implicit BEGIN off: ours below

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners are reopened with them


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}  # two local workers wait instead of failing
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}}
    return {}


# ---------------------------------------------------------------------------- the search


@dataclass
class Search:
    cfg: TuneConfig
    verb: str
    base: VerbConfig
    entry: Callable
    space: list[Param]
    metric: str
    direction: str
    out: Path
    fingerprint: str
    # The validation hook of every trial (FitHooks.eval_metrics) in place of the verb's own.
    eval_metrics: Callable | None = None


def _pruner(name: str, eval_every: int, trials: int, after: int | None = None, spare: bool = False):
    """Reports come at training steps eval_every, 2·eval_every, ...: the pruners' resource.
    ``after``: the median pruner judges reports at that step or later. ``spare``: a trial is
    judged only once its last validation falls below its own best so far (PatientPruner,
    patience 0), so never at its first validation and never while it improves."""
    import optuna

    inner = _base_pruner(name, eval_every, trials, after)
    if spare and name != "off":
        import warnings

        with warnings.catch_warnings():  # "experimental" since optuna 2.8; pinned here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.PatientPruner(inner, patience=0)
    return inner


def _base_pruner(name: str, eval_every: int, trials: int, after: int | None):
    import optuna

    if name == "median":
        # Compare from the second evaluation on by default (optuna judges at step >=
        # n_warmup_steps; the first evaluation of a warming-up model says little) -- the ladder
        # says one epoch instead, whatever its validations per epoch -- once a third of the
        # trials (1 to 3) have finished: with optuna's default of 5, and our earlier 3, a
        # ladder's 3-trial search never pruned anything.
        startup = max(1, min(3, trials // 3))
        warmup = after if after is not None else eval_every + 1
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=eval_every)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=eval_every)
    return optuna.pruners.NopPruner()


def _startup_trials(trials: int) -> int:
    """How many of a TPE study's first trials are drawn without a model (optuna's default 10
    would make every search of 10 trials or fewer, the ladder's among them, a random one)."""
    return max(2, min(10, trials // 3))


def start_points(space: list[Param], n: int, seed: int) -> list[dict]:
    """The first ``n`` trials of a TPE search: a centred Latin hypercube. Each parameter's range
    is cut into ``n`` equal strata (in log space for a log range) and each trial takes the
    middle of a different one; the seed pairs the parameters' strata. TPE draws its startup
    trials independently at random, and a search of 2-4 trials is mostly its startup: the
    demo ladder's LoRA search drew lr 7.1e-4 and 8.0e-4 from [2e-4, 2e-3] (2026-12-01), two
    trials at one rate. Here 2 trials take 3.6e-4 and 1.1e-3, the quartiles of that range, as
    a practitioner's sweep would (Mosbach et al. 2023 sweep each method's rate on a grid)."""
    import random

    rng = random.Random(seed)
    columns = {}
    for p in space:
        strata = list(range(n))
        rng.shuffle(strata)
        columns[p.key] = [p.at((k + 0.5) / n) for k in strata]
    return [{key: col[i] for key, col in columns.items()} for i in range(n)]


def _sampler(s: Search, seed: int):
    import optuna

    if s.cfg.sampler == "grid":

        class Grid(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values) -> None:
                pass  # its study.stop() works only inside optimize(); run() sees the grid's end

        return Grid({p.key: p.grid() for p in s.space}, seed=seed)
    if s.cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=_startup_trials(s.cfg.trials))


def prepare(cfg: TuneConfig, eval_metrics: Callable | None = None) -> Search:
    """Everything checked before any training starts: the verb config, the space, the metric,
    the validation set and (separately, in ``run``) the storage. ``eval_metrics`` (a caller's
    validation hook) reports ``cfg.metric``, to be maximised."""
    raw = load_yaml(cfg.spec)
    space_raw = raw.pop("space", None)
    tune_raw = raw.pop("tune", None) or {}
    verb = cfg.verb or raw.pop("verb", None) or _guess_verb(raw)
    raw.pop("verb", None)
    if verb not in VERBS:
        raise ConfigError(f"verb {verb!r} cannot be tuned; choose one of {', '.join(VERBS)}")
    if tune_raw:  # CONFIG's tune: section under the flags given on the command line
        given = cfg.model_dump(include=cfg.model_fields_set, by_alias=True)
        cfg = build(
            TuneConfig, deep_merge(deep_merge(cfg.model_dump(by_alias=True), tune_raw), given)
        )
    if cfg.space:
        space_raw = load_yaml(cfg.space)
        space_raw = space_raw.get("space", space_raw)
    cls, entry = verb_class(verb)
    out = Path(cfg.out)
    raw.setdefault("out", str(out / "best-model"))
    base = build(cls, raw)
    if cfg.max_steps:
        base = _with(base, {"max_steps": cfg.max_steps})
    if base.resume:
        base = _with(base, {"resume": False})
    space = parse_space(space_raw, verb, cls)
    for p in space:  # each end of every range must be a value the verb accepts
        for v in p.extremes():
            value = int(v) if p.kind == "int" else v
            try:
                _with(base, {p.key: value})
            except ConfigError as e:
                raise ConfigError(
                    f"space '{p.key}': {value!r} is not valid for {verb}: {e}"
                ) from None
    metrics = reported_metrics(verb, base)
    if eval_metrics is not None and cfg.metric != "val_loss":
        metrics = {"val_loss": "minimize", cfg.metric: "maximize"}
    if cfg.metric not in metrics:
        raise ConfigError(
            f"metric '{cfg.metric}' is not reported by this {verb} run; it reports: "
            + ", ".join(metrics)
        )
    if cfg.cv and verb != "finetune":
        raise ConfigError("--cv needs a finetune config (a labelled JSONL to fold)")
    _check_validation(verb, base, cfg.cv)
    direction = metrics[cfg.metric] if cfg.direction == "auto" else cfg.direction
    if verb == "finetune":  # every trial, and best.yaml's re-run, scored on all its validation
        base = cover_validation(base, _validation_rows(base))
    if cfg.sampler == "grid":
        for p in space:
            p.grid()
    fp = hashlib.sha256(
        json.dumps(
            [
                verb,
                base.model_dump(mode="json", exclude={"out"}),
                [p.__dict__ for p in space],
                cfg.metric,
                direction,
                cfg.cv,
            ],  # fmt: skip
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:16]
    return Search(cfg, verb, base, entry, space, cfg.metric, direction, out, fp, eval_metrics)


def _open_study(s: Search, worker: int | None = None):
    """Create or load the study. ``worker``: the index of a forked worker (``workers``), whose
    sampler draws from its own seed."""
    import optuna

    storage = open_storage(s.cfg.storage)
    name = s.cfg.study or s.out.resolve().name
    existing = {x.study_name: x for x in optuna.get_all_study_summaries(storage)}
    seed = s.cfg.seed
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage)
        fp = study.user_attrs.get("fingerprint")
        if fp and fp != s.fingerprint:
            raise ConfigError(
                f"study '{name}' in {_safe_url(s.cfg.storage or default_storage())} was made for "
                "a different search (verb config, space or metric): pass --study NEW or "
                "another --out"
            )
        if study.trials:  # a second worker: draw its own points, not the first one's
            seed = s.cfg.seed + (1 + worker if worker is not None else os.getpid())
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=s.direction,
        load_if_exists=True,
        sampler=_sampler(s, seed),
        pruner=_pruner(
            s.cfg.pruner,
            s.base.train.eval_every,
            s.cfg.trials,
            s.cfg.prune_after,
            s.cfg.spare_improving,
        ),
    )
    if "fingerprint" not in study.user_attrs:
        if s.cfg.sampler == "tpe" and not study.trials:  # a new study: its space-filling start
            for params in start_points(
                s.space, min(_startup_trials(s.cfg.trials), s.cfg.trials), s.cfg.seed
            ):
                study.enqueue_trial(params)
        study.set_user_attr("fingerprint", s.fingerprint)
        study.set_user_attr("verb", s.verb)
        study.set_user_attr("metric", s.metric)
    return study


def _reap_killed(study) -> int:
    """Trials left RUNNING by a dead process on this host (SIGKILL, OOM): mark them failed
    and enqueue their parameters again, so the plan still gets that point."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from oficina.workspace import _pid_alive  # the run registry's liveness test

    host, n = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not pid or _pid_alive(pid):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "killed", True)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another worker reaped it first (and re-queued it)
        if t.params:  # not skip_if_exists: that would find the failed trial itself
            study.enqueue_trial(t.params)
        n += 1
    return n


def _counts(study, planned: int) -> tuple[int, int]:
    """(finished, running) trials of the plan: COMPLETE + PRUNED, and RUNNING ones."""
    from optuna.trial import TrialState

    finished = running = 0
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            finished += 1
        elif t.state == TrialState.RUNNING:
            running += 1
    return finished, running


def _is_surplus(study, trial, planned: int) -> bool:
    """Two workers may both start the last planned trial: the one numbered later yields."""
    from optuna.trial import TrialState

    ahead = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number < trial.number
        and t.state != TrialState.FAIL
        and not t.user_attrs.get("surplus")
    ]
    return len(ahead) >= planned


class _Pruned(Exception):
    pass


def run_trial(s: Search, trial, keep: dict | None = None) -> float:
    """One point of the space: train (each fold), report every validation to the pruner.
    ``keep[trial.number]``: the summary its (last fold's) ``entry`` returned, pruned or not."""

    from oficina.train.loop import FitHooks

    values = {p.key: p.decode(p.suggest(trial)) for p in s.space}
    tdir = s.out / "trials" / f"{trial.number:04d}"
    cfg = _with(s.base, {**values, "out": str(tdir / "model")})
    if s.cfg.cv:
        folds = [
            _with(cfg, {"data": str(tr), "val_data": str(va), "out": str(tdir / f"fold{i}")})
            for i, (tr, va) in enumerate(_write_folds(cfg, s.cfg.cv, s.cfg.seed, tdir))
        ]
        if s.verb == "finetune" and cfg.labels is None and _task(s.verb, cfg) == "classification":
            labels = sorted({str(r["label"]) for r in _rows(cfg.data)})
            folds = [_with(f, {"labels": labels}) for f in folds]  # one label order for all folds
        folds = [cover_validation(f, len(_rows(f.val_data))) for f in folds]
    else:
        folds = [cfg]
    key = METRIC_KEYS.get(s.metric, f"val_{s.metric}")
    hooks_metrics = s.eval_metrics or (classification_metrics if s.metric != "val_loss" else None)
    cost = budget = 0
    scores, run_ids, curve = [], [], []
    try:
        for i, fold_cfg in enumerate(folds):
            offset = cost
            evals: dict[int, float] = {}

            def on_eval(step: int, metrics: dict[str, float], offset=offset, evals=evals) -> bool:
                v = float(metrics[key])
                evals[step] = v
                curve.append((offset + step, v))
                trial.report(v, offset + step)
                return trial.should_prune()

            summary = s.entry(fold_cfg, hooks=FitHooks(hooks_metrics, on_eval))
            if keep is not None:
                keep[trial.number] = summary
            cost += int(summary["steps"])
            fold_budget = int(summary.get("max_steps") or summary["steps"])
            budget += fold_budget
            run_ids.append(summary.get("run_id"))
            trial.set_user_attr("cost_steps", cost)
            trial.set_user_attr("run_ids", run_ids)
            if summary.get("stopped") == "on_eval":
                budget += fold_budget * (len(folds) - i - 1)  # the folds it did not run
                raise _Pruned
            best_step = summary.get("best_step")
            score = evals.get(best_step, summary.get("best_val_loss"))
            # the returned model's own: fit's best value counts a kept anneal too
            if key == "val_loss" and summary.get("best_val_loss") is not None:
                score = float(summary["best_val_loss"])
            elif (
                summary.get("select_by") == s.metric and summary.get("best_val_metric") is not None
            ):
                score = float(summary["best_val_metric"])
            scores.append(score)
    finally:
        trial.set_user_attr("budget_steps", max(budget, cost))
        trial.set_user_attr("curve", curve)
        if not s.cfg.keep_models:  # best.yaml re-creates the winner; the runs keep the record
            shutil.rmtree(tdir, ignore_errors=True)
    if s.cfg.cv:
        trial.set_user_attr("cv_scores", scores)
        trial.set_user_attr("cv_std", statistics.pstdev(scores) if len(scores) > 1 else 0.0)
    if any(v is None for v in scores):  # finetune holds out nothing from under 10 rows
        raise ConfigError(
            f"the {s.verb} run reported no validation score: give val_data (or more rows)"
        )
    return float(statistics.fmean(scores))


def _rows(path: str) -> list[dict]:
    from oficina.jsonl import read_jsonl

    return read_jsonl(path, "training data")[0]


def _fmt_s(s: float) -> str:
    s = max(0.0, s)
    return f"{s:.0f}s" if s < 90 else (f"{s / 60:.1f}m" if s < 5400 else f"{s / 3600:.1f}h")


def _fmt_v(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def run(cfg: TuneConfig) -> int:
    search(cfg)
    return 0


def search(
    cfg: TuneConfig,
    entry: Callable | None = None,
    eval_metrics: Callable | None = None,
    results: dict[int, dict] | None = None,
) -> dict:
    """Run the study to its planned trials; its summary (as ``tune.json``).

    ``entry(config, hooks=...) -> summary`` trains one trial instead of the verb's recipe.
    ``eval_metrics`` (``FitHooks.eval_metrics``) computes the validation metric ``cfg.metric``
    in each trial (maximised) in place of the verb's own: the ladder scores SFT-trained
    classifiers by label log-likelihood. ``results``, when given, receives each trial's own
    summary (what ``entry`` returned: FLOPs, curves, its model folder) by trial number, from
    this process or from its ``workers``.
    """
    import optuna

    from oficina.workspace import start_run

    s = prepare(cfg, eval_metrics)
    if entry is not None:
        s.entry = entry
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _open_study(s)  # an unreachable storage stops here, before any training
    reaped = _reap_killed(study)
    if reaped:
        print(f"tune: {reaped} trial(s) of a killed worker marked failed; their points re-queued")
    s.out.mkdir(parents=True, exist_ok=True)
    planned = s.cfg.trials
    done0, _ = _counts(study, planned)
    workers = min(s.cfg.workers, max(1, planned - done0))
    print(
        f"tune: {s.verb} · {len(s.space)} setting(s) · {s.cfg.metric} ({s.direction}) · "
        f"{planned} trials planned, {done0} already finished · sampler {s.cfg.sampler}, pruner "
        f"{s.cfg.pruner}{f', {s.cfg.cv}-fold CV' if s.cfg.cv else ''} · study '{study.study_name}'"
        + (f" · {workers} workers" if workers > 1 else ""),
        flush=True,
    )
    keep: dict[int, dict] = {} if results is None else results
    with start_run("tune", cfg) as rec:
        rec.add_input("config", cfg.spec)
        if workers == 1:
            work(s, study, keep.__setitem__)
        else:
            _work_in_processes(s, workers, keep)
        summary = {**finish(study, s), "workers": workers}
        rec.summary.update(summary)
        if (s.out / "best.yaml").is_file():
            rec.add_output("best", s.out / "best.yaml")
    return summary


def work(s: Search, study, collect: Callable[[int, dict], Any]) -> int:
    """One worker's loop: ask for a trial, run it, tell its outcome, until the study has its
    planned trials (every worker's), its timeout or the end of its grid; each trial's summary
    goes to ``collect(number, summary)``. The number of trials this worker ran."""
    from optuna.trial import TrialState

    from oficina.train.loop import TrainingStopped

    host, planned = socket.gethostname(), s.cfg.trials
    t0 = time.perf_counter()
    mine = failures = 0
    while True:
        finished, running = _counts(study, planned)
        if finished + running >= planned:
            break
        if s.cfg.timeout and time.perf_counter() - t0 > s.cfg.timeout:
            print(f"tune: --timeout {s.cfg.timeout:g}s reached; {finished} of {planned} done")
            break
        if s.cfg.sampler == "grid" and _grid_exhausted(study, s):
            print("tune: every point of the grid has been tried")
            break
        trial = study.ask()
        trial.set_user_attr("host", host)
        trial.set_user_attr("pid", os.getpid())
        if _is_surplus(study, trial, planned):
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            break
        ts = time.perf_counter()
        state, value, kept = TrialState.COMPLETE, None, {}
        try:
            value = run_trial(s, trial, kept)
            failures = 0
        except _Pruned:
            state = TrialState.PRUNED
            failures = 0
        except TrainingStopped as e:  # diverged (NaN/inf): a verdict on this point only
            state, failures = TrialState.FAIL, failures + 1
            trial.set_user_attr("error", str(e))
            if failures >= MAX_FAILURES_IN_A_ROW:
                study.tell(trial, state=state)
                raise ConfigError(
                    f"{failures} trials in a row stopped on a NaN/inf loss; the last: {e}; "
                    "narrow the space (lower train.lr)"
                ) from None
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        trial.set_user_attr("duration_s", round(time.perf_counter() - ts, 2))
        study.tell(trial, value, state=state)
        for number, summary in kept.items():
            collect(number, summary)
        mine += 1
        write_trials(study, s)
        _progress(study, s, trial.number, state, value, mine, t0)
    return mine


def _work_in_processes(s: Search, workers: int, results: dict[int, dict]) -> None:
    """``workers`` copies of ``work`` in forked processes on the study's storage, each with an
    equal share of this process's CPU threads; their trials' summaries come back through a
    queue. Forked, not spawned: a caller's ``entry`` and ``eval_metrics`` (the ladder's
    closures over its loaded task) go with them as they are. A worker's error is raised here
    once the others have been stopped; Ctrl-C or SIGTERM here stops them all."""
    import multiprocessing as mp
    import pickle
    import queue as queue_mod

    import torch

    threads = max(1, torch.get_num_threads() // workers)
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child(index: int) -> None:
        torch.set_num_threads(threads)
        from oficina.train import loop

        loop.BAR_LINE = index
        try:
            # A connection of the parent's pool must not be used from two processes.
            study = _open_study(s, worker=index)
            work(s, study, lambda n, summary: q.put(("trial", n, summary)))
            q.put(("done", index, None))
        except BaseException as e:  # noqa: BLE001 -- handed to the parent, which raises it
            try:  # the queue pickles in a thread of its own, where a failure would be lost
                pickle.dumps(e)
            except Exception:  # an exception that does not pickle: its text then
                e = ConfigError(f"tune worker {index}: {e}")
            q.put(("error", index, e))

    procs = [ctx.Process(target=child, args=(i,), daemon=True) for i in range(workers)]
    try:
        for p in procs:
            p.start()
        done: set[int] = set()
        while len(done) < workers:
            try:
                kind, key, payload = q.get(timeout=1.0)
            except queue_mod.Empty:
                gone = [i for i, p in enumerate(procs) if i not in done and not p.is_alive()]
                if gone and q.empty():  # killed (OOM, SIGKILL) without a word
                    raise ConfigError(
                        f"tune worker {gone[0]} died (exit code {procs[gone[0]].exitcode}); "
                        "its trial is re-queued for a rerun"
                    ) from None
                continue
            if kind == "trial":
                results[key] = payload
            elif kind == "error":
                raise payload
            else:
                done.add(key)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker's trial is told FAIL as it stops
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()


def _grid_exhausted(study, s: Search) -> bool:
    total = math.prod(len(p.grid()) for p in s.space)
    tried = {
        json.dumps(t.params, sort_keys=True)
        for t in study.get_trials(deepcopy=False)
        if t.params and not t.user_attrs.get("surplus") and not t.user_attrs.get("killed")
    }
    return len(tried) >= total


def _progress(study, s: Search, number: int, state, value, mine: int, t0: float) -> None:
    finished, _ = _counts(study, s.cfg.trials)
    t = study.get_trials(deepcopy=False)[number]
    best = _best(study)
    elapsed = time.perf_counter() - t0
    left = _time_left(study, s.cfg.trials, finished, elapsed / mine)
    if state.name == "PRUNED":
        what = f"pruned at step {t.user_attrs.get('cost_steps')}"
    elif state.name == "FAIL":
        what = f"failed ({t.user_attrs.get('error', '?')})"
    else:
        what = f"{s.metric} {_fmt_v(value)}"
    cv = (
        f" ± {t.user_attrs['cv_std']:.4f}" if "cv_std" in t.user_attrs and value is not None else ""
    )
    best_s = f"{_fmt_v(best.value)} (#{best.number})" if best else "-"
    print(
        f"tune: trial {finished} of {s.cfg.trials} (#{number}) {what}{cv} · "
        f"{t.user_attrs.get('cost_steps', 0)} steps · best {best_s} · "
        f"{_fmt_s(elapsed)} elapsed, ~{_fmt_s(left)} left",
        flush=True,
    )


def _time_left(study, planned: int, finished: int, per_trial: float, now=None) -> float:
    """Seconds until the plan is done, at this worker's pace: the trials other workers are
    running finish when they have had ``per_trial`` seconds, and the ones not started yet are
    shared by every worker (the others and this one). With two workers side by side, the first
    to finish no longer announces the second's whole trial as still to come."""
    from datetime import datetime

    from optuna.trial import TrialState

    now = now or datetime.now()  # Optuna stamps datetime_start with the local naive time
    running = [
        (now - t.datetime_start).total_seconds()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None
    ]
    unstarted = max(0, planned - finished - len(running))
    tail = max((per_trial - age for age in running), default=0.0)
    return max(0.0, tail) + math.ceil(unstarted / (len(running) + 1)) * per_trial


def _best(study):
    try:
        return study.best_trial
    except ValueError:
        return None


def _trial_rows(study, s: Search) -> list[dict]:
    rows = []
    decode = {p.key: p for p in s.space}
    for t in study.get_trials(deepcopy=False):
        # surplus: a second worker's copy of the last trial; WAITING: queued and not yet drawn
        # (the space-filling start, a killed trial's retry), no params until a worker runs it
        if t.user_attrs.get("surplus") or t.state.name == "WAITING":
            continue
        ua = t.user_attrs
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": {
                    k: decode[k].decode(v) if k in decode else v for k, v in t.params.items()
                },
                "value": t.value,
                "cost": ua.get("cost_steps", 0),
                "budget": ua.get("budget_steps", 0),
                "cv_scores": ua.get("cv_scores"),
                "cv_std": ua.get("cv_std"),
                "duration_s": ua.get("duration_s"),
                "run_ids": ua.get("run_ids", []),
                "worker": f"{ua.get('host')}:{ua.get('pid')}",
                "error": ua.get("error"),
                "curve": ua.get("curve", []),
            }
        )
    return rows


def write_trials(study, s: Search) -> list[dict]:
    rows = _trial_rows(study, s)
    atomic_write_text(
        s.out / "trials.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows)
    )
    return rows


def finish(study, s: Search) -> dict:
    """best.yaml, trials.jsonl, report.html and tune.json from the study as it stands."""
    rows = write_trials(study, s)
    done = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    cost = sum(r["cost"] for r in done)
    budget = sum(max(r["budget"], r["cost"]) for r in done)
    best = _best(study)
    summary: dict[str, Any] = {
        "verb": s.verb,
        "study": study.study_name,
        "storage": _safe_url(s.cfg.storage or default_storage()),
        "metric": s.metric,
        "direction": s.direction,
        "planned": s.cfg.trials,
        "finished": len(done),
        "complete": sum(r["state"] == "COMPLETE" for r in rows),
        "pruned": sum(r["state"] == "PRUNED" for r in rows),
        "failed": sum(r["state"] == "FAIL" for r in rows),
        "trial_steps": cost,
        "trial_steps_unpruned": budget,
        "pruning_saved": round(1 - cost / budget, 4) if budget else 0.0,
        "cv": s.cfg.cv,
        "best": None,
    }
    if best is not None:
        values = {p.key: p.decode(best.params[p.key]) for p in s.space}
        best_cfg = _with(s.base, values)
        summary["best"] = {
            "number": best.number,
            "value": best.value,
            "params": values,
            "cv_std": best.user_attrs.get("cv_std"),
            "run_ids": best.user_attrs.get("run_ids", []),
        }
        cv = f" (mean of {s.cfg.cv} folds)" if s.cfg.cv else ""
        head = (
            f"# Best of {len(done)} trials of `oficina tune` (study '{study.study_name}'): "
            f"{s.metric} {best.value:.6g}{cv}, trial #{best.number}.\n"
            f"#   oficina {s.verb} --config {s.out / 'best.yaml'}\n"
        )
        atomic_write_text(s.out / "best.yaml", head + dump_yaml(best_cfg))
    atomic_write_json(s.out / "tune.json", summary)
    from oficina.evals.tune_report import write_report

    write_report(s.out / "report.html", study, rows, summary)
    b = summary["best"]
    print(
        f"tune: {summary['finished']} trials ({summary['complete']} complete, "
        f"{summary['pruned']} pruned) · {cost:,} trial-steps of {budget:,} without pruning "
        f"(saved {100 * summary['pruning_saved']:.0f}%) · best {s.metric} "
        f"{_fmt_v(b and b['value'])} {b and b['params']} -> {s.out}"
    )
    return summary


# ---------------------------------------------------------------------------- show


def show(cfg: TuneShowConfig) -> int:
    out = Path(cfg.out)
    meta_p = out / "tune.json"
    if not meta_p.is_file():
        raise ConfigError(f"{out} holds no tune.json: is it the --out folder of oficina tune?")
    meta = json.loads(meta_p.read_text())
    if cfg.rerun:
        meta["rerun"] = rerun_gap(meta, cfg.rerun)
    if cfg.json_:
        print(json.dumps(meta, indent=2))
        return 0
    from oficina.jsonl import read_jsonl

    rows, _ = read_jsonl(out / "trials.jsonl", "trials file")
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{meta['verb']} · study {meta['study']} · {meta['metric']} ({meta['direction']})"
    )
    keys = sorted({k for r in rows for k in r["params"]})
    for col in ["#", "state", meta["metric"], "steps", *keys]:
        table.add_column(col)
    best_n = (meta.get("best") or {}).get("number")
    for r in rows:
        val = _fmt_v(r["value"])
        if r.get("cv_std") is not None and r["value"] is not None:
            val += f" ± {r['cv_std']:.4f}"
        table.add_row(
            str(r["number"]),
            r["state"].lower(),
            val,
            str(r["cost"]),
            *[_short(r["params"].get(k)) for k in keys],
            style="bold green"
            if r["number"] == best_n
            else ("dim" if r["state"] != "COMPLETE" else ""),
        )
    Console().print(table)
    print(
        f"{meta['finished']} of {meta['planned']} planned trials finished "
        f"({meta['pruned']} pruned); {meta['trial_steps']:,} trial-steps, "
        f"{100 * meta['pruning_saved']:.0f}% saved by pruning"
    )
    if meta.get("best"):
        b = meta["best"]
        print(f"best: trial #{b['number']} {meta['metric']} {b['value']:.6g} {b['params']}")
        print(f"      oficina {meta['verb']} --config {out / 'best.yaml'}")
    g = meta.get("rerun")
    if g:
        lo, hi = g["ci"]
        print(
            f"re-run: {meta['metric']} {g['value']:.4f} [{lo:.4f}, {hi:.4f}] on {g['items']} "
            f"items (eval {g['run']}) vs CV {g['cv_mean']:.4f} ± {g['cv_std']:.4f}: gap "
            f"{g['gap']:+.4f} -> {'reproduced' if g['reproduced'] else 'NOT reproduced'} "
            "(reproduced: its interval meets the CV mean ± sd)"
        )
    return 0


def rerun_gap(meta: dict, rerun: str) -> dict:
    """The best trial's CV score against an ``oficina eval`` run of its re-trained model: the
    gap (re-run - CV mean; a best-of-N pick is optimistic, the winner's curse) and whether the
    re-run's bootstrap interval meets the CV mean ± its spread over folds."""
    from oficina.workspace import run_dir

    best = meta.get("best")
    if not best:
        raise ConfigError("--rerun: this search has no best trial yet")
    d = run_dir(rerun)
    path = d / "metrics.json"
    if not path.is_file():
        raise ConfigError(f"--rerun {rerun}: {d} is not an oficina eval run (no metrics.json)")
    ev = json.loads(path.read_text())
    m = ev.get("metrics", {}).get(meta["metric"])
    if m is None:
        raise ConfigError(
            f"--rerun {rerun}: that eval reports no {meta['metric']} (it has "
            f"{', '.join(ev.get('metrics', {})) or 'none'})"
        )
    mean, sd = float(best["value"]), float(best.get("cv_std") or 0.0)
    lo, hi = m["ci"]
    return {
        "run": d.name,
        "items": ev.get("task", {}).get("items"),
        "value": m["value"],
        "ci": [lo, hi],
        "cv_mean": mean,
        "cv_std": sd,
        "gap": m["value"] - mean,
        "reproduced": lo <= mean + sd and hi >= mean - sd,
    }


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
