"""``oficina eval``: task metrics, perplexity and inference cost of one model, with intervals.

    oficina eval smollm2-135m-instruct                          # the demo domain's test split
    oficina eval DIR --adapter ADAPTER_DIR --limit 40 --json
    oficina eval DIR --task my_task.json --split validation --fewshot 3
    oficina eval DIR --task qa.jsonl --perplexity notes.txt
    oficina eval DIR --baseline eval-20250101-120000-abc123    # is this model better than that one?

A task is a JSONL of items, optionally described by a ``task.json`` (the demo domain's
``examples/demo/task/task.json`` is the model): ``type`` classification | multiple_choice |
generation | perplexity, ``labels`` and ``template`` (a ``str.format`` prompt), field names,
and the split files beside it (``{split}.jsonl``, or ``files: {split: path}``). A bare JSONL's
type is read off its fields: ``choices`` -> multiple choice, ``label`` -> classification,
``answer``/``answers`` -> generation, only ``text`` -> perplexity.

A classification-head LoRA adapter (``finetune --task classification``) is run through its head
on a classification task (texts cut where training cut them), not through the generation engine.

Reported, each metric with a percentile-bootstrap interval over items (seeded): accuracy and
macro-F1 (classification), accuracy and lm-eval's acc/acc_norm (multiple choice), exact match,
token F1 and ROUGE-L (generation), perplexity and bits per byte (held-out text, sliding window).
Inference cost: latency per item, tokens/s, prompt tokens, parameters and peak memory — the
resident-set high-water mark of this command's span of work (``oficina.measure``: Linux
``VmHWM`` reset when the command starts, so it covers loading the model plus evaluating it).

Everything lands in the run folder: ``metrics.json`` (all numbers), ``predictions.jsonl`` (one
line per item, what a later ``--baseline`` comparison reads) and the registry row.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from oficina.config import VerbConfig
from oficina.errors import NotFound, UserError
from oficina.evals import metrics as M
from oficina.evals import tasks as T
from oficina.jsonl import read_jsonl
from oficina.measure import current_mb, param_counts, start_span

TaskType = Literal["classification", "multiple_choice", "generation", "perplexity"]


class EvalConfig(VerbConfig):
    """Evaluate a model: task metrics and perplexity with bootstrap confidence intervals, plus
    latency, tokens/s and peak memory. Default task: the bundled demo domain (its test split).

    Perplexity: BOS first, sliding windows of --window tokens moving by half a window, exp(total
    NLL / total tokens) over all texts; the same number oficina quantize prints."""

    positionals = ("model",)
    model: str = Field(
        description="model spec: HF directory, packaged name, preset, .gguf file or hub id"
    )
    adapter: str | None = Field(None, description="a PEFT (LoRA) adapter directory to apply")
    task: str | None = Field(
        None,
        description="task.json (split files beside it) or a JSONL of items; default: the demo domain",
    )
    split: str = Field("test", description="which split of a task.json to evaluate")
    perplexity: str = Field(
        "task",
        description="held-out text for perplexity: a .txt or .jsonl ('text' field) file, "
        "'task' (the texts of the task's items) or 'off'",
    )
    limit: int | None = Field(
        None, ge=1, description="evaluate a seeded random sample of at most N items (and texts)"
    )
    fewshot: int = Field(
        0, ge=0, description="solved examples in each prompt (in-context learning)"
    )
    fewshot_split: str = Field("train", description="split the few-shot examples come from")
    fewshot_strategy: Literal["fixed", "random", "similar"] = Field(
        "fixed",
        description="which examples: the first k, k at random (seeded), or the k most similar",
    )
    normalize: Literal["none", "tokens", "chars"] = Field(
        "none",
        description="divide an answer's log-likelihood by its length before the argmax",
    )
    max_new_tokens: int = Field(
        32, ge=1, description="generation tasks: tokens to generate at most"
    )
    chat: bool = Field(
        False,
        description="generation tasks: ask in the model's chat template, each few-shot example a "
        "user turn and its answer (what oficina ladder does for generation tasks)",
    )
    batch_size: int = Field(8, ge=1, description="prompts per forward pass")
    window: int = Field(
        1024,
        ge=8,
        description="perplexity: tokens per sliding window at most (stride half a window)",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="weights and compute dtype"
    )
    bootstrap: int = Field(1000, ge=10, description="bootstrap resamples per interval")
    alpha: float = Field(0.05, gt=0, lt=1, description="intervals are at level 1 - alpha")
    seed: int = Field(
        0, description="seed of the bootstrap, the --limit sample and random few-shot"
    )
    baseline: str | None = Field(
        None,
        description="an earlier eval run (id or folder) on the same items: paired bootstrap "
        "of the difference, to tell whether the two models differ",
    )
    max_len: int | None = Field(
        None,
        ge=8,
        description="classification-head adapters: truncate texts to this many tokens "
        "(default: the length the head was trained on)",
    )
    json_: bool = Field(False, alias="json", description="print the results as JSON")


# ---------------------------------------------------------------------------- tasks


@dataclass
class Task:
    name: str
    type: TaskType
    rows: list[dict]
    path: Path | None = None
    labels: list[str] = field(default_factory=list)
    template: str | None = None
    text_field: str = "text"
    label_field: str = "label"
    choices_field: str = "choices"
    answer_field: str = "answer"
    prompt_field: str = "prompt"
    stop: list[str] = field(default_factory=lambda: ["\n"])
    skipped: int = 0  # malformed lines set aside
    spec: dict = field(default_factory=dict)
    split_files: dict[str, Path] = field(default_factory=dict)


def demo_task_path() -> Path:
    """The bundled demo task: the repository's examples/, else built once into the cache."""
    here = Path(__file__).resolve().parents[3] / "examples" / "demo" / "task" / "task.json"
    if here.is_file():
        return here
    from oficina.demo_domain import build
    from oficina.workspace import cache_dir

    out = cache_dir() / "demo"
    if not (out / "task" / "task.json").is_file():
        build(out)
    return out / "task" / "task.json"


def _infer_type(row: dict) -> TaskType:
    if "choices" in row:
        return "multiple_choice"
    if "label" in row:
        return "classification"
    if any(k in row for k in ("answer", "answers", "reference", "references")):
        return "generation"
    if "text" in row:
        return "perplexity"
    raise UserError(
        "cannot tell the task type from the fields "
        f"{sorted(row)}: add a task.json with 'type', or use choices/label/answer/text fields"
    )


def _default_template(kind: TaskType, row: dict, labels: list[str]) -> str | None:
    lead = "{question}" if "question" in row else "{prompt}" if "prompt" in row else "{text}"
    if kind == "classification":
        return lead + "\nQuestion: Which one is it: " + ", ".join(labels) + "?\nAnswer:"
    if kind == "multiple_choice":
        return lead + "\nAnswer:"
    if kind == "generation":
        return "Question: {question}\nAnswer:" if "question" in row else "{prompt}"
    return None


def load_task(path: str | None, split: str = "test") -> Task:
    """A task.json (+ its split file) or a bare JSONL -> a Task ready to evaluate."""
    p = Path(path).expanduser() if path else demo_task_path()
    spec: dict = {}
    split_files: dict[str, Path] = {}
    if p.suffix == ".json":
        if not p.is_file():
            raise NotFound(f"task file not found: {p}")
        try:
            spec = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{p} is not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(spec, dict):
            raise UserError(f"{p} must hold an object describing the task")
        files = spec.get("files") or {}
        split_files = {s: (p.parent / f) for s, f in files.items()}
        for f in p.parent.glob("*.jsonl"):
            split_files.setdefault(f.stem, f)
        if split not in split_files:
            have = ", ".join(sorted(split_files)) or "none"
            raise UserError(f"task {p} has no split '{split}' (splits: {have})")
        data = split_files[split]
    elif p.suffix == ".jsonl":
        data = p
        sibling = p.parent / "task.json"
        if sibling.is_file():
            spec = json.loads(sibling.read_text(encoding="utf-8"))
        split_files = {f.stem: f for f in p.parent.glob("*.jsonl")}
    else:
        raise UserError(f"a task is a .json description or a .jsonl of items, not {p.name}")
    rows, bad = read_jsonl(data, "task file")
    if not rows:
        raise UserError(f"{data} holds no items" + (f" ({bad} malformed lines)" if bad else ""))
    kind = spec.get("type") or _infer_type(rows[0])
    if kind not in ("classification", "multiple_choice", "generation", "perplexity"):
        raise UserError(
            f"task type {kind!r} is not one of classification, multiple_choice, generation, perplexity"
        )
    t = Task(
        name=spec.get("name") or p.stem,
        type=kind,
        rows=rows,
        path=data,
        skipped=bad,
        spec=spec,
        split_files=split_files,
    )
    for attr in ("text_field", "label_field", "choices_field", "answer_field", "prompt_field"):
        if attr in spec:
            setattr(t, attr, spec[attr])
    if kind == "generation" and "answer_field" not in spec:
        # Without a task.json, each row may name its reference(s) any of the usual ways.
        keys = ("answer", "answers", "reference", "references")
        t.answer_field = "_references"
        for r in rows:
            ref = next((r[k] for k in keys if r.get(k) not in (None, "", [])), None)
            if ref is not None:
                r["_references"] = ref
    if kind == "multiple_choice" and "answer_field" not in spec:
        t.answer_field = next((k for k in ("answer", "gold", "label") if k in rows[0]), "answer")
    if "stop" in spec:
        t.stop = list(spec["stop"])
    if kind == "classification":
        labels = spec.get("labels")
        if not labels:
            labels = list(dict.fromkeys(str(r.get(t.label_field)) for r in rows))
        t.labels = [str(x) for x in labels]
    t.template = spec.get("template") or _default_template(kind, rows[0], t.labels)
    # Items without the fields the task reads are set aside and counted, not a crash.
    need = {
        "classification": [t.label_field],
        "multiple_choice": [t.choices_field, t.answer_field],
        "generation": [t.answer_field],
        "perplexity": [t.text_field],
    }[kind]
    keep = [r for r in rows if all(r.get(k) not in (None, "") for k in need)]
    t.skipped += len(rows) - len(keep)
    t.rows = keep
    if not keep:
        raise UserError(f"no item of {data} has the fields {need} this {kind} task needs")
    return t


def sample(rows: list, limit: int | None, seed: int) -> list:
    """At most ``limit`` items, a seeded random sample kept in file order (all if no limit)."""
    if limit is None or limit >= len(rows):
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def read_texts(path: Path, text_field: str = "text") -> list[str]:
    """Held-out text: a .jsonl (one text per line, ``text_field``) or any text file (whole)."""
    if not path.is_file():
        raise NotFound(f"perplexity file not found: {path}")
    if path.suffix == ".jsonl":
        rows, _ = read_jsonl(path)
        texts = [str(r[text_field]) for r in rows if r.get(text_field)]
    else:
        texts = [path.read_text(encoding="utf-8", errors="replace")]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UserError(f"{path} holds no text to compute perplexity on")
    return texts


# ---------------------------------------------------------------------------- comparison


def compare_to_baseline(
    result: dict, baseline: str, bootstrap: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict:
    """Paired bootstrap of (this run - baseline run) on the items both scored."""
    from oficina.workspace import run_dir

    d = run_dir(baseline)
    pred_file = d / "predictions.jsonl"
    if not pred_file.is_file():
        raise UserError(f"{d} is not an eval run folder (no predictions.jsonl)")
    base_rows, _ = read_jsonl(pred_file)
    base = {str(r["id"]): r for r in base_rows if "id" in r}
    mine = {str(r["id"]): r for r in result["_predictions"]}
    ids = [i for i in mine if i in base]
    if not ids:
        raise UserError(f"baseline {d.name} shares no item ids with this evaluation")
    out: dict = {"baseline": str(d), "items": len(ids)}
    names = [k for k in ("correct", "exact_match", "token_f1", "rouge_l") if k in mine[ids[0]]]
    for name in names:
        if name not in base[ids[0]]:
            continue
        a = [float(mine[i][name]) for i in ids]
        b = [float(base[i][name]) for i in ids]
        key = "accuracy" if name == "correct" else name
        out[key] = M.paired_bootstrap(a, b, n=bootstrap, alpha=alpha, seed=seed)
    if result["task"]["type"] == "classification" and "prediction" in base[ids[0]]:
        stat = M.macro_f1_stat(result["task"].get("labels"))
        a = [(mine[i]["prediction"], mine[i]["gold"]) for i in ids]
        b = [(base[i]["prediction"], base[i]["gold"]) for i in ids]
        out["macro_f1"] = M.paired_bootstrap(a, b, stat, n=bootstrap, alpha=alpha, seed=seed)
    return out


# ---------------------------------------------------------------------------- head adapters


def head_adapter(adapter: str | None) -> Path | None:
    """The folder of a classification-head LoRA adapter (PEFT ``SEQ_CLS``), else None.

    Such an adapter was trained to feed its head, not the language model, so ``eval`` runs the
    head (what ``oficina finetune --task classification`` and ``oficina tune`` scored); the
    generation paths (generate, serve, batch) refuse it."""
    if not adapter:
        return None
    from peft import PeftConfig

    from oficina.models.safety import check_adapter_dir, load_errors

    adir = check_adapter_dir(adapter)
    with load_errors(adir, "adapter"):
        pcfg = PeftConfig.from_pretrained(str(adir))
    return adir if pcfg.task_type == "SEQ_CLS" else None


@dataclass
class HeadModel:
    """A base model with a classification head and its LoRA adapter, ready to score rows."""

    model: object
    tokenizer: object
    labels: list[str]  # the head's classes, in its output order
    max_len: int  # texts are truncated as in training
    path: Path


def load_head(spec: str, adir: Path, dtype: str, max_len: int | None) -> HeadModel:
    """The base ``spec`` with the head and adapter of ``adir`` (its labels and training
    truncation from the head_config.json that ``finetune`` wrote beside it)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from oficina.models.safety import check_model_dir, load_errors
    from oficina.models.sources import resolve
    from oficina.train.recipes import _head_kwargs, _hf_quiet, head_max_len

    kwargs = _head_kwargs(adir)
    if kwargs.get("problem_type") == "regression" or int(kwargs.get("num_labels", 0)) < 2:
        raise UserError(f"{adir} is a regression head: eval scores classification heads only")
    base = resolve(spec)
    check_model_dir(base)
    src = adir if (adir / "tokenizer_config.json").is_file() else base
    with load_errors(adir, "adapter"):
        tok = AutoTokenizer.from_pretrained(src)  # the adapter's copy, as finetune saved it
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "right"
        torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        # The base has no head: transformers reports it MISSING, then the adapter supplies it.
        with _hf_quiet(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # peft reading transformers
            model = AutoModelForSequenceClassification.from_pretrained(
                base, use_safetensors=True, dtype=torch_dtype, **kwargs
            )
            model = PeftModel.from_pretrained(model, str(adir)).eval()
    id2label = {int(k): str(v) for k, v in kwargs["id2label"].items()}
    labels = [id2label[i] for i in range(len(id2label))]
    return HeadModel(model, tok, labels, max_len or head_max_len(adir) or 512, base)


def classify_head(head: HeadModel, task: Task, cfg: EvalConfig) -> dict:
    """Score a classification task through the head: predictions, accuracy and macro-F1 with
    bootstrap intervals, and timing, in the shape ``tasks.classify`` returns. The head's
    predictions come from ``tune.head_predictions``, the same call that scored the trials."""
    from oficina.evals.tune import head_predictions
    from oficina.train.data import eval_batches, load_jsonl_dataset

    unknown = sorted({str(r[task.label_field]) for r in task.rows} - set(head.labels))
    if unknown:
        raise UserError(
            f"the task's label(s) {unknown} are not classes of this head ({', '.join(head.labels)})"
        )
    rows = [{"text": str(r.get(task.text_field) or ""), "label": str(r[task.label_field])}
            for r in task.rows]  # fmt: skip
    ds = load_jsonl_dataset(
        rows, head.tokenizer, head.max_len, "classification", label_names=head.labels
    )
    if len(ds) != len(rows):  # an empty text: no input to classify
        raise UserError(f"{len(rows) - len(ds)} item(s) have no {task.text_field!r} text")
    t0 = time.perf_counter()
    pred_ids, gold_ids, logp = head_predictions(head.model, eval_batches(ds, cfg.batch_size, None))
    wall = time.perf_counter() - t0
    preds = [head.labels[i] for i in pred_ids]
    golds = [head.labels[i] for i in gold_ids]
    labels = list(dict.fromkeys([*task.labels, *head.labels]))  # the task's order first
    col = [head.labels.index(lab) for lab in labels]
    scores = [[row[j] for j in col] for row in logp]  # log-probabilities in ``labels`` order
    per_item = [float(p == g) for p, g in zip(preds, golds, strict=True)]
    common = dict(n=cfg.bootstrap, alpha=cfg.alpha, seed=cfg.seed)
    acc = M.with_ci(per_item, **common)
    pairs = list(zip(preds, golds, strict=True))
    f1 = M.with_ci(pairs, M.macro_f1_stat(labels), **common)
    n_tok = [len(e.ids) for e in ds.examples]
    n = len(rows)
    return {
        "ids": [r.get("id", k) for k, r in enumerate(task.rows)],
        "predictions": preds,
        "golds": golds,
        "per_item": per_item,
        "scores": scores,
        "accuracy": acc["value"],
        "macro_f1": f1["value"],
        "ci": {"accuracy": acc["ci"], "macro_f1": f1["ci"]},
        "labels": labels,
        "per_label_f1": M.per_label_f1(preds, golds, labels),
        "confusion": M.confusion(preds, golds, labels),
        "n": n,
        "prompt_tokens": {"mean": sum(n_tok) / n, "max": max(n_tok), "total": sum(n_tok)},
        "prompt_tokens_per_item": n_tok,
        "truncated_prompts": ds.truncated,
        "timing": {
            "wall_s": wall,
            "latency_s_per_item": wall / n,
            "items_per_s": n / max(wall, 1e-9),
            "prompt_tokens_per_s": sum(n_tok) / max(wall, 1e-9),
            "batch_size": cfg.batch_size,
        },
    }


# ---------------------------------------------------------------------------- the verb


def _fewshot(cfg: EvalConfig, task: Task):
    if cfg.fewshot == 0:
        return None
    if cfg.fewshot_split == cfg.split:
        raise UserError("few-shot examples must come from another split than the one evaluated")
    f = task.split_files.get(cfg.fewshot_split)
    if f is None:
        raise UserError(f"task has no '{cfg.fewshot_split}' split to draw few-shot examples from")
    pool, _ = read_jsonl(f, "few-shot split")
    if not pool:
        raise UserError(f"few-shot split {f} is empty")
    from oficina.infer.prompting import example_text, select_examples

    key = task.text_field if task.text_field in pool[0] else None
    if cfg.fewshot_strategy in ("fixed", "random"):
        return select_examples(pool, "", cfg.fewshot, cfg.fewshot_strategy, seed=cfg.seed, key=key)
    from oficina.models.embed import Embedder

    embedder = _MemoEmbedder(Embedder())  # the pool is embedded once, not once per query
    return lambda row: select_examples(
        pool, example_text(row, key), cfg.fewshot, "similar", seed=cfg.seed, embedder=embedder,
        key=key,
    )  # fmt: skip


class _MemoEmbedder:
    """An embedder that remembers each text's vector (few-shot selection re-asks for the pool)."""

    def __init__(self, inner):
        self.inner, self.memo = inner, {}

    def encode(self, texts, normalize=True):
        import numpy as np

        missing = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if missing:
            vecs = self.inner.encode(missing, normalize=normalize)
            self.memo.update(zip(missing, vecs, strict=True))
        return np.stack([self.memo[t] for t in texts])


def evaluate(
    cfg: EvalConfig, engine, task: Task, texts: list[str] | None, head: HeadModel | None = None
) -> dict:
    """Run the task (and perplexity) on a loaded engine, or a classification task through a
    trained ``head`` (then ``engine`` is None); returns the full result dict."""
    common = dict(
        batch_size=cfg.batch_size, bootstrap=cfg.bootstrap, alpha=cfg.alpha, seed=cfg.seed
    )
    shots = _fewshot(cfg, task)
    rows = task.rows
    res: dict | None = None
    if task.type == "classification":
        if head is not None:
            res = classify_head(head, task, cfg)
        else:
            res = T.classify(
                engine, rows, task.labels, task.template, shots,
                text_field=task.text_field, label_field=task.label_field, normalize=cfg.normalize,
                **common,
            )  # fmt: skip
        metrics = {k: {"value": res[k], "ci": res["ci"][k]} for k in ("accuracy", "macro_f1")}
        preds = [
            {"id": i, "prediction": p, "gold": g, "correct": c, "prompt_tokens": n, "scores": s}
            for i, p, g, c, n, s in zip(
                res["ids"], res["predictions"], res["golds"], res["per_item"],
                res["prompt_tokens_per_item"], res["scores"], strict=True,
            )
        ]  # fmt: skip
    elif task.type == "multiple_choice":
        res = T.multiple_choice(
            engine, rows, task.template, shots, choices_field=task.choices_field,
            answer_field=task.answer_field, text_field=task.text_field, normalize=cfg.normalize,
            **common,
        )  # fmt: skip
        metrics = {
            k: {"value": res[k], "ci": res["ci"][k]} for k in ("accuracy", "acc", "acc_norm")
        }
        preds = [
            {"id": i, "prediction": p, "gold": g, "correct": c, "prompt_tokens": n, "scores": s}
            for i, p, g, c, n, s in zip(
                res["ids"], res["predictions"], res["golds"], res["per_item"],
                res["prompt_tokens_per_item"], res["scores"], strict=True,
            )
        ]  # fmt: skip
    elif task.type == "generation":
        res = T.generate_task(
            engine, rows, task.template, shots, prompt_field=task.prompt_field,
            reference_field=task.answer_field, text_field=task.text_field,
            max_new_tokens=cfg.max_new_tokens, stop=task.stop, chat=cfg.chat, **common,
        )  # fmt: skip
        metrics = {
            k: {"value": res[k], "ci": res["ci"][k]} for k in ("exact_match", "token_f1", "rouge_l")
        }
        s = res["per_item_scores"]
        preds = [
            {"id": i, "prediction": p, "references": r, "exact_match": em, "token_f1": f1,
             "rouge_l": rl, "prompt_tokens": n}
            for i, p, r, em, f1, rl, n in zip(
                res["ids"], res["predictions"], res["references"], s["exact_match"],
                s["token_f1"], s["rouge_l"], res["prompt_tokens_per_item"], strict=True,
            )
        ]  # fmt: skip
    else:
        metrics, preds = {}, []
    ppl = None
    if texts:
        ppl = T.perplexity_details(
            engine, texts, max_length=cfg.window, bootstrap=cfg.bootstrap, alpha=cfg.alpha,
            seed=cfg.seed,
        )  # fmt: skip
        metrics["perplexity"] = {"value": ppl["perplexity"], "ci": ppl["ci"]["perplexity"]}
        metrics["bits_per_byte"] = {"value": ppl["bits_per_byte"], "ci": ppl["ci"]["bits_per_byte"]}
    inference: dict = {}
    if res is not None:
        tm = res["timing"]
        inference.update(
            items=res["n"],
            wall_s=tm["wall_s"],
            latency_s_per_item=tm["latency_s_per_item"],
            items_per_s=tm["items_per_s"],
            prompt_tokens_mean=res["prompt_tokens"]["mean"],
            prompt_tokens_max=res["prompt_tokens"]["max"],
            prompt_tokens_per_s=tm["prompt_tokens_per_s"],
            batch_size=tm["batch_size"],
        )
        if "generated_tokens_per_s" in tm:
            inference["generated_tokens"] = tm["generated_tokens"]
            inference["generated_tokens_per_s"] = tm["generated_tokens_per_s"]
        if res.get("truncated_prompts"):
            inference["truncated_prompts"] = res["truncated_prompts"]
    if ppl is not None:
        inference["perplexity_tokens_per_s"] = ppl["timing"]["tokens_per_s"]
    details = {
        k: v
        for k, v in (res or {}).items()
        if k in ("per_label_f1", "confusion", "labels", "normalize", "truncated_prompts")
    }
    if ppl is not None:
        details["perplexity"] = {
            k: ppl[k]
            for k in ("nll_per_token", "tokens", "bytes", "texts", "window", "stride", "windows")
        }
    return {
        "metrics": metrics,
        "inference": inference,
        "details": details,
        "fewshot": cfg.fewshot,
        "_predictions": preds,
    }


def _fmt_metric(name: str, m: dict) -> str:
    v, (lo, hi) = m["value"], m["ci"]
    f = "{:.2f}" if name == "perplexity" else "{:.3f}"
    return f"{name:>14}  {f.format(v)}  [{f.format(lo)}, {f.format(hi)}]"


def _print(out: dict, cfg: EvalConfig) -> None:
    t, inf = out["task"], out["inference"]
    pct = int(round((1 - cfg.alpha) * 100))
    print(
        f"model {out['model']['spec']}"
        + (f" + adapter {out['model']['adapter']}" if out["model"]["adapter"] else "")
        + (" (its classification head)" if out["model"].get("head") else "")
        + f"  ({out['model']['params']:,} params, {out['model']['dtype']})"
    )
    print(
        f"task  {t['name']} [{t['type']}], split {t['split']}: {t['items']} items"
        + (f" ({t['skipped']} malformed set aside)" if t["skipped"] else "")
        + (f", {cfg.fewshot}-shot" if cfg.fewshot else "")
    )
    print(f"{'metric':>14}  value  [{pct}% bootstrap interval]")
    for name, m in out["metrics"].items():
        print(_fmt_metric(name, m))
    parts = []
    if "latency_s_per_item" in inf:
        parts.append(f"{inf['latency_s_per_item'] * 1000:.0f} ms/item")
        parts.append(f"{inf['prompt_tokens_mean']:.0f} prompt tokens/item")
        parts.append(f"{inf['prompt_tokens_per_s']:.0f} prompt tok/s")
    if "generated_tokens_per_s" in inf:
        parts.append(f"{inf['generated_tokens_per_s']:.1f} generated tok/s")
    if "perplexity_tokens_per_s" in inf:
        parts.append(f"perplexity {inf['perplexity_tokens_per_s']:.0f} tok/s")
    parts.append(f"peak RSS {inf['peak_rss_mb']:,.0f} MB ({inf['memory_method']})")
    print("cost  " + ", ".join(parts))
    for name, c in (out.get("comparison") or {}).items():
        if isinstance(c, dict) and "diff" in c:
            lo, hi = c["ci"]
            verdict = "different" if c["distinguishable"] else "cannot tell apart"
            print(
                f"vs baseline {name}: {c['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                f"p={c['p_value']:.3f} -> {verdict}"
            )
    print(f"run   {out['run_dir']}")


def run(cfg: EvalConfig) -> int:
    from oficina.infer.engine import Engine
    from oficina.workspace import atomic_write_json, atomic_write_text, start_run

    t_start = time.perf_counter()
    mem = start_span()
    rss_start = current_mb()
    task = load_task(cfg.task, cfg.split)
    task.rows = sample(task.rows, cfg.limit, cfg.seed)
    if cfg.adapter and not Path(cfg.adapter).expanduser().is_dir():
        raise NotFound(f"adapter folder not found: {cfg.adapter}")
    head_dir = head_adapter(cfg.adapter)
    if head_dir is not None:
        if task.type != "classification":
            raise UserError(
                f"{cfg.adapter} is a classification-head adapter: it scores classification "
                f"tasks, not this {task.type} task",
                exit_code=2,
            )
        if cfg.fewshot:
            raise UserError(
                "a classification head reads the text alone: drop --fewshot", exit_code=2
            )
        if cfg.perplexity not in ("task", "off", "none", ""):
            raise UserError(
                "a classification-head adapter has no language-model output to compute "
                "perplexity with: drop --perplexity",
                exit_code=2,
            )
    if cfg.chat and task.type != "generation":
        raise UserError(
            f"--chat asks generation tasks in chat turns; this task is {task.type}: drop --chat",
            exit_code=2,
        )
    texts: list[str] | None = None
    if head_dir is None:  # a head has no language-model output to score text with
        if cfg.perplexity == "task":
            texts = [str(r[task.text_field]) for r in task.rows if r.get(task.text_field)]
            texts = texts or None  # a task without texts simply has no perplexity
        elif cfg.perplexity not in ("off", "none", ""):
            texts = sample(read_texts(Path(cfg.perplexity).expanduser()), cfg.limit, cfg.seed)
    if task.type == "perplexity" and not texts:
        raise UserError("a perplexity task needs texts; do not pass --perplexity off")

    with start_run("eval", cfg) as run:
        from oficina.models.sources import resolve

        run.add_input("model", resolve(cfg.model))
        if cfg.adapter:
            run.add_input("adapter", cfg.adapter)
        if task.path:
            run.add_input("task", task.path)
        if cfg.perplexity not in ("task", "off", "none", ""):
            run.add_input("perplexity_text", cfg.perplexity)
        t0 = time.perf_counter()
        engine = head = None
        if head_dir is not None:
            from oficina.infer.engine import model_hash_for

            head = load_head(cfg.model, head_dir, cfg.dtype, cfg.max_len)
            model, path = head.model, head.path
            model_hash = model_hash_for(head.path, head_dir, cfg.dtype)
        else:
            engine = Engine.from_spec(cfg.model, dtype=cfg.dtype, adapter=cfg.adapter)
            model, path, model_hash = engine.model, engine.path, engine.model_hash
        load_s = time.perf_counter() - t0
        rss_loaded = current_mb()
        params = param_counts(model)[0]
        weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20

        res = evaluate(cfg, engine, task, texts, head)
        preds = res.pop("_predictions")
        res["inference"].update(
            load_s=load_s,
            total_wall_s=time.perf_counter() - t_start,
            peak_rss_mb=mem.stop().peak_mb,
            rss_before_load_mb=rss_start,
            rss_after_load_mb=rss_loaded,
            weights_mb=weights_mb,
            memory_method=mem.method,
            threads=_threads(),
        )
        out = {
            "model": {
                "spec": cfg.model,
                "path": str(path) if path else None,
                "adapter": cfg.adapter,
                "head": head is not None,
                "params": params,
                "dtype": cfg.dtype,
                "model_hash": model_hash,
            },
            "task": {
                "name": task.name,
                "type": task.type,
                "file": str(task.path) if task.path else None,
                "split": cfg.split,
                "items": len(task.rows),
                "skipped": task.skipped,
                "labels": task.labels or None,
                "template": task.template,
                "limit": cfg.limit,
            },
            "alpha": cfg.alpha,
            "bootstrap": cfg.bootstrap,
            "seed": cfg.seed,
            **res,
        }
        if cfg.baseline:
            out["comparison"] = compare_to_baseline(
                {**out, "_predictions": preds}, cfg.baseline, cfg.bootstrap, cfg.alpha, cfg.seed
            )
        out["run_id"], out["run_dir"] = run.id, str(run.dir)
        atomic_write_text(
            run.dir / "predictions.jsonl",
            "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds),
        )
        atomic_write_json(run.dir / "metrics.json", out)
        run.add_output("metrics", run.dir / "metrics.json")
        run.add_output("predictions", run.dir / "predictions.jsonl")
        flat = {}
        for name, m in out["metrics"].items():
            flat[name] = m["value"]
            flat[f"{name}_ci_lo"], flat[f"{name}_ci_hi"] = m["ci"]
        for k in ("latency_s_per_item", "prompt_tokens_mean", "prompt_tokens_per_s",
                  "generated_tokens_per_s", "peak_rss_mb"):  # fmt: skip
            if k in out["inference"]:
                flat[k] = out["inference"][k]
        flat["params"] = params
        flat["items"] = len(task.rows)
        run.log(flat)
        run.summary.update(flat)

    if cfg.json_:
        print(json.dumps(out, indent=2, default=float))
    else:
        _print(out, cfg)
    return 0


def _threads() -> int:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:  # pragma: no cover
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------- lm-evaluation-harness

LM_EVAL_TASK = "oficina_pyref_section"
LM_EVAL_DATA_PLACEHOLDER = "__ABSOLUTE_PATH_OF_pyref_section.jsonl__"


def build_lm_eval_example(out: Path, task_json: Path | None = None, split: str = "test") -> Path:
    """Write the demo domain as an lm-evaluation-harness task: ``pyref_section.yaml`` + JSONL.

    A multiple-choice task scored by log-likelihood: the same prompt template and labels as
    ``oficina eval`` uses, so both tools must pick the same answers for the same model. The
    YAML's data path is a placeholder (paths differ by machine): ``lm_eval_task_dir`` writes a
    runnable copy with the absolute path filled in.
    """
    import yaml

    task = load_task(str(task_json) if task_json else None, split)
    if task.type != "classification":
        raise UserError("the lm-eval example is built from a classification task")
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "id": r.get("id", k),
                task.text_field: r[task.text_field],
                "label": str(r[task.label_field]),
                "gold": task.labels.index(str(r[task.label_field])),
            },
            ensure_ascii=False,
        )
        for k, r in enumerate(task.rows)
    ]
    from oficina.workspace import atomic_write_text

    atomic_write_text(out / "pyref_section.jsonl", "\n".join(lines) + "\n")
    # str.format {text} -> Jinja {{text}}; the template has no other braces.
    jinja = re.sub(r"\{(\w+)\}", r"{{\1}}", task.template or "")
    spec = {
        "task": LM_EVAL_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": LM_EVAL_DATA_PLACEHOLDER}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": jinja,
        "doc_to_choice": task.labels,
        "doc_to_target": "{{gold}}",
        "target_delimiter": " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }
    header = (
        "# lm-evaluation-harness task: Oficina's demo domain (which part of the Python reference\n"
        "# is this passage from?) as multiple choice by log-likelihood. Built by\n"
        "#   python -m oficina.evals.evaluate lm-eval-example examples/lm_eval\n"
        "# Run it with a copy whose data path is absolute (paths differ by machine):\n"
        "#   python examples/lm_eval/prepare.py /tmp/lm_eval_task   (prints the lm_eval command)\n"
    )

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper, s):  # multi-line strings as literal blocks: the prompt reads as it is
        style = "|" if "\n" in s else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)

    _Dumper.add_representer(str, _str)
    body = yaml.dump(spec, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
    if yaml.safe_load(body) != spec:  # pragma: no cover - the literal block must round-trip
        body = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=1000)
    atomic_write_text(out / "pyref_section.yaml", header + body)
    return out


def lm_eval_task_dir(dest: Path, source: Path | None = None, data: Path | None = None) -> Path:
    """A runnable copy of the example task in ``dest`` (for ``--include_path dest``), its data
    path made absolute. ``source`` defaults to the repository's examples/lm_eval; ``data`` to
    the JSONL beside the YAML (pass another file of the same fields to score other items)."""
    src = source or Path(__file__).resolve().parents[3] / "examples" / "lm_eval"
    yaml_src = src / "pyref_section.yaml"
    data = Path(data or src / "pyref_section.jsonl").resolve()
    if not yaml_src.is_file() or not data.is_file():
        raise UserError(f"no lm-eval example task in {src} (pyref_section.yaml + .jsonl)")
    dest.mkdir(parents=True, exist_ok=True)
    text = yaml_src.read_text(encoding="utf-8").replace(LM_EVAL_DATA_PLACEHOLDER, str(data))
    (dest / "pyref_section.yaml").write_text(text, encoding="utf-8")
    return dest


if __name__ == "__main__":  # python -m oficina.evals.evaluate lm-eval-example OUT_DIR
    if len(sys.argv) == 3 and sys.argv[1] == "lm-eval-example":
        print(build_lm_eval_example(Path(sys.argv[2])))
    else:
        print("usage: python -m oficina.evals.evaluate lm-eval-example OUT_DIR", file=sys.stderr)
        sys.exit(2)
