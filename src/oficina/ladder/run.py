"""The adaptation ladder — Oficina's main job: which way of adapting a model is worth its cost?

For one base model, domain documents, a labelled training set and a held-out test set, run the
rungs (``oficina.ladder.rungs``) from the simplest up — zero-shot, few-shot, RAG, LoRA, full
fine-tuning, continued pretraining + LoRA, distillation into a smaller student, quantization of
the best — and measure each on the same held-out items: quality with a bootstrap confidence
interval, training cost (wall time, FLOPs, peak memory, dollars), inference cost (latency,
tokens/s, memory, parameters, prompt length) and the data it needed. Then recommend the cheapest
rung that meets the quality target, with the rungs it cannot be told apart from, and write a
report.

    oficina ladder examples/ladder.yaml --out out/ladder            # the full demo
    oficina ladder examples/ladder.yaml --out out/ladder --quick    # CI profile (< 5 min)
    oficina ladder examples/ladder.yaml --out out/l --rungs.full.enabled false --target 0.7
    oficina ladder --data my.jsonl [--docs manuals/] --out out/mine [--quick] [--target 0.8]
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Literal

from pydantic import Field, create_model, field_validator, model_validator

from oficina.config import Section, VerbConfig
from oficina.errors import UserError
from oficina.ladder.context import (
    LadderContext,
    Task,
    check_for_kind,
    check_template,
    metric_for,
)
from oficina.ladder.data import TEST_FRACTION, VALIDATION_FRACTION, prepare_task
from oficina.ladder.latency import measure_latency, method_text
from oficina.ladder.recommend import recommend
from oficina.ladder.report import write
from oficina.ladder.result import RungResult
from oficina.ladder.rungs import REGISTRY, Rung
from oficina.measure import auto_dtype, emulated_bf16_note
from oficina.workspace import atomic_write_text, start_run

# The config schema, the order and the quick profile, read from the registry.
Rungs = create_model(
    "Rungs",
    __base__=Section,
    **{
        name: (cls.Settings, Field(default_factory=cls.Settings, description=cls.description))
        for name, cls in REGISTRY.items()
    },
)
QUICK = {
    "limit_test": 16,
    "limit_train": 32,
    "limit_validation": 16,
    "latency_items": 4,
    "latency_rounds": 1,
    "rungs": {name: dict(cls.quick) for name, cls in REGISTRY.items() if cls.quick},
}
# Variance over training seeds (issue 14): every trained rung trains once per seed.
THOROUGH = {"seeds": [0, 1, 2]}


class LadderConfig(VerbConfig):
    """Run every adaptation rung on your held-out data and recommend the cheapest that meets the target."""

    config_positional = True
    profiles = {"quick": QUICK, "thorough": THOROUGH}
    out: str = Field(
        description="folder for report.html, summary.md, summary.json and the rungs' models"
    )
    quick: bool = Field(
        False,
        description="CI profile (< 5 minutes on 2 cores): 16 test items, 32 training items, 2 shots, 2-4 steps per trained rung, no search and no anneal; replaces the config file's values, flags still win",
    )
    thorough: bool = Field(
        False,
        description="thorough profile: every trained rung trains with seeds 0, 1 and 2; its quality is their mean and their spread is reported",
    )
    base_model: str = Field("smollm2-135m-instruct", description="model spec of the base model")
    data: str | None = Field(
        None,
        description="your one labelled JSONL ({text, label} rows): split into OUT/data and used instead of --task",
    )
    docs: str | None = Field(
        None,
        description="your domain documents (file or folder) for RAG and continued pretraining; with --data, those rungs are skipped without it",
    )
    kind: Literal["auto", "classification", "generation"] = Field(
        "auto",
        description="--data: the task's kind (auto: text+label -> classification, question+answer -> generation)",
    )
    text_field: str | None = Field(
        None, description="--data: the field holding the text (generation: the question)"
    )
    label_field: str | None = Field(
        None, description="--data: the field holding the label (generation: the reference answer)"
    )
    test_fraction: float = Field(
        TEST_FRACTION,
        gt=0,
        lt=1,
        description="--data: share of each label's examples held out for the test split",
    )
    validation_fraction: float = Field(
        VALIDATION_FRACTION,
        gt=0,
        lt=1,
        description="--data: share held out for validation (early stopping, the search)",
    )
    template: str | None = Field(
        None,
        description="prompt template with {text} (default: the task's, or one listing the labels for --data)",
    )
    # SmolLM2-135M-Instruct answered 40 of the QA demo's test questions with token F1 0.074 from
    # the raw prompt and 0.122 as its chat template's user turn (0.128 vs 0.152 with 3 retrieved
    # passages; 2026-11-30): an instruction-tuned model is asked as it was tuned. Classification
    # scores a label's log-likelihood right after "Answer:", which the raw prompt serves: on the
    # demo task's 155 test items, zero-shot 0.284 raw vs 0.271 in chat turns, 3-shot 0.561 vs
    # 0.406 (examples as turns; 2026-12-01, float32, /work/wt/probe/cls_chat.py): auto leaves
    # classification raw.
    chat: Literal["auto", "on", "off"] = Field(
        "auto",
        description="send every prompt as the user turn of the model's chat template, and train "
        "on the same turns (auto: on for generation tasks when the base model has a template)",
    )
    # Session 13 (2026-11-30): LoRA on every linear layer scored +0.148 [+0.052, +0.245] test
    # accuracy over attention-only while their validation losses were alike — the loss did not
    # see what the metric saw. A classifier's checkpoint and search trial are picked by its
    # validation accuracy (label scoring, as the test is scored), ties to the lower loss.
    select_by: Literal["auto", "metric", "loss"] = Field(
        "auto",
        description="what picks a trained rung's best checkpoint, its early stopping and its "
        "search's best trial: the task's metric on the validation split (label scoring) or the "
        "validation loss (auto: the metric for classification, the loss for generation)",
    )
    task: str = Field(
        "examples/demo/task/task.json",
        description="task.json with labels and template; splits beside it",
    )
    corpus: str = Field(
        "examples/demo/reference.jsonl",
        description="domain documents (JSONL with 'text') for RAG and continued pretraining (with --task)",
    )
    target: float = Field(
        0.6, description="quality the application needs (metric on the test split)"
    )
    metric: Literal["accuracy", "macro_f1", "exact_match", "token_f1"] | None = Field(
        None,
        description="quality metric (default: accuracy for classification, exact_match for generation)",
    )
    stop_early: bool = Field(False, description="stop at the first rung that meets the target")
    limit_test: int | None = Field(
        None,
        ge=1,
        description="evaluate on N test items only, a seeded sample keeping each label's share "
        "(default: all of them)",
    )
    limit_train: int | None = Field(
        None, ge=1, description="train on N labelled items only (a seeded, stratified sample)"
    )
    # Every validation scores all of these rows (early stopping, the best checkpoint and the
    # search read them): 64 of the demo's 120 cost about half of scoring them all, at every
    # validation of every trial.
    limit_validation: int | None = Field(
        64,
        ge=1,
        description="validate trained rungs on N validation items (a seeded, stratified sample; "
        "null: all of them)",
    )
    hardware: str = Field(
        "this-cpu", description="hardware row (oficina size's table) for the dollar figures"
    )
    usd_per_hour: float = Field(
        0.10, ge=0, description="price of that hardware per hour (default: a 2-vCPU cloud VM)"
    )
    utilization: float = Field(
        0.35, gt=0, le=1, description="assumed FLOP utilisation for FLOPs -> time on other hardware"
    )
    requests: int = Field(
        100_000, ge=0, description="expected requests over the deployment, for total cost"
    )
    seed: int = Field(0, description="seed for splits, sampling, example selection and training")
    # bf16 scored the demo's test items 1.75x faster than float32 on an AVX-512 BF16 CPU, with the
    # same 48 of 48 predictions (largest label log-prob difference 0.47): what a deployment there
    # runs. On an AVX2-only CPU bf16 is emulated (a training step 5x slower), so auto picks fp32.
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        validate_default=True,
        description="precision every rung is evaluated and priced in (quantize: int8 weights); "
        "auto: bfloat16 where the CPU has AMX or is AMD with AVX-512 BF16, else float32 (oficina.measure.fast_bf16)",
    )
    seeds: list[int] | None = Field(
        None,
        description="training seeds of the trained rungs (default: [seed]); with several, each trains once per seed, after one search at --seed",
    )
    latency_items: int = Field(
        8,
        ge=1,
        description="test items (the first of the split) the latency pass times each rung on",
    )
    latency_rounds: int = Field(
        3,
        ge=0,
        description="rounds of the latency pass, round-robin over the rungs (median per rung); "
        "0: each rung's latency is its quality pass's timing",
    )
    bootstrap: int = Field(
        1000, ge=100, description="bootstrap resamples for the paired comparisons of rungs"
    )
    rungs: Rungs = Field(default_factory=Rungs)  # type: ignore[valid-type]

    @field_validator("dtype")
    @classmethod
    def _resolve_dtype(cls, v: str) -> str:
        return auto_dtype(v)  # "auto" resolved once: the recorded config says what ran

    @model_validator(mode="after")
    def _room_to_train(self) -> LadderConfig:
        if self.test_fraction + self.validation_fraction >= 0.9:
            raise ValueError(
                f"test_fraction {self.test_fraction} + validation_fraction "
                f"{self.validation_fraction} leave under 10% to train on: lower them"
            )
        return self

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"each training seed once: {v}")
        return v


def load_task(cfg: LadderConfig) -> tuple[Task, str | None]:
    """The task (the user's file split into OUT/data, or a task.json) and the documents, if any."""
    if cfg.template is not None:
        check_template(cfg.template)  # before any split is written
    if cfg.data:
        task_file = prepare_task(
            cfg.data,
            Path(cfg.out) / "data",
            text_field=cfg.text_field,
            label_field=cfg.label_field,
            kind=cfg.kind,
            seed=cfg.seed,
            test_fraction=cfg.test_fraction,
            validation_fraction=cfg.validation_fraction,
        )
        corpus = cfg.docs
    else:
        task_file, corpus = Path(cfg.task), cfg.docs or cfg.corpus
    task = Task.load(
        task_file,
        limit_train=cfg.limit_train,
        limit_validation=cfg.limit_validation,
        limit_test=cfg.limit_test,
        template=cfg.template,
        seed=cfg.seed,
    )
    return task, corpus


def _skipped(cls: type[Rung], reason: str) -> RungResult:
    return RungResult(name=cls.name, description=cls.description, status="skipped", reason=reason)


def run_ladder(cfg: LadderConfig) -> dict:
    """Run the enabled rungs; returns the summary dict (also written to cfg.out)."""
    out = Path(cfg.out)
    task, corpus = load_task(cfg)  # bad data stops here, before anything else is written
    metric_for(task, cfg.metric)
    check_for_kind(cfg, task.kind)
    out.mkdir(parents=True, exist_ok=True)
    with start_run("ladder", cfg) as run:
        ctx = LadderContext(cfg, run, task, corpus)
        _ = ctx.chat  # "on" with a model without a template is refused here, before any rung
        run.add_input("task", str(task.path))
        if corpus:
            run.add_input("corpus", corpus)
        run.add_input("base_model", cfg.base_model)
        from rich.console import Console

        console = Console(stderr=True)
        if cfg.dtype == "bfloat16" and (note := emulated_bf16_note("every rung's scoring")):
            console.print(f"[yellow]{note}[/]")
        t_start = time.time()
        met = False
        ran: dict[str, Rung] = {}  # the rung objects that ran: the latency pass asks them
        for name, cls in REGISTRY.items():
            settings = getattr(cfg.rungs, name)
            if met:
                ctx.results.append(_skipped(cls, "target already met (stop_early)"))
                continue
            if not settings.enabled:
                ctx.results.append(_skipped(cls, "turned off in the config"))
                continue
            if cls.needs_docs and not corpus:
                ctx.results.append(_skipped(cls, "no domain documents (--docs)"))
                continue
            if task.kind not in cls.kinds:
                ctx.results.append(_skipped(cls, f"not run on {task.kind} tasks yet"))
                continue
            console.print(f"[bold]rung {name}[/] — {cls.description}")
            t0 = time.perf_counter()
            try:
                ran[name] = cls(settings)
                r = ran[name].run(ctx)
            except UserError:
                raise
            except Exception as e:  # a rung that breaks must not lose the others' results
                r = RungResult(
                    name=name,
                    description=cls.description,
                    status="failed",
                    reason=f"{type(e).__name__}: {e}",
                )
                (run.dir / f"error-{name}.txt").write_text(traceback.format_exc())
            ctx.results.append(r)
            q = "-" if r.quality is None else f"{r.quality:.3f}"
            console.print(f"  {name}: {r.status} quality={q} ({time.perf_counter() - t0:.0f}s)")
            atomic_write_text(
                out / "partial.json",
                json.dumps([x.model_dump() for x in ctx.results], default=str),
            )
            if cfg.stop_early and r.quality is not None and r.quality >= cfg.target:
                console.print(f"  target {cfg.target} met: stopping early")
                met = True
        latency: dict = {
            "items": 0,
            "rounds": 0,
            "method": "Latency: each rung's quality pass over the test items, timed when that "
            "rung ran (latency_rounds 0: no latency pass).",
        }
        if cfg.latency_rounds:
            console.print("[bold]latency pass[/] — every ok rung, as served, on the same items")
            try:
                timed = measure_latency(ctx, ran, cfg.latency_items, cfg.latency_rounds)
            finally:
                for close in ctx.closers:
                    close()
            for name, t in timed.items():
                if "error" in t:  # its quality pass's timing stands; say so
                    console.print(f"  {name}: latency not measured ({t['error']})")
            k = min(cfg.latency_items, len(task.test))
            latency = {
                "items": k,
                "rounds": cfg.latency_rounds,
                "method": method_text(k, cfg.latency_rounds),
                "rungs": timed,
            }
        rec = recommend(ctx.results, cfg.target, cfg.requests, n_boot=cfg.bootstrap, seed=cfg.seed)
        meta = {
            "base_model": cfg.base_model,
            "task": task.name,
            "target": cfg.target,
            "metric": ctx.metric,
            "kind": task.kind,
            "test_items": len(task.test),
            "test_split_items": task.split_sizes["test"],
            "train_items": len(task.train),
            "hardware": cfg.hardware,
            "usd_per_hour": cfg.usd_per_hour,
            "requests": cfg.requests,
            "profile": "quick" if cfg.quick else "thorough" if cfg.thorough else "full",
            "seeds": cfg.seeds or [cfg.seed],
            "wall_time_s": round(time.time() - t_start, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M"),
            "cpu_count": os.cpu_count(),
            "dtype": cfg.dtype,  # what "auto" chose on this CPU (bf16 only where it is native)
            "chat": ctx.chat,  # what "auto" chose: prompts as chat turns or raw text
            "select_by": ctx.select_by,  # what picked the trained rungs' checkpoints
            "labels": task.labels,
            "baselines": ctx.baselines,
            "latency": latency,
        }
        paths = write(out, ctx.results, rec, meta, task.describe())
        (out / "partial.json").unlink(missing_ok=True)
        for k, p in paths.items():
            run.add_output(k, p)
        run.summary.update(
            recommended=rec["rung"],
            met_target=rec["met_target"],
            tied_with=rec["tied_with"],
            rungs={r.name: r.quality for r in ctx.results},
        )
        return json.loads(paths["json"].read_text())


def run(cfg: LadderConfig) -> int:
    summary = run_ladder(cfg)
    out = Path(cfg.out).resolve()
    print(Path(out / "summary.md").read_text())
    print(f"report: {out / 'report.html'}")
    print(f"recommendation: {summary['recommended']} — {summary['reasoning']}")
    return 0
