"""The rungs of the ladder: one small class per way of adapting a model, registered once.

A rung declares its config section (a pydantic ``Settings`` class: ``--rungs.<name>.<field>``),
its description, its values under ``--quick``, and ``run(context) -> RungResult``. The ladder's
config schema, order, quick profile and texts are read from ``REGISTRY`` (in registration order:
from the simplest up), so a new rung is one class here and nothing else.

Trained rungs share ``TrainedRung``: they train in epochs (up to ``max_epochs``) with early
stopping on the validation loss (``patience`` evaluations without a ``min_delta`` fall), the
best checkpoint kept (``Budget``). ``hyperparameters(context)`` says what the rung trains with:
the config's values, or those a budgeted ``oficina tune`` search on the training split chose
(``search.trials > 0``: ``oficina.ladder.search``; its cost is added to the rung's). Then
``train(context, hp)`` runs the rung's ``recipe`` (or reuses the best trial's model when it was
trained on the same data with the same budget) and returns the model with the recipe's summary,
curves included; the shared part evaluates and measures it. They run on both kinds of task:
``training_files(context)`` is what they train on (SFT rows on a generation task) and
``evaluate(context, engine)`` how they are asked (``lora_rag``: with retrieved passages).
"""

from __future__ import annotations

import math
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from oficina.config import Section
from oficina.ladder.context import LadderContext, TrainingFiles
from oficina.ladder.result import Cost, RungResult, combine_seeds
from oficina.ladder.search import LoraSearchSettings, SearchSettings, run_search
from oficina.measure import auto_precision, param_counts, peak_memory

# ---------------------------------------------------------------------------- the interface


class RungSettings(Section):
    enabled: bool = Field(True, description="run this rung")


class Rung(ABC):
    """One adaptation. Subclasses set the class attributes and ``run``; ``@register`` adds them."""

    name: ClassVar[str]
    description: ClassVar[str]
    Settings: ClassVar[type[RungSettings]] = RungSettings
    quick: ClassVar[dict[str, Any]] = {}  # settings under --quick (flags still win)
    needs_docs: ClassVar[bool] = False  # skipped when the ladder has no domain documents
    kinds: ClassVar[tuple[str, ...]] = ("classification", "generation")  # tasks it runs on

    def __init__(self, settings: RungSettings):
        self.settings = settings

    def settings_used(self) -> dict[str, Any]:
        """What the rung runs with, for the report (everything but ``enabled``)."""
        return self.settings.model_dump(exclude={"enabled"})

    @abstractmethod
    def run(self, ctx: LadderContext) -> RungResult:
        """Measure this rung on ``ctx``'s test items."""

    def latency_probe(self, ctx: LadderContext, result: RungResult) -> Callable[[list[dict]], dict]:
        """What the latency pass (``oficina.ladder.latency``) times: a callable that answers
        test rows as this rung is served — its model as deployed (an adapter merged, int8
        weights), asked with its own prompt (solved examples, passages retrieved per row
        included). Called once every rung has run, with this rung's ``result``. The default:
        the base model asked with the task's template."""
        eng = ctx.base_engine()
        return lambda rows: ctx.score(eng, rows)

    def result(self, ctx: LadderContext, engine, res: dict, detail: str = "", **kw) -> RungResult:
        """``ctx.measured`` under this rung's name and description."""
        kw.setdefault("hyperparameters", self.settings_used())
        text = f"{self.description}: {detail}" if detail else self.description
        return ctx.measured(self.name, text, engine, res, **kw)


REGISTRY: dict[str, type[Rung]] = {}


def register(cls: type[Rung]) -> type[Rung]:
    if cls.name in REGISTRY:
        raise ValueError(f"rung '{cls.name}' registered twice")
    REGISTRY[cls.name] = cls
    return cls


# ---------------------------------------------------------------------------- prompting rungs


@register
class ZeroShot(Rung):
    name = "zero_shot"
    description = "the base model, instruction only"

    def run(self, ctx: LadderContext) -> RungResult:
        eng = ctx.base_engine()
        res = ctx.evaluate(eng, self.name)
        return self.result(ctx, eng, res, data={"labelled_examples": 0})


class FewShotSettings(RungSettings):
    shots: int = Field(3, ge=1, description="examples in the prompt")
    strategy: Literal["fixed", "random", "similar"] = Field(
        "similar", description="how examples are picked"
    )


def example_picker(ctx: LadderContext, shots: int, strategy: str):
    """row -> the solved training examples to show before it (most similar last)."""
    from oficina.infer.prompting import select_examples

    embedder = None
    if strategy == "similar":
        from oficina.models.embed import Embedder

        embedder = Embedder("minilm-l6")

    def pick(row: dict) -> list[dict]:
        return select_examples(
            ctx.train, row["text"], shots, strategy, seed=ctx.cfg.seed, embedder=embedder
        )

    return pick


@register
class FewShot(Rung):
    name = "few_shot"
    description = "the base model with labelled examples in the prompt (in-context learning)"
    Settings = FewShotSettings
    quick = {"shots": 2}

    def run(self, ctx: LadderContext) -> RungResult:
        c = self.settings
        eng = ctx.base_engine()
        res = ctx.evaluate(eng, self.name, fewshot=example_picker(ctx, c.shots, c.strategy))
        return self.result(
            ctx,
            eng,
            res,
            f"{c.shots} {c.strategy} shots",
            data={"labelled_examples": len(ctx.train)},
        )

    def latency_probe(self, ctx: LadderContext, result: RungResult) -> Callable[[list[dict]], dict]:
        eng, pick = (
            ctx.base_engine(),
            example_picker(ctx, self.settings.shots, self.settings.strategy),
        )
        return lambda rows: ctx.score(eng, rows, fewshot=pick)


class RagSettings(RungSettings):
    k: int = Field(3, ge=1, description="passages retrieved per query")
    mode: Literal["bm25", "dense", "hybrid"] = Field("hybrid", description="retriever")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32",
        description="embedding precision (bf16: ~2.3x faster index build on AMX CPUs; "
        "auto: bf16 where the CPU has AMX or is AMD with AVX-512 BF16, as oficina.measure.fast_bf16 decides)",
    )
    passage_chars: int = Field(
        300, ge=50, description="characters of each retrieved passage put in the prompt"
    )


# Retrieved passages go before the task's template: the rag rungs' prompts and lora_rag's.
PASSAGES = "Reference passages:\n{context}\n\n"


class Retrieval:
    """The domain documents, indexed (incrementally: a second rung or a rerun re-embeds
    nothing), and the passages for a row. ``cost`` is what building the index cost the first
    time in this ladder: the one-off cost of every rung that retrieves."""

    def __init__(self, ctx: LadderContext, c: RagSettings):
        from oficina.models.embed import Embedder
        from oficina.rag.index import build_index, read_documents
        from oficina.rag.retrieve import Index

        self.k, self.mode, self.chars = c.k, c.mode, c.passage_chars
        precision = auto_precision(c.precision)  # the index folder is named by what ran
        self.dir = ctx.out / f"rag-index-{precision}"
        with peak_memory() as build:
            docs, _ = read_documents([ctx.corpus])
            embedder = Embedder("minilm-l6", precision=precision)
            build_index(docs, self.dir, embedder=embedder, progress=False)
        first = ctx.shared.setdefault(
            str(self.dir),
            Cost(
                wall_time_s=build.wall_s,
                peak_memory_mb=build.peak_mb,
                usd=ctx.usd_for_seconds(build.wall_s),
            ),
        )
        self.cost = first
        self.n_docs = len(docs)
        self.index = Index.open(self.dir, embedder=embedder)
        self.titles = {d.doc_id: d.meta.get("title", d.doc_id) for d in docs}

    def passages(self, row: dict) -> str:
        """The ``k`` passages retrieved for ``row``'s text, numbered, each with its topic."""
        hits = self.index.search(row["text"], k=self.k, mode=self.mode)
        return "\n".join(
            f"[{i}] (topic: {self.titles.get(h.doc_id, h.doc_id)}) {' '.join(h.text.split())[: self.chars]}"
            for i, h in enumerate(hits, 1)
        )

    def rows(self, rows: list[dict]) -> list[dict]:
        """``rows`` with their passages as ``context``."""
        return [{**r, "context": self.passages(r)} for r in rows]

    def data(self) -> dict:
        return {"corpus_documents": self.n_docs, "chunks": self.index.count()}

    def close(self) -> None:
        self.index.close()


@register
class Rag(Rung):
    """Retrieve passages from the domain documents and put them, with their topic, before the task."""

    name = "rag"
    description = "the base model with passages retrieved from the domain corpus"
    Settings = RagSettings
    quick = {"k": 2, "precision": "auto"}
    needs_docs = True

    def run(self, ctx: LadderContext) -> RungResult:
        c = self.settings
        return self.with_passages(ctx, f"{c.k} {c.mode} passages", 0)

    def examples(self, ctx: LadderContext):
        """row -> the solved examples shown before it (without passages): none, here."""
        return None

    def latency_probe(self, ctx: LadderContext, result: RungResult) -> Callable[[list[dict]], dict]:
        # Retrieval is part of answering a request: timed with the model.
        retrieval, pick = Retrieval(ctx, self.settings), self.examples(ctx)
        ctx.closers.append(retrieval.close)
        eng, template = ctx.base_engine(), PASSAGES + ctx.template
        return lambda rows: ctx.score(eng, retrieval.rows(rows), template, pick, ctx.template)

    def with_passages(self, ctx, detail: str, labelled: int) -> RungResult:
        """Evaluate the test rows with their retrieved passages before the task (after the
        solved examples of ``examples``, shown without passages); building the index is the
        rung's one-off cost."""
        retrieval, pick = Retrieval(ctx, self.settings), self.examples(ctx)
        rows = retrieval.rows(ctx.test)
        template = PASSAGES + ctx.template
        eng = ctx.base_engine()
        res = ctx.evaluate(
            eng,
            self.name,
            template=template,
            rows=rows,
            fewshot=pick,
            example_template=ctx.template,
        )
        data = {"labelled_examples": labelled, **retrieval.data()}
        retrieval.close()
        return self.result(
            ctx,
            eng,
            res,
            detail,
            training=retrieval.cost,
            data=data,
            artifacts={"index": str(retrieval.dir)},
        )


class FewShotRagSettings(RagSettings):
    shots: int = Field(3, ge=1, description="examples in the prompt")
    strategy: Literal["fixed", "random", "similar"] = Field(
        "similar", description="how examples are picked"
    )


@register
class FewShotRag(Rag):
    """Solved examples first, then the passages retrieved for this query, then the query."""

    name = "few_shot_rag"
    description = "the base model with labelled examples and retrieved passages in the prompt"
    Settings = FewShotRagSettings
    quick = {"shots": 2, "k": 2, "precision": "auto"}
    needs_docs = True

    def run(self, ctx: LadderContext) -> RungResult:
        c = self.settings
        return self.with_passages(
            ctx, f"{c.shots} {c.strategy} shots, {c.k} {c.mode} passages", len(ctx.train)
        )

    def examples(self, ctx: LadderContext):
        # The examples as the few-shot rung shows them; the passages belong to the query.
        return example_picker(ctx, self.settings.shots, self.settings.strategy)


# ---------------------------------------------------------------------------- trained rungs


class TrainSettings(RungSettings):
    max_epochs: float = Field(
        3.0,
        gt=0,
        description="passes over the labelled set at most (early stopping may end sooner)",
    )
    max_steps: int | None = Field(
        None, ge=1, description="cap on optimizer steps (default: max_epochs' worth)"
    )
    lr: float = Field(2e-4, gt=0, description="peak learning rate")
    schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="learning rate after the warm-up: 'constant' (the budget is only a cap, so a "
        "longer budget follows the same path and early stopping alone ends it) or 'cosine' "
        "(decays to 10% over the budget)",
    )
    cooldown_epochs: float = Field(
        0.25,
        ge=0,
        description="after training, anneal the best weights this many epochs with the rate "
        "falling linearly to 0; kept if the validation loss falls (0 = off)",
    )
    batch_size: int = Field(8, ge=1, description="examples per step")
    evals_per_epoch: int = Field(
        4,
        ge=1,
        description="validations per epoch (early stopping and the best checkpoint read them)",
    )
    patience: int = Field(
        3, ge=0, description="stop after this many validations without a min_delta improvement"
    )
    min_delta: float = Field(
        0.01, ge=0, lt=1, description="relative fall of the validation loss that counts (0.01 = 1%)"
    )


class LoraBase(TrainSettings):
    rank: int = Field(8, ge=1, description="LoRA rank")
    # Fixed while the rank is searched, so a trial and a retraining at its rank are one model.
    alpha: int = Field(16, ge=1, description="LoRA scale numerator (scale = alpha / rank)")


class LoraSettings(LoraBase):
    search: LoraSearchSettings = Field(default_factory=LoraSearchSettings)


# Every linear layer of the decoder, attention and MLP: on the demo task (lr 7.08e-4, r 11,
# 3 epochs, float32) it scored 0.503 vs 0.355 with attention alone (paired bootstrap +0.148
# [+0.052, +0.245], seed 0) and 0.510 vs 0.381 (+0.129 [+0.039, +0.220], seed 1), 2026-11-30,
# for 2.6x the adapter (3.36M vs 1.27M) and ~12% more rung time. (An older config with 240
# rows had shown no gain from the MLP.) Biderman et al. 2024 and QLoRA also adapt all layers.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_LEN = 256  # tokens per training example; a long passage loses its start, never the answer
WARMUP_EPOCHS = 0.25  # linear warm-up over the first quarter epoch
GROUP_BY_LENGTH = 16  # windows of 16 batches sorted by length (train.data.BatchStream)
# Settings that say how to train or search, not what was trained with: not hyperparameters.
NOT_HYPERPARAMETERS = {"enabled", "search"}


@dataclass
class Trained:
    """What a trained rung's ``train`` hands back to be evaluated and reported."""

    engine: Any
    summary: dict  # the (last) training recipe's summary: steps, flops, curves...
    cost: Cost
    detail: str
    artifacts: dict[str, str]
    data: dict[str, Any]
    # (model dir or spec, adapter or None): a teacher for distillation, a source for quantization
    finetuned: tuple[str, str | None] | None = None
    # (model dir or spec, adapter or None): what is deployed, the adapter merged (latency pass)
    served: tuple[str, str | None] | None = None
    params: dict[str, int] = field(default_factory=dict)  # overrides of the counted parameters
    built_on: str | None = None  # the rung whose model this one was made from (result.built_on)


@dataclass
class Budget:
    """Where a trained rung's training stops: up to ``max_epochs`` (``steps`` optimizer steps),
    validating every ``eval_every`` steps, stopping after ``patience`` validations without a
    ``min_delta`` fall, the best checkpoint kept."""

    steps: int
    steps_per_epoch: int
    eval_every: int
    max_epochs: float
    patience: int
    min_delta: float
    schedule: str = "constant"
    cooldown_steps: int = 0
    select_by: str = "loss"  # or the task's metric on the validation split (context.select_by)

    @classmethod
    def of(cls, n_train: int, hp: dict[str, Any], select_by: str = "loss") -> Budget:
        spe = max(1, math.ceil(n_train / int(hp["batch_size"])))
        steps = max(1, math.ceil(float(hp["max_epochs"]) * spe))
        if hp.get("max_steps"):
            steps = min(steps, int(hp["max_steps"]))
        every = max(1, math.ceil(spe / int(hp["evals_per_epoch"])))
        return cls(
            steps, spe, min(every, steps), float(hp["max_epochs"]), int(hp["patience"]),
            float(hp["min_delta"]), str(hp.get("schedule", "constant")),
            math.ceil(float(hp.get("cooldown_epochs", 0)) * spe), select_by,
        )  # fmt: skip

    @property
    def value_name(self) -> str:
        """The selection value's name: "validation loss", "validation accuracy"..."""
        names = {"loss": "loss", "macro_f1": "macro-F1"}
        return f"validation {names.get(self.select_by, self.select_by)}"

    @property
    def judged_by(self) -> str:
        """The selection value in words, with how a metric is scored."""
        if self.select_by == "loss":
            return self.value_name
        return f"{self.value_name} (labels scored as on the test; ties to the lower loss)"

    def rule(self) -> str:
        epochs = self.patience * self.eval_every / self.steps_per_epoch
        better = "fall" if self.select_by == "loss" else "rise"
        stop = (
            f"stop after {self.patience} evaluations ({epochs:.3g} epoch"
            f"{'' if epochs == 1 else 's'}) without a "
            f"≥ {self.min_delta:.1%} {better} of the {self.value_name}"
            if self.patience
            else "no early stopping"
        )
        lr = (
            "learning rate constant"
            if self.schedule == "constant"
            else "learning rate decayed by a cosine over the budget"
        ) + f" after a {WARMUP_EPOCHS:g}-epoch warm-up"
        anneal = (
            f", then annealed {self.cooldown_steps} steps (rate falling linearly to 0) and kept "
            f"if the {self.value_name} {better}s"
            if self.cooldown_steps
            else ""
        )
        return (
            f"trained in epochs, up to {self.max_epochs:g} epochs ({self.steps} steps, "
            f"{self.steps_per_epoch} per epoch), {lr}, validation every {self.eval_every} "
            f"steps, {stop}, best checkpoint kept by {self.judged_by}{anneal}"
        )

    def outcome(self, s: dict) -> dict[str, Any]:
        """Where the training stopped and why, from its recipe's summary."""
        stopped = {"early_stopping": "early stopping", "on_eval": "pruned"}.get(
            str(s.get("stopped")), "budget"
        )
        best = s.get("best_step")
        last_rise = self.last_rise(best, self.selection_curve(s), s.get("val_answers") or [])
        return {
            "rule": self.rule(),
            "max_steps": self.steps,
            "steps": s.get("steps"),
            "stopped": stopped,
            "best_step": best,
            "best_epoch": None if best is None else round(best / self.steps_per_epoch, 2),
            "best_at_budget": self.cut_by_budget(best, self.selection_curve(s), last_rise),
            "last_rise": last_rise,
            "select_by": self.select_by,
            "best_value": s.get("best_val_metric"),
            "cooldown": s.get("cooldown"),
        }

    def selection_curve(self, s: dict) -> list:
        """The (step, value) curve that picked the best checkpoint, as a loss (lower is
        better): the validation loss, or the metric negated."""
        if not s.get("select_curve"):  # the loss chose
            return s.get("val_curve") or []
        return [[step, -float(v)] for step, v in s["select_curve"]]

    def last_rise(self, best: int | None, curve: list, answers: list) -> dict | None:
        """When the best checkpoint is the budget's last evaluation and the validation hook
        kept each row's answer: the metric's rise there over the best evaluation before it,
        on the same validation rows, with its paired-bootstrap interval (95%, seed 0) — None
        otherwise (the loss selects: no per-row answers)."""
        if best is None or best < self.steps or self.select_by == "loss" or not curve:
            return None
        earlier = [(float(v), int(step)) for step, v in curve if int(step) < best]
        at = {int(step): a for step, a in answers}
        if not earlier or best not in at:
            return None
        before = min(earlier)[1]  # the earliest of the best before (curve values are negated)
        if before not in at or len(at[before]) != len(at[best]):
            return None
        if self.select_by not in ("accuracy", "macro_f1"):
            return None
        from oficina.ladder.recommend import paired

        def items(a: list) -> list:  # what the bootstrap resamples, as recommend.compare's
            if self.select_by == "macro_f1":
                return [tuple(x) for x in a]
            return [float(p == g) for p, g in a]

        res = paired(items(at[best]), items(at[before]), self.select_by)
        return {
            "from_step": before,
            "diff": round(res["diff"], 4),
            "ci": [round(x, 4) for x in res["ci"]],
            "rows": res["n"],
            "beyond_noise": res["ci"][0] > 0,
        }

    def cut_by_budget(self, best: int | None, curve: list, rise: dict | None = None) -> bool:
        """Whether the budget, not the curve, chose the best checkpoint: it is the last
        evaluation, and that evaluation still improved on the best before it — by more than the
        validation rows' noise (``rise``: a paired bootstrap on the same rows, when a metric
        selects and the rows' answers were kept), or else by ``min_delta`` or more. A smaller
        last step is what early stopping counts as no progress (LoRA on the demo: 0.3619 at step
        120, 0.3609 at 160 — flat, not cut off), and on 40 validation rows one row is 2.5
        points of accuracy: the demo's LoRA rose 0.60 -> 0.65 at its last epoch, two rows, far
        inside the interval (2026-12-02). Under a cosine schedule the decay itself makes the
        last evaluations fall, so there the flag says only that the curve ended improving;
        with the constant schedule (the default) it says that the curve was still learning when
        the budget ended it."""
        if best is None or best < self.steps:
            return False
        if rise is not None:
            return bool(rise["beyond_noise"])
        earlier = [float(v) for step, v in curve if int(step) < best]
        if not earlier or not curve:
            return True
        before, last = min(earlier), float(curve[-1][1])
        return before - last >= self.min_delta * abs(before)


class TrainedRung(Rung):
    Settings = TrainSettings
    max_len: ClassVar[int] = MAX_LEN  # tokens per training example

    def __init__(self, settings: RungSettings):
        super().__init__(settings)
        # The best search trial's (summary, model dir) when it is the rung's final model.
        self.reuse: tuple[dict, Path] | None = None
        self.seed: int | None = None  # the training seed of the training under way
        self.served: tuple[str, str | None] | None = None  # the first seed's Trained.served
        self._hook = None  # the validation hook (fit_hooks), its rows rendered once

    def training_seed(self, ctx: LadderContext) -> int:
        return ctx.cfg.seed if self.seed is None else self.seed

    def workdir(self, ctx: LadderContext, name: str) -> Path:
        """Where a training writes: ``OUT/name``, or ``OUT/name-seedN`` for another seed."""
        s = self.training_seed(ctx)
        return ctx.out / (name if s == ctx.cfg.seed else f"{name}-seed{s}")

    def settings_used(self) -> dict[str, Any]:
        return self.settings.model_dump(exclude=NOT_HYPERPARAMETERS)

    def hyperparameters(self, ctx: LadderContext) -> tuple[dict[str, Any], dict | None]:
        """What this rung trains with, and the search that chose it (None: the config's values).

        With ``search.trials > 0`` a budgeted ``oficina tune`` study on the training split,
        scored on the validation split, picks them (``oficina.ladder.search``).
        """
        hp = self.settings_used()
        search = getattr(self.settings, "search", None)
        if search is None or search.trials == 0:
            return hp, None

        return run_search(self, ctx, hp, search)

    def budget(self, ctx: LadderContext, hp: dict[str, Any]) -> Budget:
        return Budget.of(len(ctx.train), hp, ctx.select_by)

    def fit_hooks(self, ctx: LadderContext):
        """The validation hook of this rung's trainings (``FitHooks``), when the task's metric
        picks the best checkpoint: the validation rows asked as this rung asks the test's."""
        from oficina.train.loop import FitHooks

        if ctx.select_by == "loss":
            return None
        if self._hook is None:
            self._hook = ctx.validation_metrics(*self.asked(ctx, ctx.val))
        return FitHooks(eval_metrics=self._hook)

    def train_args(self, ctx: LadderContext, hp: dict[str, Any], budget: Budget, **extra):
        from oficina.train.loop import TrainArgs

        return TrainArgs(
            lr=float(hp["lr"]),
            batch_size=int(hp["batch_size"]),
            # Warm-up and schedule in epochs, not in shares of the budget: a search trial, the
            # rung and benchmarks/ladder_budget.py's 3x longer run then take the same path (same
            # seed, same batches) for as long as they all run. With a cosine over the budget the
            # budget shaped the path: the demo's full fine-tune scored 0.697 at its 4-epoch
            # budget and 0.594 over 12, its best checkpoint the budget's last epoch only
            # because the decay ended there (2026-11-30).
            warmup_steps=max(1, math.ceil(WARMUP_EPOCHS * budget.steps_per_epoch)),
            min_lr_ratio=1.0 if budget.schedule == "constant" else 0.1,
            cooldown_steps=budget.cooldown_steps,
            eval_every=budget.eval_every,
            # Every validation scores all the (limited) validation rows, as the search's do.
            eval_batches=max(1, math.ceil(len(ctx.val) / int(hp["batch_size"]))),
            patience=budget.patience,
            min_delta=budget.min_delta,
            select_by=budget.select_by,
            seed=self.training_seed(ctx),
            save_every=10_000,
            log_every=max(1, budget.steps // 20),
            # Rows of similar length batched together: padding was 17% of the demo's LoRA
            # tokens, 2% grouped (benchmarks/train.py --what lora-speed measures the gain).
            group_by_length=GROUP_BY_LENGTH,
            **extra,
        )

    def training_files(self, ctx: LadderContext) -> TrainingFiles:
        """What the rung trains on: the task's rows (SFT rows on a generation task)."""
        return ctx.training_files()

    def asked(self, ctx: LadderContext, rows: list[dict]) -> tuple[list[dict], str | None]:
        """(rows, template) as the trained model is asked, as it was trained: the task's."""
        return rows, None

    def evaluate(self, ctx: LadderContext, engine) -> dict:
        """The trained model scored on the test items, prompted as it was trained."""
        rows, template = self.asked(ctx, ctx.test)
        return ctx.evaluate(engine, self.name, template=template, rows=rows)

    def latency_probe(self, ctx: LadderContext, result: RungResult) -> Callable[[list[dict]], dict]:
        # The first seed's model (its inference cost is the result's) as it is deployed.
        if self.served is None:
            raise ValueError(f"rung {self.name} has no served model: it did not train")
        eng = served_engine(ctx, *self.served, name=self.name)
        return lambda rows: ctx.score(eng, *self.asked(ctx, rows))

    @abstractmethod
    def train(self, ctx: LadderContext, hp: dict[str, Any]) -> Trained:
        """Train with the hyperparameters ``hp``; the model, its summary and curves."""

    def lora_config(self, ctx: LadderContext, base: str, hp: dict[str, Any], out: Path):
        """LoRA on the labelled set from ``base``."""
        from oficina.train.recipes import FinetuneConfig, LoraArgs

        d = self.training_files(ctx)
        budget = self.budget(ctx, hp)
        return FinetuneConfig(
            model=base,
            method="lora",
            data=str(d.train),
            val_data=str(d.val),
            template=d.template,
            labels=d.labels,
            out=str(out),
            max_steps=budget.steps,
            max_len=self.max_len,
            # No LoRA dropout: its masks cost ~10-20% of a step on CPU (issue 14; README), and the
            # rung already guards against overfitting by early stopping on validation.
            lora=LoraArgs(
                r=int(hp["rank"]), alpha=int(hp["alpha"]), dropout=0.0, target_modules=LORA_TARGETS
            ),
            train=self.train_args(ctx, hp, budget, weight_decay=0.0),
        )

    def run(self, ctx: LadderContext) -> RungResult:
        """Search once, then train and evaluate once per training seed (``ctx.cfg.seeds``,
        default the ladder's seed); several seeds are one result (``combine_seeds``)."""
        hp, search = self.hyperparameters(ctx)
        seeds = ctx.cfg.seeds or [ctx.cfg.seed]
        runs = []
        for i, seed in enumerate(seeds):
            self.seed = seed
            runs.append((seed, self.run_seed(ctx, hp, search if i == 0 else None, first=i == 0)))
        self.seed = None
        return combine_seeds(runs, n_boot=ctx.cfg.bootstrap, seed=ctx.cfg.seed)

    def run_seed(
        self, ctx: LadderContext, hp: dict[str, Any], search: dict | None, first: bool
    ) -> RungResult:
        """Train at ``self.seed`` with ``hp`` and measure; the search's cost goes to the first
        seed's training (what deploying the rung pays), whose model later rungs build on."""
        t = self.train(ctx, hp)
        res = self.evaluate(ctx, t.engine)
        if t.finetuned is not None and first:
            ctx.finetuned[self.name] = (*t.finetuned, float(res[ctx.metric]))
        if first:
            self.served = t.served
        training = t.cost
        if search is not None:  # a team pays for the search too
            training = add_costs(training, Cost(**search["cost"]))
        if t.built_on is not None:  # and for the model this one was made from
            training = add_costs(training, ctx.training_cost_of(t.built_on))
        r = self.result(
            ctx,
            t.engine,
            res,
            t.detail,
            training=training,
            data=t.data,
            artifacts=t.artifacts,
            hyperparameters=hp,
            summary=t.summary,
            params_changed=int(t.summary.get("params_trainable", 0)),
        )
        r.search = search if first else None
        r.built_on = t.built_on
        r.training_run = {
            **self.budget(ctx, hp).outcome(t.summary),
            "final_cost": t.cost.model_dump(),
        }
        for key, value in t.params.items():
            setattr(r, key, value)
        return r


def served_engine(ctx: LadderContext, spec: str, adapter: str | None, name: str):
    """The model as a deployment serves it: ``spec`` itself, or with ``adapter`` merged into a
    model folder (``oficina merge``) and loaded from it. A trained rung's quality pass and the
    latency pass both ask this model, so the quality reported is the served model's. Scored
    unmerged (PEFT's extra matmuls on every adapted layer) the demo's LoRA answered its 155
    test items at 0.58 s each instead of ~0.35, the QA LoRA 1.40 s instead of 0.69, lora_rag
    2.89 instead of 1.67 (2026-12-01, 2 AVX2 cores, float32); merged in memory (PEFT
    ``merge_and_unload``) it was ~1.3-2x slower than the folder, which is loaded with fused
    projections (``Engine.from_spec``)."""
    if adapter is None:
        return ctx.engine(spec)
    from oficina.train.recipes import MergeConfig, merge

    with tempfile.TemporaryDirectory(dir=ctx.out, prefix=f"{name}-served-") as d:
        merge(MergeConfig(adapter=adapter, out=str(Path(d) / "model")))
        eng = ctx.engine(str(Path(d) / "model"))
        eng.model_hash  # noqa: B018 -- read from the folder before it goes
    return eng


def add_costs(*costs: Cost) -> Cost:
    """Costs paid one after the other: times, FLOPs and dollars add; the peak is the highest."""
    return Cost(
        wall_time_s=sum(c.wall_time_s for c in costs),
        flops=sum(c.flops for c in costs),
        peak_memory_mb=max(c.peak_memory_mb for c in costs),
        usd=sum(c.usd for c in costs),
    )


class RecipeRung(TrainedRung):
    """A trained rung that is one training recipe (a verb and its config): what a search varies.
    A rung whose recipe starts from a model it makes first (CPT before LoRA) makes that model
    before the search and adds its cost in ``trained``."""

    @abstractmethod
    def recipe(self, ctx: LadderContext, hp: dict[str, Any], out: Path) -> tuple[str, Any]:
        """(verb, config) of the training this rung runs with ``hp``, written into ``out``."""

    @abstractmethod
    def trained(self, ctx: LadderContext, hp: dict[str, Any], s: dict, cost: Cost) -> Trained:
        """The Trained of a finished ``recipe`` run whose summary is ``s``."""

    def train(self, ctx: LadderContext, hp: dict[str, Any]) -> Trained:
        """Run the recipe (or take the search's best trial when it was this very training)."""
        # The search's best trial is this training (same seed too): its cost is counted there.
        if self.reuse is not None and self.training_seed(ctx) == ctx.cfg.seed:
            s, _ = self.reuse
            return self.trained(ctx, hp, s, Cost())
        from oficina.evals.tune import verb_class

        verb, cfg = self.recipe(ctx, hp, self.workdir(ctx, self.name))
        t0 = time.perf_counter()
        s = verb_class(verb)[1](cfg, hooks=self.fit_hooks(ctx))
        return self.trained(ctx, hp, s, ctx.training_cost(time.perf_counter() - t0, s))


@register
class Lora(RecipeRung):
    name = "lora"
    description = "low-rank adapters trained on the labelled set (PEFT)"
    Settings = LoraSettings
    # --quick: no search and no anneal (2 more steps and a validation per trained rung: ~40 s of
    # the QA ladder's quick run on 2 AVX2 cores)
    quick = {
        "max_epochs": 1.0, "max_steps": 4, "batch_size": 4, "cooldown_epochs": 0,
        "search": {"trials": 0},
    }  # fmt: skip

    def recipe(self, ctx: LadderContext, hp: dict[str, Any], out: Path) -> tuple[str, Any]:
        return "finetune", self.lora_config(ctx, ctx.cfg.base_model, hp, out)

    def trained(self, ctx: LadderContext, hp: dict[str, Any], s: dict, cost: Cost) -> Trained:

        return Trained(
            engine=served_engine(ctx, ctx.cfg.base_model, s["out"], self.name),
            summary=s,
            cost=cost,
            detail=f"rank {hp['rank']}, {s['steps']} steps",
            artifacts={"adapter": s["out"]},
            data={"labelled_examples": len(ctx.train)},
            finetuned=(ctx.cfg.base_model, s["out"]),
            served=(ctx.cfg.base_model, s["out"]),
            # Served merged, a LoRA model has exactly the base's parameters; the adapter is what was trained.
            params={
                "params_total": ctx.base_params(),
                "params_trainable": int(s["params_trainable"]),
            },
        )


class FullSettings(TrainSettings):
    lr: float = Field(3e-5, gt=0, description="peak learning rate")
    search: SearchSettings = Field(default_factory=SearchSettings)


@register
class Full(RecipeRung):
    name = "full"
    description = "every parameter fine-tuned on the labelled set"
    Settings = FullSettings
    quick = {
        "max_epochs": 1.0, "max_steps": 3, "batch_size": 4, "cooldown_epochs": 0,
        "search": {"trials": 0},
    }  # fmt: skip

    def recipe(self, ctx: LadderContext, hp: dict[str, Any], out: Path) -> tuple[str, Any]:
        from oficina.train.recipes import FinetuneConfig

        d = self.training_files(ctx)
        budget = self.budget(ctx, hp)
        return "finetune", FinetuneConfig(
            model=ctx.cfg.base_model,
            method="full",
            data=str(d.train),
            val_data=str(d.val),
            template=d.template,
            labels=d.labels,
            out=str(out),
            max_steps=budget.steps,
            max_len=self.max_len,
            train=self.train_args(ctx, hp, budget),
        )

    def trained(self, ctx: LadderContext, hp: dict[str, Any], s: dict, cost: Cost) -> Trained:

        return Trained(
            engine=ctx.engine(s["out"]),
            summary=s,
            cost=cost,
            detail=f"{s['steps']} steps",
            artifacts={"model": s["out"]},
            data={"labelled_examples": len(ctx.train)},
            finetuned=(s["out"], None),
            served=(s["out"], None),
        )


class CptSettings(LoraBase):
    cpt_steps: int = Field(40, ge=1, description="continued-pretraining steps on the domain corpus")
    cpt_lr: float = Field(5e-5, gt=0, description="continued-pretraining learning rate")
    seq_len: int = Field(256, ge=16, description="packed sequence length for continued pretraining")
    # The LoRA stage's search, as the lora rung's: its trials train on the pretrained model.
    search: LoraSearchSettings = Field(default_factory=LoraSearchSettings)


@register
class CptLora(RecipeRung):
    """Continued pretraining on the corpus (a step budget; not searched), then the rung's recipe:
    LoRA on that model, searched like the ``lora`` rung. The pretraining's cost is the rung's."""

    name = "cpt_lora"
    description = "continued pretraining on the domain corpus, then LoRA"
    Settings = CptSettings
    quick = {
        "max_epochs": 1.0, "max_steps": 3, "batch_size": 4, "cpt_steps": 2, "seq_len": 128,
        "cooldown_epochs": 0, "search": {"trials": 0},
    }  # fmt: skip
    needs_docs = True

    def __init__(self, settings: RungSettings):
        super().__init__(settings)
        self.cpts: dict[int, tuple[dict, Cost]] = {}  # training seed -> (CPT summary, its cost)

    def continued(self, ctx: LadderContext, hp: dict[str, Any]) -> tuple[dict, Cost]:
        """The continued-pretrained model of the current training seed, made once."""
        seed = self.training_seed(ctx)
        if seed in self.cpts:
            return self.cpts[seed]
        from oficina.data.pack import PackConfig
        from oficina.data.pack import run as pack
        from oficina.models.sources import resolve
        from oficina.train.recipes import PretrainConfig, pretrain

        t0 = time.perf_counter()
        pack_dir = ctx.out / "cpt-pack"  # the same corpus windows for every seed
        pack(
            PackConfig(
                input=[ctx.corpus],
                tokenizer=str(resolve(ctx.cfg.base_model)),
                out=str(pack_dir),
                seq_len=int(hp["seq_len"]),
            )
        )
        steps = int(hp["cpt_steps"])
        # The corpus is not the labelled set: a step budget, validated once at its end.
        cpt_budget = Budget(steps, steps, steps, 1.0, 0, 0.0, str(hp.get("schedule", "constant")))
        cpt = pretrain(
            PretrainConfig(
                model=ctx.cfg.base_model,
                init=ctx.cfg.base_model,
                data=str(pack_dir),
                out=str(self.workdir(ctx, "cpt")),
                max_steps=steps,
                seq_len=int(hp["seq_len"]),
                train=self.train_args(ctx, {**hp, "lr": hp["cpt_lr"]}, cpt_budget),
            )
        )
        self.cpts[seed] = (cpt, ctx.training_cost(time.perf_counter() - t0, cpt))
        return self.cpts[seed]

    def hyperparameters(self, ctx: LadderContext) -> tuple[dict[str, Any], dict | None]:
        self.continued(ctx, self.settings_used())  # what the search's trials start from
        return super().hyperparameters(ctx)

    def recipe(self, ctx: LadderContext, hp: dict[str, Any], out: Path) -> tuple[str, Any]:
        cpt, _ = self.continued(ctx, hp)
        return "finetune", self.lora_config(ctx, cpt["out"], hp, out)

    def trained(self, ctx: LadderContext, hp: dict[str, Any], s: dict, cost: Cost) -> Trained:

        cpt, cpt_cost = self.continued(ctx, hp)
        return Trained(
            engine=served_engine(ctx, cpt["out"], s["out"], self.name),
            summary=s,
            cost=add_costs(cpt_cost, cost),
            detail=f"{cpt['steps']} CPT steps ({cpt['train_tokens']:,} tokens) + {s['steps']} LoRA steps",
            artifacts={"model": cpt["out"], "adapter": s["out"]},
            data={"labelled_examples": len(ctx.train), "corpus_tokens": cpt["train_tokens"]},
            finetuned=(cpt["out"], s["out"]),
            served=(cpt["out"], s["out"]),
            params={
                "params_total": ctx.base_params(),
                "params_trainable": int(s["params_trainable"]),
                "params_changed": int(cpt["params_trainable"]),
            },
        )


class LoraRagSettings(RagSettings, LoraSettings):
    """LoRA's settings (its search too) and the retrieval's (rag's)."""


@register
class LoraRag(Lora):
    """Retrieval-augmented fine-tuning (as RAFT, Zhang et al. 2024, and Balaguer et al. 2024):
    LoRA trained on prompts that carry the passages retrieved for each training row (rag's
    retrieval and prompt shape), then asked with the passages retrieved for each test item.
    Searched like ``lora`` (its own ``search:``); building the index is part of its training
    cost, as it is rag's one-off cost."""

    name = "lora_rag"
    description = "LoRA trained with retrieved passages in its prompts, then asked with them"
    Settings = LoraRagSettings
    quick = {**Lora.quick, "k": 2, "precision": "auto"}
    needs_docs = True
    # Room for the passages: at rag's defaults (3 x 300 characters) a prompt is ~300 tokens,
    # and a cut prompt would train on passages the evaluation shows whole.
    max_len = 1024

    def __init__(self, settings: RungSettings):
        super().__init__(settings)
        self._retrieval: Retrieval | None = None
        self._files: TrainingFiles | None = None

    def retrieval(self, ctx: LadderContext) -> Retrieval:
        if self._retrieval is None:
            self._retrieval = Retrieval(ctx, self.settings)
        return self._retrieval

    def training_files(self, ctx: LadderContext) -> TrainingFiles:
        # Retrieved once: every search trial and every seed trains on the same rows.
        if self._files is None:
            r = self.retrieval(ctx)
            self._files = ctx.training_files(
                template=PASSAGES + ctx.template,
                extra=lambda row: {"context": r.passages(row)},
                name=self.name,
            )
        return self._files

    def asked(self, ctx: LadderContext, rows: list[dict]) -> tuple[list[dict], str | None]:
        return self.retrieval(ctx).rows(rows), PASSAGES + ctx.template

    def latency_probe(self, ctx: LadderContext, result: RungResult) -> Callable[[list[dict]], dict]:
        ctx.closers.append(self.close)  # the index its probe reopens (retrieval is timed)
        return super().latency_probe(ctx, result)

    def close(self) -> None:
        if self._retrieval is not None:
            self._retrieval.close()
            self._retrieval = None

    def trained(self, ctx: LadderContext, hp: dict[str, Any], s: dict, cost: Cost) -> Trained:
        r = self.retrieval(ctx)
        t = super().trained(ctx, hp, s, cost)
        t.cost = add_costs(r.cost, t.cost)
        t.detail = f"{t.detail}, {r.k} {r.mode} passages"
        t.data.update(r.data())
        t.artifacts["index"] = str(r.dir)
        # Its adapter answers with passages in the prompt: not a teacher or a quantization
        # source for rungs that ask without them.
        t.finetuned = None
        return t

    def run(self, ctx: LadderContext) -> RungResult:
        try:
            return super().run(ctx)
        finally:
            self.close()


def as_plain_model(ctx: LadderContext, base: str, adapter: str | None, name: str) -> str:
    """A model directory with the adapter (if any) folded in: what distillation and quantization take."""
    if adapter is None:
        return base
    from oficina.train.recipes import MergeConfig, merge

    out = ctx.out / f"{name}-merged"
    merge(MergeConfig(adapter=adapter, out=str(out)))
    return str(out)


class DistillSettings(TrainSettings):
    lr: float = Field(3e-4, gt=0, description="peak learning rate")
    keep_layers: int = Field(
        10,
        ge=1,
        description="student = the base model with this many of its layers (evenly spaced)",
    )
    temperature: float = Field(2.0, gt=0, description="distillation temperature")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the KD loss vs cross-entropy")
    search: SearchSettings = Field(default_factory=SearchSettings)


@register
class Distill(RecipeRung):
    name = "distill"
    description = (
        "a smaller student (a subset of the base's layers) distilled from the best fine-tuned model"
    )
    Settings = DistillSettings
    quick = {
        "max_epochs": 1.0, "max_steps": 3, "batch_size": 4, "keep_layers": 8,
        "cooldown_epochs": 0, "search": {"trials": 0},
    }  # fmt: skip

    def recipe(self, ctx: LadderContext, hp: dict[str, Any], out: Path) -> tuple[str, Any]:
        from oficina.train.recipes import DistillConfig

        d = self.training_files(ctx)
        self.teacher_rung, base, adapter = ctx.best_finetuned()
        self.teacher = as_plain_model(ctx, base, adapter, name="teacher")
        budget = self.budget(ctx, hp)
        return "distill", DistillConfig(
            teacher=self.teacher,
            student=self.teacher,
            keep_layers=int(hp["keep_layers"]),
            data=str(d.train),
            val_data=str(d.val),
            template=d.template,
            out=str(out),
            max_steps=budget.steps,
            max_len=self.max_len,
            temperature=float(hp["temperature"]),
            alpha=float(hp["alpha"]),
            train=self.train_args(ctx, hp, budget),
        )

    def trained(self, ctx: LadderContext, hp: dict[str, Any], s: dict, cost: Cost) -> Trained:

        return Trained(
            engine=ctx.engine(s["out"]),
            summary=s,
            cost=cost,
            detail=(
                f"{hp['keep_layers']} layers, T={hp['temperature']}, alpha={hp['alpha']}, "
                f"taught by {self.teacher_rung} (whose training cost is included)"
            ),
            artifacts={"model": s["out"], "teacher": self.teacher},
            data={"labelled_examples": len(ctx.train)},
            served=(s["out"], None),
            built_on=self.teacher_rung,
        )


# ---------------------------------------------------------------------------- compression


class QuantizeSettings(RungSettings):
    method: Literal["int8"] = Field(
        "int8", description="quantization applied to the best rung's model"
    )


@register
class Quantize(Rung):
    """The most accurate fine-tuned model (or the base, if none was trained) with int8 Linear layers."""

    name = "quantize"
    description = "the best rung's model with int8 weights"
    Settings = QuantizeSettings

    def __init__(self, settings: RungSettings):
        super().__init__(settings)
        self.source: tuple[str, str] | None = None  # (float model quantized, the rung it came from)

    @staticmethod
    def int8(plain: str, source: str, fp=None):
        """The int8 engine of the float model ``plain`` (loaded, unless ``fp`` is it)."""
        from oficina.infer.engine import Engine
        from oficina.infer.int8 import quantize_int8

        fp = fp or Engine.from_spec(plain)
        return Engine(quantize_int8(fp.model), fp.tokenizer, name=f"{source}-int8")

    def latency_probe(self, ctx: LadderContext, result: RungResult) -> Callable[[list[dict]], dict]:
        if self.source is None:
            raise ValueError("the quantize rung did not run")
        eng = self.int8(*self.source)
        return lambda rows: ctx.score(eng, rows)

    def run(self, ctx: LadderContext) -> RungResult:
        from oficina.infer.engine import Engine
        from oficina.infer.quantize import state_bytes

        if ctx.finetuned:
            source, base, adapter = ctx.best_finetuned()
            plain = as_plain_model(ctx, base, adapter, name="best")
        else:
            source, plain = "zero_shot", ctx.cfg.base_model
        self.source = (plain, source)
        with peak_memory() as work:
            fp = Engine.from_spec(plain)
            float_bytes = state_bytes(fp.model)
            eng = self.int8(plain, source, fp)
            q_bytes = state_bytes(eng.model)
        res = ctx.evaluate(eng, self.name)
        training = Cost(
            wall_time_s=work.wall_s,
            peak_memory_mb=work.peak_mb,
            usd=ctx.usd_for_seconds(work.wall_s),
        )
        built_on = None if source == "zero_shot" else source
        if built_on is not None:  # int8 of a fine-tuned model: that training is paid first
            training = add_costs(ctx.training_cost_of(built_on), training)
        r = self.result(
            ctx,
            eng,
            res,
            f"from {source}: weights {q_bytes / 1e6:.0f} MB vs {float_bytes / 1e6:.0f} MB float"
            + (f"; {source}'s training cost included" if built_on else ""),
            training=training,
            data={"labelled_examples": 0 if source == "zero_shot" else len(ctx.train)},
            artifacts={"from": plain},
        )
        # Quantized Linear layers hide their weights from .parameters(): count the float model's.
        r.params_total = param_counts(fp.model)[0]
        r.built_on = built_on
        r.extra_metrics["weights_mb"] = q_bytes / 1e6
        r.extra_metrics["float_weights_mb"] = float_bytes / 1e6
        return r
