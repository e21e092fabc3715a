"""What every rung of one ladder run shares: the task's data, the base model, the corpus, the
evaluation on the test split, the costs, and the rungs measured so far.

Two kinds of task: ``classification`` (rows ``{text, label}``, a label scored by its
log-likelihood: accuracy, macro-F1) and ``generation`` (rows ``{text: question, answer}``, a
greedy answer scored against the reference: exact match, token F1). Both prompt with a template
over ``{text}``, so a rung that only prompts serves both; a rung that trains reads
``training_files``: the labelled rows rendered by the template, or, for generation, SFT rows
(that prompt, the reference answer as the completion).

A rung gets this context in ``run(context)`` and returns a ``RungResult``; ``evaluate`` scores a
model on the test items and ``measured`` turns that score into the result every rung reports
(quality with its interval, per-item answers, flags, inference cost, parameters).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oficina.errors import NotFound, UserError
from oficina.evals.metrics import (
    classification_baselines,
    generation_baselines,
    prediction_flags,
)
from oficina.jsonl import read_jsonl
from oficina.ladder.data import sample_rows
from oficina.ladder.result import Cost, InferenceCost, RungResult
from oficina.measure import param_counts, peak_memory, usd
from oficina.workspace import atomic_write_text


@dataclass
class TrainingFiles:
    """The JSONL a training recipe reads, and how it renders them: ``template`` and ``labels``
    for ``{text, label}`` rows, None for ``{prompt, completion}`` rows (already rendered)."""

    train: Path
    val: Path
    template: str | None
    labels: list[str] | None


def _write_rows(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def check_template(template: str) -> str:
    if "{text}" not in template:
        raise UserError(f"the prompt template must contain {{text}}: {template!r}", exit_code=2)
    return template


METRICS = {
    "classification": ("accuracy", "macro_f1"),
    "generation": ("exact_match", "token_f1"),
}


def metric_for(task: Task, metric: str | None) -> str:
    """The quality metric: the one asked for, if it scores this kind of task, or the kind's first."""
    metric = metric or METRICS[task.kind][0]
    if metric not in METRICS[task.kind]:
        raise UserError(
            f"--metric {metric} does not score a {task.kind} task: use one of "
            f"{', '.join(METRICS[task.kind])}",
            exit_code=2,
        )
    return metric


@dataclass
class Task:
    """A task: its kind, labels (classification), prompt template and three splits."""

    path: Path
    name: str
    kind: str  # classification | generation
    labels: list[str]
    template: str
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    split_sizes: dict[str, int]  # before any limit: what the files hold
    info: dict = field(default_factory=dict)  # the task.json as read

    @classmethod
    def load(
        cls,
        task_file: str | Path,
        *,
        limit_train: int | None = None,
        limit_validation: int | None = None,
        limit_test: int | None = None,
        template: str | None = None,
        seed: int = 0,
    ) -> Task:
        """The task file and its three splits; a limit keeps a seeded sample of a split that
        keeps each label's share (``ladder.data.sample_rows``), not the file's first rows: the
        demo's files are in topic order, and its first 160 training rows held 4 'built-in type'
        passages of 93 (the test split has 25)."""
        p = Path(task_file)
        if not p.is_file():
            raise NotFound(f"task file not found: {p}")
        info = json.loads(p.read_text())
        kind = info.get("type", "classification")
        if kind not in METRICS:
            raise UserError(f"task file {p}: unknown type '{kind}' (classification | generation)")
        for key in ("labels", "template") if kind == "classification" else ("template",):
            if key not in info:
                raise UserError(f"task file {p} has no '{key}'")
        splits = {}
        for split in ("train", "validation", "test"):
            f = p.parent / f"{split}.jsonl"
            if not f.is_file():
                raise NotFound(f"task split missing: {f}")
            splits[split] = read_jsonl(f, f"{split} split")[0]
        template = check_template(template or info["template"])
        return cls(
            path=p,
            name=str(info.get("name", p)),
            kind=kind,
            labels=[str(x) for x in info.get("labels", [])],
            template=template,
            train=sample_rows(splits["train"], limit_train, seed),
            validation=sample_rows(splits["validation"], limit_validation, seed),
            test=sample_rows(splits["test"], limit_test, seed),
            split_sizes={k: len(v) for k, v in splits.items()},
            info=info,
        )

    @property
    def answer_field(self) -> str:
        return "label" if self.kind == "classification" else "answer"

    def describe(self) -> dict:
        """summary.json's ``task``: kind, labels, split sizes (and the items actually used)."""
        return {
            "kind": self.kind,
            "name": self.name,
            **({"labels": self.labels} if self.kind == "classification" else {}),
            "template": self.template,
            "splits": self.split_sizes,
            "used": {
                "train": len(self.train),
                "validation": len(self.validation),
                "test": len(self.test),
            },
            **{k: self.info[k] for k in ("source", "duplicates_removed") if k in self.info},
        }


# Settings that apply to one kind of task: (setting, value) -> (that kind, why, what to set).
ONE_KIND = {
    ("chat", "on"): (
        "generation",
        "a classification label is scored right after the raw prompt's 'Answer:'",
        "auto or off",
    ),
    ("select_by", "metric"): (
        "classification",
        "a generation task's metric would need a generation pass at every validation",
        "auto or loss",
    ),
}


def check_for_kind(cfg: Any, kind: str) -> None:
    """Refuse a setting that cannot apply to this kind of task (``ONE_KIND``): before any rung
    runs, not when it is read."""
    for (name, value), (only, why, instead) in ONE_KIND.items():
        if getattr(cfg, name) == value and kind != only:
            raise UserError(
                f"{name}: {value} is for {only} tasks ({why}): set {name}: {instead}", exit_code=2
            )


class LadderContext:
    """The shared state of one ladder run (``cfg`` is the verb's LadderConfig)."""

    def __init__(self, cfg: Any, run: Any, task: Task, corpus: str | None):
        self.cfg, self.run, self.task, self.corpus = cfg, run, task, corpus
        self.kind = task.kind
        self.metric = metric_for(task, cfg.metric)
        self.out = Path(cfg.out).resolve()
        self.labels, self.template = task.labels, task.template
        self.train, self.val, self.test = task.train, task.validation, task.test
        if corpus is not None and not Path(corpus).exists():
            raise NotFound(f"documents not found: {corpus}")
        # What learning nothing scores on these test items: every rung is read against it.
        if task.kind == "classification":
            self.baselines = classification_baselines(
                [str(r.get("label")) for r in self.train],
                [str(r.get("label")) for r in self.test],
                self.labels,
                seed=cfg.seed,
            )
        else:
            self.baselines = generation_baselines(
                [str(r.get("answer")) for r in self.train],
                [str(r.get("answer")) for r in self.test],
                seed=cfg.seed,
            )
        self.results: list[RungResult] = []
        self.shared: dict[str, Any] = {}  # what one rung builds and another reuses (an index)
        self._base_engine = None
        self._chat: bool | None = None
        self.closers: list[Callable[[], None]] = []  # run when the ladder is done (open indexes)
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

    def training_cost(self, wall_s: float, *summaries: dict) -> Cost:
        """The cost of training that took ``wall_s`` and ran the recipes behind ``summaries``."""
        flops = sum(float(s.get("flops", 0.0)) for s in summaries)
        return Cost(
            wall_time_s=wall_s,
            flops=flops,
            peak_memory_mb=max(
                (float(s.get("peak_memory_mb", 0.0)) for s in summaries), default=0.0
            ),
            usd=self.training_usd(wall_s, flops),
        )

    # -- the base model and the training files ---------------------------------
    def engine(self, spec: str, adapter: str | None = None):
        """A model to evaluate (and price) a rung with, in the ladder's ``dtype``: every rung
        alike, so no rung's cost or quality differs by its precision alone."""
        from oficina.infer.engine import Engine

        return Engine.from_spec(spec, dtype=self.cfg.dtype, adapter=adapter)

    def base_engine(self):
        if self._base_engine is None:
            self._base_engine = self.engine(self.cfg.base_model)
        return self._base_engine

    @property
    def chat(self) -> bool:
        """Whether every prompt goes as the user turn of the base model's chat template (the
        config's ``chat``; ``auto``: for generation tasks, when the model has one). Scoring,
        the latency pass and the training rows all follow it, so every rung is asked alike."""
        if self._chat is None:
            mode = self.cfg.chat
            check_for_kind(self.cfg, self.kind)
            if mode == "off" or self.kind != "generation":
                self._chat = False
            else:
                has = self.base_engine().has_chat_template
                if mode == "on" and not has:
                    raise UserError(
                        f"chat: on needs a model with a chat template and {self.cfg.base_model} "
                        "has none: set chat: off"
                    )
                self._chat = has
        return self._chat

    @property
    def select_by(self) -> str:
        """What picks a trained rung's best weights, counts for its early stopping and judges
        its search's trials: the task's metric (accuracy or macro-F1) on the validation split
        scored by label log-likelihood as the test split is (classification; ``select_by:
        auto`` or ``metric``), else the validation loss (``loss``; generation tasks, whose
        metric would need a generation pass at every validation)."""
        mode = self.cfg.select_by
        check_for_kind(self.cfg, self.kind)
        return self.metric if mode != "loss" and self.kind == "classification" else "loss"

    def validation_metrics(
        self, rows: list[dict], template: str | None = None
    ) -> Callable[[Any, list[dict]], dict[str, Any]] | None:
        """The validation hook of a trained rung's training (``FitHooks.eval_metrics``) when
        ``select_by`` is a metric: the model in training classifies ``rows`` (the validation
        split as the rung asks it, ``template``) by label log-likelihood, as ``score`` does the
        test split (its per-row ``answers``, [prediction, gold], kept by fit), and the same passes give the validation loss (the gold label and the EOS
        the training rows end with, after the prompt: ``classify``'s ``label_loss``), so each
        validation runs the rows once; None when the loss selects. Its prompts are whole, as
        the test's are, where fit's own pass cut a row longer than the rung's ``max_len`` from
        the left: one of the demo's 40 validation rows (288 tokens against 256), which moved
        the trained LoRA's loss from 0.5574 to 0.5557 (2026-12-01)."""
        if self.select_by == "loss":
            return None
        tokenizer = self.base_engine().tokenizer
        template = template or self.template

        def metrics(model, _batches: list[dict]) -> dict[str, Any]:
            from oficina.evals.tasks import classify
            from oficina.infer.engine import Engine

            # An engine around the weights in training: no prefix cache (they change between
            # two validations), the tokenizer the base's.
            engine = Engine(model, tokenizer, name="validation")
            eos = tokenizer.eos_token_id  # what train/data.py appends to every SFT row
            res = classify(engine, rows, self.labels, template, end_id=eos)
            out = {"accuracy": res["accuracy"], "macro_f1": res["macro_f1"]}
            # Per row (prediction, gold): whether the budget's last rise beats the earlier best
            # on these same rows is a paired test (rungs.Budget.cut_by_budget).
            out["answers"] = [list(p) for p in zip(res["predictions"], res["golds"], strict=True)]
            if "label_loss" in res:  # a tokenizer without EOS: fit runs its own loss pass
                out["loss"] = res["label_loss"]
            return out

        return metrics

    def base_params(self) -> int:
        return param_counts(self.base_engine().model)[0]

    def training_files(
        self,
        template: str | None = None,
        extra: Callable[[dict], dict] | None = None,
        name: str = "sft",
    ) -> TrainingFiles:
        """What a trained rung's recipe reads: the training and validation rows, and the
        template and labels that render them.

        Classification: ``{text, label}`` rows rendered by ``template`` (default the task's),
        the loss on " " + label — the task's own files, or the rows written into ``OUT/data``
        when a limit cut the training split or ``extra(row)`` adds fields (retrieved passages)
        that the template names. Generation: SFT rows ``{prompt, completion}`` written into
        ``OUT/data/<name>-{train,validation}.jsonl``: the prompt is the template rendered with
        the row as ``evaluate`` renders it, the completion " " + its (first) reference answer,
        the loss on the completion only. Rewritten each time: a rerun may have another limit."""
        from oficina.evals.tasks import render_prompt

        tpl = template or self.template
        d = self.task.path.parent
        data = self.out / "data"
        if self.kind == "generation":

            def sft(r: dict) -> dict:
                answer = r["answer"][0] if isinstance(r["answer"], list) else r["answer"]
                prompt = render_prompt(tpl, {**r, **(extra(r) if extra else {})})
                if self.chat:  # the turns the model is asked in; the loss on the reply and its end
                    turns = [
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": str(answer)},
                    ]
                    return {"id": r.get("id"), "messages": turns}
                return {"id": r.get("id"), "prompt": prompt, "completion": " " + str(answer)}

            train, val = data / f"{name}-train.jsonl", data / f"{name}-validation.jsonl"
            _write_rows(train, [sft(r) for r in self.train])
            _write_rows(val, [sft(r) for r in self.val])
            return TrainingFiles(train, val, None, None)
        if extra is not None:
            train, val = data / f"{name}-train.jsonl", data / f"{name}-validation.jsonl"
            _write_rows(train, [{**r, **extra(r)} for r in self.train])
            _write_rows(val, [{**r, **extra(r)} for r in self.val])
            return TrainingFiles(train, val, tpl, self.labels)
        train, val = d / "train.jsonl", d / "validation.jsonl"
        if len(self.train) != self.task.split_sizes["train"]:
            train = data / "train-limited.jsonl"
            _write_rows(train, self.train)
        if len(self.val) != self.task.split_sizes["validation"]:
            val = data / "validation-limited.jsonl"
            _write_rows(val, self.val)
        return TrainingFiles(train, val, tpl, self.labels)

    # -- evaluation shared by every rung ----------------------------------------
    def score(
        self,
        engine,
        rows: list[dict],
        template: str | None = None,
        fewshot=None,
        example_template: str | None = None,
    ) -> dict:
        """Answer ``rows`` with ``engine`` as the task asks: classify by label log-likelihood,
        or generate greedily (32 new tokens at most; as chat turns when ``chat``) and compare
        with the reference. ``fewshot`` picks solved examples, rendered by ``example_template``
        (default ``template``). What ``evaluate`` scores and what the latency pass
        (``ladder.latency``) times."""
        from oficina.evals.tasks import classify, generate_task

        template = template or self.template
        if self.kind == "classification":
            return classify(
                engine, rows, self.labels, template, fewshot, example_template=example_template
            )
        return generate_task(
            engine,
            rows,
            template,
            fewshot,
            reference_field="answer",
            max_new_tokens=32,
            chat=self.chat,
            example_template=example_template,
        )

    def evaluate(
        self,
        engine,
        name: str,
        template: str | None = None,
        rows: list[dict] | None = None,
        fewshot=None,
        example_template: str | None = None,
    ) -> dict:
        """Score ``engine`` on the test items (or ``rows``, the same items with more fields):
        classify by label log-likelihood, or generate greedily and compare with the reference."""
        rows = rows if rows is not None else self.test
        # This rung's own inference peak (not the process's: a training rung ran before it).
        with peak_memory() as mem:
            res = self.score(engine, rows, template, fewshot, example_template)
        wall = mem.wall_s
        res.setdefault("latency_s_per_item", wall / max(1, len(rows)))
        res["peak_memory_mb"] = mem.peak_mb
        self.run.log({"rung": name, **{m: res[m] for m in METRICS[self.kind]}, "eval_s": wall})
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
        hyperparameters: dict | None = None,
        summary: dict | None = None,
    ) -> RungResult:
        """The RungResult of ``engine`` scoring ``res``; ``summary`` is a training recipe's
        summary, whose curves the result carries."""
        metric = self.metric
        quality = float(res[metric])
        ci = res.get("ci", {}).get(metric) if isinstance(res.get("ci"), dict) else None
        total, trainable = param_counts(engine.model)
        prompt_tokens = float(res.get("prompt_tokens_mean", 0.0))
        latency = float(res["latency_s_per_item"])
        tps = self.tokens_per_s(prompt_tokens, latency)
        preds = [str(p) for p in res.get("predictions", [])]
        s = summary or {}
        if self.kind == "classification":
            flags, flag_text = prediction_flags(
                preds, quality, ci, self.baselines["majority"][metric]
            )
            golds = [str(g) for g in res["golds"]]
            per_item = [float(x) for x in res["per_item"]]
        else:  # no label to collapse onto; the baselines row tells the story
            flags, flag_text = [], ""
            golds = [str(r[0]) for r in res["references"]]
            per_item = [float(x) for x in res["per_item_scores"][metric]]
        shown = METRICS[self.kind] + (("rouge_l",) if self.kind == "generation" else ())
        return RungResult(
            name=name,
            description=description,
            quality=quality,
            ci=tuple(ci) if ci else None,
            metric=metric,
            extra_metrics={k: float(res[k]) for k in shown if k in res},
            extra_ci={k: tuple(v) for k, v in (res.get("ci") or {}).items() if k in shown},
            item_ids=list(res.get("ids", [])),
            predictions=preds,
            golds=golds,
            per_item=per_item,
            predicted_label_counts={lab: preds.count(lab) for lab in self.labels},
            confusion=res.get("confusion", []),
            flags=flags,
            flag_text=flag_text,
            hyperparameters=hyperparameters or {},
            training=training or Cost(),
            inference=InferenceCost(
                latency_s_per_item=latency,
                tokens_per_s=tps,
                peak_memory_mb=float(res["peak_memory_mb"]),
                prompt_tokens_mean=prompt_tokens,
                usd_per_1k_requests=self.usd_for_seconds(latency * 1000.0),
                scoring_s_per_item=latency,
            ),
            params_total=total,
            params_trainable=trainable,
            params_changed=params_changed,
            data=data or {},
            artifacts=artifacts or {},
            loss_curve=[tuple(p) for p in s.get("loss_curve", [])],
            val_curve=[tuple(p) for p in s.get("val_curve", [])],
            select_curve=[tuple(p) for p in s.get("select_curve", [])],
        )

    @staticmethod
    def tokens_per_s(prompt_tokens: float, latency_s: float) -> float:
        # Scoring a label costs one forward over the prompt: report it as prompt tokens per second.
        return prompt_tokens / latency_s if latency_s else 0.0

    def retime(self, r: RungResult, latency_s: float, prompt_tokens: float | None = None) -> None:
        """Give ``r`` the latency per item the latency pass measured, and what follows from it
        (tokens per second, dollars per 1k requests); its quality pass's own timing stays as
        ``scoring_s_per_item``. ``prompt_tokens``: the mean prompt of the items timed."""
        inf = r.inference
        tokens = inf.prompt_tokens_mean if prompt_tokens is None else prompt_tokens
        inf.latency_s_per_item = latency_s
        inf.tokens_per_s = self.tokens_per_s(tokens, latency_s)
        inf.usd_per_1k_requests = self.usd_for_seconds(latency_s * 1000.0)

    def training_cost_of(self, name: str) -> Cost:
        """The training cost (its search included) of the finished rung ``name``: what a rung made
        from its model pays first."""
        for r in self.results:
            if r.name == name:
                return r.training
        raise ValueError(f"rung '{name}' has not run: nothing to build on")

    def best_finetuned(self) -> tuple[str, str, str | None]:
        """(rung, model dir or spec, adapter or None) of the most accurate fine-tuned rung so far."""
        if not self.finetuned:
            raise UserError(
                "distillation needs a fine-tuned teacher: enable the lora, full or cpt_lora rung"
            )
        name = max(self.finetuned, key=lambda k: self.finetuned[k][2])
        base, adapter, _ = self.finetuned[name]
        return name, base, adapter
