"""The adaptation ladder — Oficina's main job: which way of adapting a model is worth its cost?

For one base model, a domain corpus, a labelled training set and a held-out test set, run the
rungs from the simplest up — zero-shot, few-shot, RAG, LoRA, full fine-tuning, continued
pretraining + LoRA, distillation into a smaller student, quantization of the best — and
measure each on the same held-out items: quality with a bootstrap confidence interval,
training cost (wall time, FLOPs, peak memory, dollars), inference cost (latency, tokens/s,
memory, parameters, prompt length) and the data it needed. Then recommend the cheapest rung
that meets the quality target, and write a report.

    oficina ladder examples/ladder.yaml --out out/ladder            # the full demo (~20 min CPU)
    oficina ladder examples/ladder.yaml --out out/ladder --quick    # CI profile (< 5 min)
    oficina ladder examples/ladder.yaml --out out/l --rungs.full.enabled false --target 0.7
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field

from oficina.config import Section, VerbConfig
from oficina.errors import UserError
from oficina.evals.metrics import classification_baselines, prediction_flags
from oficina.evals.report import Cost, InferenceCost, RungResult, recommend, write
from oficina.jsonl import read_jsonl
from oficina.measure import param_counts, peak_memory, usd
from oficina.workspace import atomic_write_text, start_run

# ---------------------------------------------------------------------------- config


class Rung(Section):
    enabled: bool = Field(True, description="run this rung")


class FewShotRung(Rung):
    shots: int = Field(3, ge=1, description="examples in the prompt")
    strategy: Literal["fixed", "random", "similar"] = Field(
        "similar", description="how examples are picked"
    )


class RagRung(Rung):
    k: int = Field(3, ge=1, description="passages retrieved per query")
    mode: Literal["bm25", "dense", "hybrid"] = Field("hybrid", description="retriever")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="embedding precision (bf16: ~2.3x faster index build on AMX CPUs)"
    )


class TrainRung(Rung):
    steps: int = Field(60, ge=1, description="optimizer steps")
    lr: float = Field(2e-4, gt=0, description="peak learning rate")
    batch_size: int = Field(8, ge=1, description="examples per step")


class LoraRung(TrainRung):
    rank: int = Field(8, ge=1, description="LoRA rank")


class CptRung(LoraRung):
    cpt_steps: int = Field(40, ge=1, description="continued-pretraining steps on the domain corpus")
    cpt_lr: float = Field(5e-5, gt=0, description="continued-pretraining learning rate")
    seq_len: int = Field(256, ge=16, description="packed sequence length for continued pretraining")


class DistillRung(TrainRung):
    keep_layers: int = Field(
        10,
        ge=1,
        description="student = the base model with this many of its layers (evenly spaced)",
    )
    temperature: float = Field(2.0, gt=0, description="distillation temperature")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the KD loss vs cross-entropy")


class QuantizeRung(Rung):
    method: Literal["int8"] = Field(
        "int8", description="quantization applied to the best rung's model"
    )


class Rungs(Section):
    zero_shot: Rung = Rung()
    few_shot: FewShotRung = FewShotRung()
    rag: RagRung = RagRung()
    lora: LoraRung = LoraRung()
    full: TrainRung = TrainRung(lr=3e-5)
    cpt_lora: CptRung = CptRung()
    distill: DistillRung = DistillRung(lr=3e-4)
    quantize: QuantizeRung = QuantizeRung()


QUICK = {
    "limit_test": 16,
    "limit_train": 32,
    "rungs": {
        "few_shot": {"shots": 2},
        "rag": {"k": 2, "precision": "bf16"},
        "lora": {"steps": 4, "batch_size": 4},
        "full": {"steps": 3, "batch_size": 4},
        "cpt_lora": {"steps": 3, "batch_size": 4, "cpt_steps": 2, "seq_len": 128},
        "distill": {"steps": 3, "batch_size": 4, "keep_layers": 8},
    },
}


class LadderConfig(VerbConfig):
    """Run every adaptation rung on your held-out data and recommend the cheapest that meets the target."""

    config_positional = True
    profiles = {"quick": QUICK}
    out: str = Field(
        description="folder for report.html, summary.md, summary.json and the rungs' models"
    )
    quick: bool = Field(
        False,
        description="CI profile (< 5 minutes on 2 cores): 16 test items, 32 training items, 2 shots, bf16 embeddings, 2-4 steps per trained rung; replaces the config file's values, flags still win",
    )
    base_model: str = Field("smollm2-135m-instruct", description="model spec of the base model")
    task: str = Field(
        "examples/demo/task/task.json",
        description="task.json with labels and template; splits beside it",
    )
    corpus: str = Field(
        "examples/demo/reference.jsonl",
        description="domain documents (JSONL with 'text') for RAG and continued pretraining",
    )
    target: float = Field(
        0.6, description="quality the application needs (metric on the test split)"
    )
    metric: Literal["accuracy", "macro_f1"] = Field("accuracy", description="quality metric")
    stop_early: bool = Field(False, description="stop at the first rung that meets the target")
    limit_test: int | None = Field(
        None, ge=1, description="evaluate on the first N test items only"
    )
    limit_train: int | None = Field(
        None, ge=1, description="use the first N labelled training items only"
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
    seed: int = Field(0, description="seed for sampling, example selection and training")
    rungs: Rungs = Rungs()


class Ladder:
    """Holds the shared state of one ladder run: data, the base engine, costs, results."""

    def __init__(self, cfg: LadderConfig, run):
        self.cfg, self.run = cfg, run
        self.out = Path(cfg.out).resolve()
        task_path = Path(cfg.task)
        if not task_path.is_file():
            raise UserError(f"task file not found: {task_path}")
        self.task = json.loads(task_path.read_text())
        for key in ("labels", "template"):
            if key not in self.task:
                raise UserError(f"task file {task_path} has no '{key}'")
        split_dir = task_path.parent
        for split in ("train", "validation", "test"):
            if not (split_dir / f"{split}.jsonl").is_file():
                raise UserError(f"task split missing: {split_dir / f'{split}.jsonl'}")
        self.train = read_jsonl(split_dir / "train.jsonl", "training split")[0][: cfg.limit_train]
        self.val = read_jsonl(split_dir / "validation.jsonl", "validation split")[0]
        self.test = read_jsonl(split_dir / "test.jsonl", "test split")[0][: cfg.limit_test]
        if not Path(cfg.corpus).is_file():
            raise UserError(f"corpus not found: {cfg.corpus}")
        self.labels: list[str] = self.task["labels"]
        self.template: str = self.task["template"]
        # What learning nothing scores on these test items: every rung is read against it.
        self.baselines = classification_baselines(
            [str(r.get("label")) for r in self.train],
            [str(r.get("label")) for r in self.test],
            self.labels,
            seed=cfg.seed,
        )
        self.results: list[RungResult] = []
        self._base_engine = None
        # rung -> (model dir or spec, adapter dir or None, quality): teachers and quantization pick from it
        self.finetuned: dict[str, tuple[str, str | None, float]] = {}
        from oficina.models.sizing import hardware_table

        table = hardware_table()
        if cfg.hardware not in table:
            raise UserError(f"unknown hardware '{cfg.hardware}'; rows: {', '.join(table)}")
        self.hw = table[cfg.hardware]

    # -- costs ------------------------------------------------------------------
    def usd_for_seconds(self, seconds: float) -> float:
        return usd(seconds, self.cfg.usd_per_hour)

    def training_usd(self, wall_s: float, flops: float) -> float:
        """Dollars to train: measured time here, or FLOPs at the stated utilisation elsewhere."""
        if self.cfg.hardware == "this-cpu":
            return self.usd_for_seconds(wall_s)
        peak = self.hw["peak_flops"]["bf16"]
        return self.usd_for_seconds(flops / (peak * self.cfg.utilization))

    # -- the base model ---------------------------------------------------------
    def base_engine(self):
        if self._base_engine is None:
            from oficina.infer.engine import Engine

            self._base_engine = Engine.from_spec(self.cfg.base_model)
        return self._base_engine

    def base_params(self) -> int:
        return param_counts(self.base_engine().model)[0]

    # -- evaluation shared by every rung ----------------------------------------
    def evaluate(
        self,
        engine,
        name: str,
        template: str | None = None,
        rows: list[dict] | None = None,
        fewshot=None,
    ) -> dict:
        from oficina.evals.tasks import classify

        rows = rows if rows is not None else self.test
        # This rung's own inference peak (not the process's: a training rung ran before it).
        with peak_memory() as mem:
            res = classify(engine, rows, self.labels, template or self.template, fewshot=fewshot)
        wall = mem.wall_s
        res.setdefault("latency_s_per_item", wall / max(1, len(rows)))
        res["peak_memory_mb"] = mem.peak_mb
        self.run.log(
            {"rung": name, "accuracy": res["accuracy"], "macro_f1": res["macro_f1"], "eval_s": wall}
        )
        return res

    def measured(
        self,
        name: str,
        description: str,
        engine,
        res: dict,
        *,
        training: Cost | None = None,
        params_changed: int = 0,
        data: dict | None = None,
        artifacts: dict | None = None,
        curves: tuple[list, list] | None = None,
    ) -> RungResult:
        metric = self.cfg.metric
        quality = float(res[metric])
        ci = res.get("ci", {}).get(metric) if isinstance(res.get("ci"), dict) else None
        total, trainable = param_counts(engine.model)
        prompt_tokens = float(res.get("prompt_tokens_mean", 0.0))
        latency = float(res["latency_s_per_item"])
        # Scoring a label costs one forward over the prompt: report it as prompt tokens per second.
        tps = prompt_tokens / latency if latency else 0.0
        preds = [str(p) for p in res.get("predictions", [])]
        flags, flag_text = prediction_flags(preds, quality, ci, self.baselines["majority"][metric])
        r = RungResult(
            name=name,
            description=description,
            quality=quality,
            ci=tuple(ci) if ci else None,
            metric=metric,
            extra_metrics={k: float(res[k]) for k in ("accuracy", "macro_f1") if k in res},
            extra_ci={
                k: tuple(v)
                for k, v in (res.get("ci") or {}).items()
                if k in ("accuracy", "macro_f1")
            },
            predicted_label_counts={lab: preds.count(lab) for lab in self.labels},
            confusion=res.get("confusion", []),
            flags=flags,
            flag_text=flag_text,
            training=training or Cost(),
            inference=InferenceCost(
                latency_s_per_item=latency,
                tokens_per_s=tps,
                peak_memory_mb=float(res["peak_memory_mb"]),
                prompt_tokens_mean=prompt_tokens,
                usd_per_1k_requests=self.usd_for_seconds(latency * 1000.0),
            ),
            params_total=total,
            params_trainable=trainable,
            params_changed=params_changed,
            data=data or {},
            artifacts=artifacts or {},
            loss_curve=(curves or ([], []))[0],
            val_curve=(curves or ([], []))[1],
        )
        return r


# ---------------------------------------------------------------------------- the rungs

RUNG_ORDER = ["zero_shot", "few_shot", "rag", "lora", "full", "cpt_lora", "distill", "quantize"]
RUNG_TEXT = {
    "zero_shot": "the base model, instruction only",
    "few_shot": "the base model with labelled examples in the prompt (in-context learning)",
    "rag": "the base model with passages retrieved from the domain corpus",
    "lora": "low-rank adapters trained on the labelled set (PEFT)",
    "full": "every parameter fine-tuned on the labelled set",
    "cpt_lora": "continued pretraining on the domain corpus, then LoRA",
    "distill": "a smaller student (a subset of the base's layers) distilled from the best fine-tuned model",
    "quantize": "the best rung's model with int8 weights",
}


def rung_zero_shot(L: Ladder) -> RungResult:
    eng = L.base_engine()
    res = L.evaluate(eng, "zero_shot")
    return L.measured("zero_shot", RUNG_TEXT["zero_shot"], eng, res, data={"labelled_examples": 0})


def rung_few_shot(L: Ladder) -> RungResult:
    from oficina.infer.prompting import select_examples

    c = L.cfg.rungs.few_shot
    eng = L.base_engine()
    embedder = None
    if c.strategy == "similar":
        from oficina.models.embed import Embedder

        embedder = Embedder("minilm-l6")
    pool = L.train

    def pick(row: dict) -> list[dict]:
        return select_examples(
            pool, row["text"], c.shots, c.strategy, seed=L.cfg.seed, embedder=embedder
        )

    res = L.evaluate(eng, "few_shot", fewshot=pick)
    return L.measured(
        "few_shot",
        f"{RUNG_TEXT['few_shot']}: {c.shots} {c.strategy} shots",
        eng,
        res,
        data={"labelled_examples": len(pool)},
    )


def rung_rag(L: Ladder) -> RungResult:
    """Retrieve passages from the domain corpus and put them, with their topic, before the task."""
    from oficina.rag.index import build_index, read_documents
    from oficina.rag.retrieve import Index

    c = L.cfg.rungs.rag
    index_dir = L.out / "rag-index"
    from oficina.models.embed import Embedder

    with peak_memory() as build:
        docs, _ = read_documents([L.cfg.corpus])
        embedder = Embedder("minilm-l6", precision=c.precision)
        # incremental: a rerun re-embeds nothing
        build_index(docs, index_dir, embedder=embedder, progress=False)
    build_s = build.wall_s
    index = Index.open(index_dir, embedder=embedder)
    titles = {d.doc_id: d.meta.get("title", d.doc_id) for d in docs}

    def with_context(row: dict) -> dict:
        hits = index.search(row["text"], k=c.k, mode=c.mode)
        ctx = "\n".join(
            f"[{i}] (topic: {titles.get(h.doc_id, h.doc_id)}) {' '.join(h.text.split())[:300]}"
            for i, h in enumerate(hits, 1)
        )
        return {**row, "context": ctx}

    rows = [with_context(r) for r in L.test]
    template = "Reference passages:\n{context}\n\n" + L.template
    eng = L.base_engine()
    res = L.evaluate(eng, "rag", template=template, rows=rows)
    n_chunks = index.count()
    index.close()
    return L.measured(
        "rag",
        f"{RUNG_TEXT['rag']}: {c.k} {c.mode} passages",
        eng,
        res,
        # Building the index is the one-off cost of RAG: embedding the corpus.
        training=Cost(
            wall_time_s=build_s, peak_memory_mb=build.peak_mb, usd=L.usd_for_seconds(build_s)
        ),
        data={"labelled_examples": 0, "corpus_documents": len(docs), "chunks": n_chunks},
        artifacts={"index": str(index_dir)},
    )


def _task_files(L: Ladder) -> tuple[Path, Path]:
    d = L.out / "data"
    tr, va = d / "train.jsonl", d / "validation.jsonl"
    atomic_write_text(tr, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in L.train))
    atomic_write_text(va, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in L.val[:64]))
    return tr, va


def _curves(summary: dict) -> tuple[list, list]:
    """(step, train loss) and (step, val loss) from the training run's metrics.jsonl."""
    from oficina.workspace import get_run

    try:
        path = Path(get_run(summary["run_id"])["dir"]) / "metrics.jsonl"
    except (KeyError, TypeError):
        return [], []
    train, val = [], []
    for line in path.read_text().splitlines():
        m = json.loads(line)
        if "step" not in m:
            continue
        if "loss" in m:
            train.append((m["step"], float(m["loss"])))
        if "val_loss" in m:
            val.append((m["step"], float(m["val_loss"])))
    return train, val


def _train_args(L: Ladder, c: TrainRung, **extra):
    from oficina.train.loop import TrainArgs

    return TrainArgs(
        lr=c.lr,
        batch_size=c.batch_size,
        warmup_steps=max(1, c.steps // 10),
        # A validation curve needs a few points; a run of a handful of steps validates once, at its end.
        eval_every=max(5, c.steps // 4) if c.steps >= 20 else c.steps,
        eval_batches=8,
        seed=L.cfg.seed,
        save_every=10_000,
        log_every=max(1, c.steps // 20),
        **extra,
    )


def _cost(L: Ladder, s: dict, wall_s: float) -> Cost:
    return Cost(
        wall_time_s=wall_s,
        flops=float(s.get("flops", 0.0)),
        peak_memory_mb=float(s.get("peak_memory_mb", 0.0)),
        usd=L.training_usd(wall_s, float(s.get("flops", 0.0))),
    )


# Attention projections only: on the demo task this (r=8, lr 2e-3) lifted SmolLM2's accuracy;
# adding the MLP quintuples the adapter for no measured gain.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
MAX_LEN = 256  # tokens per training example; a long passage loses its start, never the answer


def _lora(L: Ladder, base: str, c: LoraRung, out: Path) -> dict:
    from oficina.train.recipes import FinetuneConfig, LoraArgs, finetune

    tr, va = _task_files(L)
    fc = FinetuneConfig(
        model=base,
        method="lora",
        data=str(tr),
        val_data=str(va),
        template=L.template,
        labels=L.labels,
        out=str(out),
        max_steps=c.steps,
        max_len=MAX_LEN,
        lora=LoraArgs(r=c.rank, alpha=2 * c.rank, target_modules=LORA_TARGETS),
        train=_train_args(L, c, weight_decay=0.0),
    )
    return finetune(fc)


def rung_lora(L: Ladder) -> RungResult:
    from oficina.infer.engine import Engine

    c = L.cfg.rungs.lora
    t0 = time.perf_counter()
    s = _lora(L, L.cfg.base_model, c, L.out / "lora")
    wall = time.perf_counter() - t0
    eng = Engine.from_spec(L.cfg.base_model, adapter=s["out"])
    res = L.evaluate(eng, "lora")
    L.finetuned["lora"] = (L.cfg.base_model, s["out"], res[L.cfg.metric])
    r = L.measured(
        "lora",
        f"{RUNG_TEXT['lora']}: rank {c.rank}, {s['steps']} steps",
        eng,
        res,
        training=_cost(L, s, wall),
        data={"labelled_examples": len(L.train)},
        artifacts={"adapter": s["out"]},
        curves=_curves(s),
    )
    # Served merged, a LoRA model has exactly the base's parameters; the adapter is what was trained.
    r.params_total = L.base_params()
    r.params_trainable = r.params_changed = int(s["params_trainable"])
    return r


def rung_full(L: Ladder) -> RungResult:
    from oficina.infer.engine import Engine
    from oficina.train.recipes import FinetuneConfig, finetune

    c = L.cfg.rungs.full
    tr, va = _task_files(L)
    t0 = time.perf_counter()
    s = finetune(
        FinetuneConfig(
            model=L.cfg.base_model,
            method="full",
            data=str(tr),
            val_data=str(va),
            template=L.template,
            labels=L.labels,
            out=str(L.out / "full"),
            max_steps=c.steps,
            max_len=MAX_LEN,
            train=_train_args(L, c),
        )
    )
    wall = time.perf_counter() - t0
    eng = Engine.from_spec(s["out"])
    res = L.evaluate(eng, "full")
    L.finetuned["full"] = (s["out"], None, res[L.cfg.metric])
    r = L.measured(
        "full",
        f"{RUNG_TEXT['full']}: {s['steps']} steps",
        eng,
        res,
        training=_cost(L, s, wall),
        data={"labelled_examples": len(L.train)},
        artifacts={"model": s["out"]},
        curves=_curves(s),
    )
    r.params_changed = int(s["params_trainable"])
    return r


def rung_cpt_lora(L: Ladder) -> RungResult:
    from oficina.data.pack import PackConfig
    from oficina.data.pack import run as pack
    from oficina.infer.engine import Engine
    from oficina.models.sources import resolve
    from oficina.train.recipes import PretrainConfig, pretrain

    c = L.cfg.rungs.cpt_lora
    t0 = time.perf_counter()
    pack_dir = L.out / "cpt-pack"
    pack(
        PackConfig(
            input=[L.cfg.corpus],
            tokenizer=str(resolve(L.cfg.base_model)),
            out=str(pack_dir),
            seq_len=c.seq_len,
        )
    )
    cpt = pretrain(
        PretrainConfig(
            model=L.cfg.base_model,
            init=L.cfg.base_model,
            data=str(pack_dir),
            out=str(L.out / "cpt"),
            max_steps=c.cpt_steps,
            seq_len=c.seq_len,
            train=_train_args(L, c.model_copy(update={"lr": c.cpt_lr, "steps": c.cpt_steps})),
        )
    )
    s = _lora(L, cpt["out"], c, L.out / "cpt-lora")
    wall = time.perf_counter() - t0
    eng = Engine.from_spec(cpt["out"], adapter=s["out"])
    res = L.evaluate(eng, "cpt_lora")
    L.finetuned["cpt_lora"] = (cpt["out"], s["out"], res[L.cfg.metric])
    flops = float(cpt.get("flops", 0.0)) + float(s.get("flops", 0.0))
    train_curve, val_curve = _curves(s)
    r = L.measured(
        "cpt_lora",
        f"{RUNG_TEXT['cpt_lora']}: {cpt['steps']} CPT steps ({cpt['train_tokens']:,} tokens) + {s['steps']} LoRA steps",
        eng,
        res,
        training=Cost(
            wall_time_s=wall,
            flops=flops,
            peak_memory_mb=max(cpt.get("peak_memory_mb", 0), s.get("peak_memory_mb", 0)),
            usd=L.training_usd(wall, flops),
        ),
        data={"labelled_examples": len(L.train), "corpus_tokens": cpt["train_tokens"]},
        artifacts={"model": cpt["out"], "adapter": s["out"]},
        curves=(train_curve, val_curve),
    )
    r.params_total = L.base_params()
    r.params_trainable = int(s["params_trainable"])
    r.params_changed = int(cpt["params_trainable"])
    return r


def _best_finetuned(L: Ladder) -> tuple[str, str | None]:
    """(model dir or spec, adapter or None) of the most accurate fine-tuned rung so far."""
    if not L.finetuned:
        raise UserError(
            "distillation needs a fine-tuned teacher: enable the lora, full or cpt_lora rung"
        )
    base, adapter, _ = max(L.finetuned.values(), key=lambda t: t[2])
    return base, adapter


def _as_plain_model(L: Ladder, base: str, adapter: str | None, name: str) -> str:
    if adapter is None:
        return base
    from oficina.train.recipes import MergeConfig, merge

    out = L.out / f"{name}-merged"
    merge(MergeConfig(adapter=adapter, out=str(out)))
    return str(out)


def rung_distill(L: Ladder) -> RungResult:
    from oficina.infer.engine import Engine
    from oficina.train.recipes import DistillConfig, distill

    c = L.cfg.rungs.distill
    tr, va = _task_files(L)
    t0 = time.perf_counter()
    teacher = _as_plain_model(L, *_best_finetuned(L), name="teacher")
    s = distill(
        DistillConfig(
            teacher=teacher,
            student=teacher,
            keep_layers=c.keep_layers,
            data=str(tr),
            val_data=str(va),
            template=L.template,
            out=str(L.out / "distill"),
            max_steps=c.steps,
            max_len=MAX_LEN,
            temperature=c.temperature,
            alpha=c.alpha,
            train=_train_args(L, c),
        )
    )
    wall = time.perf_counter() - t0
    eng = Engine.from_spec(s["out"])
    res = L.evaluate(eng, "distill")
    r = L.measured(
        "distill",
        f"{RUNG_TEXT['distill']}: {c.keep_layers} layers, T={c.temperature}, alpha={c.alpha}",
        eng,
        res,
        training=_cost(L, s, wall),
        data={"labelled_examples": len(L.train)},
        artifacts={"model": s["out"], "teacher": teacher},
        curves=_curves(s),
    )
    r.params_changed = int(s["params_trainable"])
    return r


def rung_quantize(L: Ladder) -> RungResult:
    """The most accurate fine-tuned model (or the base, if none was trained) with int8 Linear layers."""
    from oficina.infer.engine import Engine
    from oficina.infer.int8 import quantize_int8
    from oficina.infer.quantize import state_bytes

    if L.finetuned:
        base, adapter = _best_finetuned(L)
        source = max(L.finetuned, key=lambda k: L.finetuned[k][2])
        plain = _as_plain_model(L, base, adapter, name="best")
    else:
        source, plain = "zero_shot", L.cfg.base_model
    with peak_memory() as work:
        fp = Engine.from_spec(plain)
        float_bytes = state_bytes(fp.model)
        eng = Engine(quantize_int8(fp.model), fp.tokenizer, name=f"{source}-int8")
        q_bytes = state_bytes(eng.model)
    wall = work.wall_s
    res = L.evaluate(eng, "quantize")
    r = L.measured(
        "quantize",
        f"{RUNG_TEXT['quantize']} (from {source}): weights {q_bytes / 1e6:.0f} MB vs {float_bytes / 1e6:.0f} MB float",
        eng,
        res,
        training=Cost(wall_time_s=wall, peak_memory_mb=work.peak_mb, usd=L.usd_for_seconds(wall)),
        data={"labelled_examples": 0 if source == "zero_shot" else len(L.train)},
        artifacts={"from": plain},
    )
    # Quantized Linear layers hide their weights from .parameters(): count the float model's.
    r.params_total = param_counts(fp.model)[0]
    r.extra_metrics["weights_mb"] = q_bytes / 1e6
    r.extra_metrics["float_weights_mb"] = float_bytes / 1e6
    return r


RUNGS: dict[str, Callable[[Ladder], RungResult]] = {
    "zero_shot": rung_zero_shot,
    "few_shot": rung_few_shot,
    "rag": rung_rag,
    "lora": rung_lora,
    "full": rung_full,
    "cpt_lora": rung_cpt_lora,
    "distill": rung_distill,
    "quantize": rung_quantize,
}


# ---------------------------------------------------------------------------- the verb


def run_ladder(cfg: LadderConfig) -> dict:
    """Run the enabled rungs; returns the summary dict (also written to cfg.out)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with start_run("ladder", cfg) as run:
        L = Ladder(cfg, run)
        run.add_input("task", cfg.task)
        run.add_input("corpus", cfg.corpus)
        run.add_input("base_model", cfg.base_model)
        from rich.console import Console

        console = Console(stderr=True)
        t_start = time.time()
        for name in RUNG_ORDER:
            rung_cfg = getattr(cfg.rungs, name)
            if not rung_cfg.enabled:
                L.results.append(
                    RungResult(
                        name=name,
                        description=RUNG_TEXT[name],
                        status="skipped",
                        reason="turned off in the config",
                    )
                )
                continue
            console.print(f"[bold]rung {name}[/] — {RUNG_TEXT[name]}")
            t0 = time.perf_counter()
            try:
                r = RUNGS[name](L)
            except UserError:
                raise
            except Exception as e:  # a rung that breaks must not lose the others' results
                r = RungResult(
                    name=name,
                    description=RUNG_TEXT[name],
                    status="failed",
                    reason=f"{type(e).__name__}: {e}",
                )
                (run.dir / f"error-{name}.txt").write_text(__import__("traceback").format_exc())
            L.results.append(r)
            q = "-" if r.quality is None else f"{r.quality:.3f}"
            console.print(f"  {name}: {r.status} quality={q} ({time.perf_counter() - t0:.0f}s)")
            atomic_write_text(
                out / "partial.json", json.dumps([x.model_dump() for x in L.results], default=str)
            )
            if cfg.stop_early and r.quality is not None and r.quality >= cfg.target:
                console.print(f"  target {cfg.target} met: stopping early")
                for rest in RUNG_ORDER[RUNG_ORDER.index(name) + 1 :]:
                    L.results.append(
                        RungResult(
                            name=rest,
                            description=RUNG_TEXT[rest],
                            status="skipped",
                            reason="target already met (stop_early)",
                        )
                    )
                break
        rec = recommend(L.results, cfg.target, cfg.requests)
        meta = {
            "base_model": cfg.base_model,
            "task": L.task.get("name", cfg.task),
            "target": cfg.target,
            "metric": cfg.metric,
            "test_items": len(L.test),
            "train_items": len(L.train),
            "hardware": cfg.hardware,
            "usd_per_hour": cfg.usd_per_hour,
            "requests": cfg.requests,
            "profile": "quick" if cfg.quick else "full",
            "wall_time_s": round(time.time() - t_start, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M"),
            "cpu_count": os.cpu_count(),
            "labels": L.labels,
            "baselines": L.baselines,
        }
        paths = write(out, L.results, rec, meta)
        (out / "partial.json").unlink(missing_ok=True)
        for k, p in paths.items():
            run.add_output(k, p)
        run.summary.update(
            recommended=rec["rung"],
            met_target=rec["met_target"],
            rungs={r.name: r.quality for r in L.results},
        )
        return json.loads(paths["json"].read_text())


def run(cfg: LadderConfig) -> int:
    summary = run_ladder(cfg)
    out = Path(cfg.out).resolve()
    print(Path(out / "summary.md").read_text())
    print(f"report: {out / 'report.html'}")
    print(f"recommendation: {summary['recommended']} — {summary['reasoning']}")
    return 0
