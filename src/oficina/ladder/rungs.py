"""The rungs of the ladder: one small class per way of adapting a model, registered once.

A rung declares its config section (a pydantic ``Settings`` class: ``--rungs.<name>.<field>``),
its description, its values under ``--quick``, and ``run(context) -> RungResult``. The ladder's
config schema, order, quick profile and texts are read from ``REGISTRY`` (in registration order:
from the simplest up), so a new rung is one class here and nothing else.

Trained rungs share ``TrainedRung``: ``hyperparameters(context)`` says what the rung trains with
(today the config's values; a hyperparameter search plugs in there and fills ``search``), then
``train(context, hp)`` trains and returns the model with the recipe's summary (its curves
included), and the shared part evaluates and measures it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from oficina.config import Section
from oficina.ladder.context import LadderContext
from oficina.ladder.result import Cost, RungResult
from oficina.measure import param_counts, peak_memory

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


class RagSettings(RungSettings):
    k: int = Field(3, ge=1, description="passages retrieved per query")
    mode: Literal["bm25", "dense", "hybrid"] = Field("hybrid", description="retriever")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="embedding precision (bf16: ~2.3x faster index build on AMX CPUs)"
    )
    passage_chars: int = Field(
        300, ge=50, description="characters of each retrieved passage put in the prompt"
    )


class Retrieval:
    """The domain documents, indexed (incrementally: a second rung or a rerun re-embeds
    nothing), and the passages for a row. ``cost`` is what building the index cost the first
    time in this ladder: the one-off cost of every rung that retrieves."""

    def __init__(self, ctx: LadderContext, c: RagSettings):
        from oficina.models.embed import Embedder
        from oficina.rag.index import build_index, read_documents
        from oficina.rag.retrieve import Index

        self.k, self.mode, self.chars = c.k, c.mode, c.passage_chars
        self.dir = ctx.out / f"rag-index-{c.precision}"
        with peak_memory() as build:
            docs, _ = read_documents([ctx.corpus])
            embedder = Embedder("minilm-l6", precision=c.precision)
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
        hits = self.index.search(row["text"], k=self.k, mode=self.mode)
        return "\n".join(
            f"[{i}] (topic: {self.titles.get(h.doc_id, h.doc_id)}) {' '.join(h.text.split())[: self.chars]}"
            for i, h in enumerate(hits, 1)
        )

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
    quick = {"k": 2, "precision": "bf16"}
    needs_docs = True

    def run(self, ctx: LadderContext) -> RungResult:
        c = self.settings
        return self.with_passages(ctx, "", lambda row: {}, f"{c.k} {c.mode} passages", 0)

    def with_passages(self, ctx, prefix: str, extra, detail: str, labelled: int) -> RungResult:
        """Evaluate the test rows with their retrieved passages (and ``extra(row)`` fields that
        ``prefix`` uses) before the task; building the index is the rung's one-off cost."""
        retrieval = Retrieval(ctx, self.settings)
        rows = [{**r, **extra(r), "context": retrieval.passages(r)} for r in ctx.test]
        template = prefix + "Reference passages:\n{context}\n\n" + ctx.template
        eng = ctx.base_engine()
        res = ctx.evaluate(eng, self.name, template=template, rows=rows)
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
    quick = {"shots": 2, "k": 2, "precision": "bf16"}
    needs_docs = True

    def run(self, ctx: LadderContext) -> RungResult:
        from oficina.evals.tasks import render_prompt

        c = self.settings
        pick = example_picker(ctx, c.shots, c.strategy)
        answer = ctx.task.answer_field

        def shots(row: dict) -> str:
            # The examples as the few-shot rung shows them; the passages belong to the query.
            return "\n\n".join(
                render_prompt(ctx.template, ex) + " " + str(ex[answer]) for ex in pick(row)
            )

        return self.with_passages(
            ctx,
            "{shots}\n\n",
            lambda row: {"shots": shots(row)},
            f"{c.shots} {c.strategy} shots, {c.k} {c.mode} passages",
            len(ctx.train),
        )


# ---------------------------------------------------------------------------- trained rungs


class TrainSettings(RungSettings):
    steps: int = Field(60, ge=1, description="optimizer steps")
    lr: float = Field(2e-4, gt=0, description="peak learning rate")
    batch_size: int = Field(8, ge=1, description="examples per step")


class LoraSettings(TrainSettings):
    rank: int = Field(8, ge=1, description="LoRA rank")


# Attention projections only: on the demo task this (r=8, lr 2e-3) lifted SmolLM2's accuracy;
# adding the MLP quintuples the adapter for no measured gain.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
MAX_LEN = 256  # tokens per training example; a long passage loses its start, never the answer


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
    params: dict[str, int] = field(default_factory=dict)  # overrides of the counted parameters


class TrainedRung(Rung):
    Settings = TrainSettings
    kinds = ("classification",)  # generation tasks: not trained by the ladder yet

    def hyperparameters(self, ctx: LadderContext) -> tuple[dict[str, Any], dict | None]:
        """What this rung trains with, and the search that chose it (None: the config's values).

        A budgeted search (``oficina tune``) replaces this: it returns its best trial's values
        and ``{"trials": [...]}``; ``train`` takes whatever values it is given.
        """
        return self.settings_used(), None

    @abstractmethod
    def train(self, ctx: LadderContext, hp: dict[str, Any]) -> Trained:
        """Train with the hyperparameters ``hp``; the model, its summary and curves."""

    def train_args(self, ctx: LadderContext, hp: dict[str, Any], **extra):
        from oficina.train.loop import TrainArgs

        steps = int(hp["steps"])
        return TrainArgs(
            lr=float(hp["lr"]),
            batch_size=int(hp["batch_size"]),
            warmup_steps=max(1, steps // 10),
            # A validation curve needs a few points; a run of a handful of steps validates once, at its end.
            eval_every=max(5, steps // 4) if steps >= 20 else steps,
            eval_batches=8,
            seed=ctx.cfg.seed,
            save_every=10_000,
            log_every=max(1, steps // 20),
            **extra,
        )

    def lora(self, ctx: LadderContext, base: str, hp: dict[str, Any], out: Path) -> dict:
        """LoRA on the labelled set from ``base``; the recipe's summary."""
        from oficina.train.recipes import FinetuneConfig, LoraArgs, finetune

        tr, va = ctx.training_files()
        rank = int(hp["rank"])
        return finetune(
            FinetuneConfig(
                model=base,
                method="lora",
                data=str(tr),
                val_data=str(va),
                template=ctx.template,
                labels=ctx.labels,
                out=str(out),
                max_steps=int(hp["steps"]),
                max_len=MAX_LEN,
                lora=LoraArgs(r=rank, alpha=2 * rank, target_modules=LORA_TARGETS),
                train=self.train_args(ctx, hp, weight_decay=0.0),
            )
        )

    def run(self, ctx: LadderContext) -> RungResult:
        hp, search = self.hyperparameters(ctx)
        t = self.train(ctx, hp)
        res = ctx.evaluate(t.engine, self.name)
        if t.finetuned is not None:
            ctx.finetuned[self.name] = (*t.finetuned, float(res[ctx.metric]))
        r = self.result(
            ctx,
            t.engine,
            res,
            t.detail,
            training=t.cost,
            data=t.data,
            artifacts=t.artifacts,
            hyperparameters={**hp, "steps_run": t.summary.get("steps")},
            summary=t.summary,
            params_changed=int(t.summary.get("params_trainable", 0)),
        )
        r.search = search
        for key, value in t.params.items():
            setattr(r, key, value)
        return r


@register
class Lora(TrainedRung):
    name = "lora"
    description = "low-rank adapters trained on the labelled set (PEFT)"
    Settings = LoraSettings
    quick = {"steps": 4, "batch_size": 4}

    def train(self, ctx: LadderContext, hp: dict[str, Any]) -> Trained:
        from oficina.infer.engine import Engine

        t0 = time.perf_counter()
        s = self.lora(ctx, ctx.cfg.base_model, hp, ctx.out / "lora")
        wall = time.perf_counter() - t0
        return Trained(
            engine=Engine.from_spec(ctx.cfg.base_model, adapter=s["out"]),
            summary=s,
            cost=ctx.training_cost(wall, s),
            detail=f"rank {hp['rank']}, {s['steps']} steps",
            artifacts={"adapter": s["out"]},
            data={"labelled_examples": len(ctx.train)},
            finetuned=(ctx.cfg.base_model, s["out"]),
            # Served merged, a LoRA model has exactly the base's parameters; the adapter is what was trained.
            params={
                "params_total": ctx.base_params(),
                "params_trainable": int(s["params_trainable"]),
            },
        )


class FullSettings(TrainSettings):
    lr: float = Field(3e-5, gt=0, description="peak learning rate")


@register
class Full(TrainedRung):
    name = "full"
    description = "every parameter fine-tuned on the labelled set"
    Settings = FullSettings
    quick = {"steps": 3, "batch_size": 4}

    def train(self, ctx: LadderContext, hp: dict[str, Any]) -> Trained:
        from oficina.infer.engine import Engine
        from oficina.train.recipes import FinetuneConfig, finetune

        tr, va = ctx.training_files()
        t0 = time.perf_counter()
        s = finetune(
            FinetuneConfig(
                model=ctx.cfg.base_model,
                method="full",
                data=str(tr),
                val_data=str(va),
                template=ctx.template,
                labels=ctx.labels,
                out=str(ctx.out / "full"),
                max_steps=int(hp["steps"]),
                max_len=MAX_LEN,
                train=self.train_args(ctx, hp),
            )
        )
        wall = time.perf_counter() - t0
        return Trained(
            engine=Engine.from_spec(s["out"]),
            summary=s,
            cost=ctx.training_cost(wall, s),
            detail=f"{s['steps']} steps",
            artifacts={"model": s["out"]},
            data={"labelled_examples": len(ctx.train)},
            finetuned=(s["out"], None),
        )


class CptSettings(LoraSettings):
    cpt_steps: int = Field(40, ge=1, description="continued-pretraining steps on the domain corpus")
    cpt_lr: float = Field(5e-5, gt=0, description="continued-pretraining learning rate")
    seq_len: int = Field(256, ge=16, description="packed sequence length for continued pretraining")


@register
class CptLora(TrainedRung):
    name = "cpt_lora"
    description = "continued pretraining on the domain corpus, then LoRA"
    Settings = CptSettings
    quick = {"steps": 3, "batch_size": 4, "cpt_steps": 2, "seq_len": 128}
    needs_docs = True

    def train(self, ctx: LadderContext, hp: dict[str, Any]) -> Trained:
        from oficina.data.pack import PackConfig
        from oficina.data.pack import run as pack
        from oficina.infer.engine import Engine
        from oficina.models.sources import resolve
        from oficina.train.recipes import PretrainConfig, pretrain

        t0 = time.perf_counter()
        pack_dir = ctx.out / "cpt-pack"
        pack(
            PackConfig(
                input=[ctx.corpus],
                tokenizer=str(resolve(ctx.cfg.base_model)),
                out=str(pack_dir),
                seq_len=int(hp["seq_len"]),
            )
        )
        cpt_hp = {**hp, "lr": hp["cpt_lr"], "steps": hp["cpt_steps"]}
        cpt = pretrain(
            PretrainConfig(
                model=ctx.cfg.base_model,
                init=ctx.cfg.base_model,
                data=str(pack_dir),
                out=str(ctx.out / "cpt"),
                max_steps=int(hp["cpt_steps"]),
                seq_len=int(hp["seq_len"]),
                train=self.train_args(ctx, cpt_hp),
            )
        )
        s = self.lora(ctx, cpt["out"], hp, ctx.out / "cpt-lora")
        wall = time.perf_counter() - t0
        return Trained(
            engine=Engine.from_spec(cpt["out"], adapter=s["out"]),
            summary=s,
            cost=ctx.training_cost(wall, cpt, s),
            detail=f"{cpt['steps']} CPT steps ({cpt['train_tokens']:,} tokens) + {s['steps']} LoRA steps",
            artifacts={"model": cpt["out"], "adapter": s["out"]},
            data={"labelled_examples": len(ctx.train), "corpus_tokens": cpt["train_tokens"]},
            finetuned=(cpt["out"], s["out"]),
            params={
                "params_total": ctx.base_params(),
                "params_trainable": int(s["params_trainable"]),
                "params_changed": int(cpt["params_trainable"]),
            },
        )


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


@register
class Distill(TrainedRung):
    name = "distill"
    description = (
        "a smaller student (a subset of the base's layers) distilled from the best fine-tuned model"
    )
    Settings = DistillSettings
    quick = {"steps": 3, "batch_size": 4, "keep_layers": 8}

    def train(self, ctx: LadderContext, hp: dict[str, Any]) -> Trained:
        from oficina.infer.engine import Engine
        from oficina.train.recipes import DistillConfig, distill

        tr, va = ctx.training_files()
        t0 = time.perf_counter()
        _, base, adapter = ctx.best_finetuned()
        teacher = as_plain_model(ctx, base, adapter, name="teacher")
        s = distill(
            DistillConfig(
                teacher=teacher,
                student=teacher,
                keep_layers=int(hp["keep_layers"]),
                data=str(tr),
                val_data=str(va),
                template=ctx.template,
                out=str(ctx.out / "distill"),
                max_steps=int(hp["steps"]),
                max_len=MAX_LEN,
                temperature=float(hp["temperature"]),
                alpha=float(hp["alpha"]),
                train=self.train_args(ctx, hp),
            )
        )
        wall = time.perf_counter() - t0
        return Trained(
            engine=Engine.from_spec(s["out"]),
            summary=s,
            cost=ctx.training_cost(wall, s),
            detail=f"{hp['keep_layers']} layers, T={hp['temperature']}, alpha={hp['alpha']}",
            artifacts={"model": s["out"], "teacher": teacher},
            data={"labelled_examples": len(ctx.train)},
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

    def run(self, ctx: LadderContext) -> RungResult:
        from oficina.infer.engine import Engine
        from oficina.infer.int8 import quantize_int8
        from oficina.infer.quantize import state_bytes

        if ctx.finetuned:
            source, base, adapter = ctx.best_finetuned()
            plain = as_plain_model(ctx, base, adapter, name="best")
        else:
            source, plain = "zero_shot", ctx.cfg.base_model
        with peak_memory() as work:
            fp = Engine.from_spec(plain)
            float_bytes = state_bytes(fp.model)
            eng = Engine(quantize_int8(fp.model), fp.tokenizer, name=f"{source}-int8")
            q_bytes = state_bytes(eng.model)
        res = ctx.evaluate(eng, self.name)
        r = self.result(
            ctx,
            eng,
            res,
            f"from {source}: weights {q_bytes / 1e6:.0f} MB vs {float_bytes / 1e6:.0f} MB float",
            training=Cost(
                wall_time_s=work.wall_s,
                peak_memory_mb=work.peak_mb,
                usd=ctx.usd_for_seconds(work.wall_s),
            ),
            data={"labelled_examples": 0 if source == "zero_shot" else len(ctx.train)},
            artifacts={"from": plain},
        )
        # Quantized Linear layers hide their weights from .parameters(): count the float model's.
        r.params_total = param_counts(fp.model)[0]
        r.extra_metrics["weights_mb"] = q_bytes / 1e6
        r.extra_metrics["float_weights_mb"] = float_bytes / 1e6
        return r
