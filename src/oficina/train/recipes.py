"""Training recipes: the verbs ``pretrain``, ``finetune``, ``distill`` and ``merge``.

Each recipe builds a model, an objective and data, then calls the one loop
(``oficina.train.loop.fit``) inside a recorded run, saves a plain Hugging Face directory (or a
PEFT adapter directory) and returns the summary dict the ladder reads::

    oficina pretrain --model mini --data shards/ --out runs/mini-pre --max-steps 300
    oficina pretrain --init smollm2-135m-instruct --data shards/ --out cpt/    # continue
    oficina finetune smollm2-135m-instruct --method lora --data sft.jsonl --out lora/
    oficina finetune smollm2-135m-instruct --task classification --data task/train.jsonl --out clf/
    oficina distill --teacher smollm2-135m-instruct --student mini --data shards/ --out student/
    oficina merge lora/ --out merged/
    torchrun --standalone --nproc_per_node=2 -m oficina.cli pretrain ...   # DDP on gloo

``--resume`` on any training verb continues from ``<out>/checkpoints`` exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import warnings
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from oficina.config import Section, VerbConfig
from oficina.errors import UserError
from oficina.measure import MemorySpan, param_counts, start_span
from oficina.train.checkpoint import unwrap
from oficina.train.data import JsonlDataset, PackedDataset, load_jsonl_dataset, read_pack_meta
from oficina.train.loop import FitHooks, NullRun, TrainArgs, dist_env, fit
from oficina.train.objectives import KD, SFT, CausalLM, Classification, Regression, check_same_vocab
from oficina.workspace import staged_dir


class LoraArgs(Section):
    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="module names that get adapters",
    )


class PretrainConfig(VerbConfig):
    """Pretrain a preset from random weights on packed shards, or continue pretraining a model
    (``--init MODEL``, or a model spec as ``--model``). The output is a Hugging Face directory."""

    model: str = Field("mini", description="preset (tiny|mini|small) or a model spec to continue")
    init: str | None = Field(None, description="continue pretraining this model (spec or dir)")
    data: str = Field(description="packed-shard directory (oficina data pack)")
    out: str = Field(description="output directory (Hugging Face format)")
    max_steps: int = Field(200, ge=1, description="optimizer steps")
    seq_len: int | None = Field(None, ge=8, description="train on shorter windows than packed")
    dropout: float = Field(0.0, ge=0, lt=1, description="attention dropout (presets)")
    resume: bool = Field(False, description="continue from <out>/checkpoints")
    train: TrainArgs = Field(default_factory=lambda: TrainArgs(lr=1e-3, eval_every=50))


class FinetuneConfig(VerbConfig):
    """Supervised fine-tuning, full or LoRA (PEFT), or a classification/regression head.

    Data: JSONL of {prompt, completion} or {messages} (loss on the response only), or
    {text, label} — a head by default, or SFT when ``--template`` renders the prompt
    (the completion is then " " + label)."""

    positionals = ("model",)
    model: str = Field(description="base model spec")
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapters or all weights")
    task: Literal["auto", "sft", "classification", "regression"] = Field(
        "auto", description="what to train; auto reads it from the data's fields"
    )
    data: str = Field(description="training JSONL")
    val_data: str | None = Field(None, description="validation JSONL (default: hold out some)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held out when no --val-data")
    template: str | None = Field(None, description="prompt format for {text,label} rows")
    labels: list[str] | None = Field(None, description="class names in order (default sorted)")
    out: str = Field(description="output directory (HF model, or PEFT adapter for LoRA)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (default: epochs)")
    epochs: float = Field(1.0, gt=0, description="passes over the data when max_steps is unset")
    max_len: int = Field(512, ge=8, description="truncate examples to this many tokens")
    dropout: float = Field(0.0, ge=0, lt=1, description="attention dropout (full fine-tuning)")
    lora: LoraArgs = Field(default_factory=LoraArgs)
    resume: bool = Field(False, description="continue from <out>/checkpoints")
    train: TrainArgs = Field(
        default_factory=lambda: TrainArgs(
            lr=2e-4, warmup_steps=10, eval_every=20, weight_decay=0.0, batch_size=4
        )
    )


class DistillConfig(VerbConfig):
    """Knowledge distillation from a teacher into a smaller student with the same vocabulary
    (``--method logits``: forward KL at a temperature mixed with cross-entropy), or from the
    teacher's generations (``--method sequence``: any tokenizer). ``--train.alpha 0`` trains
    the same student on the same data without the teacher: the control."""

    teacher: str = Field(description="teacher model spec")
    student: str = Field("mini", description="student: preset (same tokenizer) or model spec")
    keep_layers: int | None = Field(
        None, ge=1, description="student = the teacher with this many evenly spaced layers"
    )
    method: Literal["logits", "sequence"] = Field("logits", description="token-level or sequence")
    data: str = Field(description="packed-shard dir or JSONL (prompts for --method sequence)")
    val_data: str | None = Field(None, description="validation JSONL (JSONL data only)")
    template: str | None = Field(None, description="prompt format for {text,label} rows")
    out: str = Field(description="output directory (Hugging Face format)")
    max_steps: int = Field(200, ge=1, description="optimizer steps")
    temperature: float = Field(2.0, gt=0, description="softening temperature T")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the KL term (0 = no teacher)")
    max_len: int = Field(512, ge=8, description="truncate JSONL examples to this many tokens")
    seq_len: int | None = Field(None, ge=8, description="window length for packed data")
    max_new_tokens: int = Field(64, ge=1, description="teacher generation length (sequence)")
    resume: bool = Field(False, description="continue from <out>/checkpoints")
    train: TrainArgs = Field(default_factory=lambda: TrainArgs(lr=1e-3, eval_every=50))


class MergeConfig(VerbConfig):
    """Fold a LoRA adapter into its base model and save a plain Hugging Face directory."""

    positionals = ("adapter",)
    adapter: str = Field(description="PEFT adapter directory")
    out: str = Field(description="output directory")


# ---------------------------------------------------------------------------- helpers


# What a training verb returns to Python callers (the ladder, tune, tests): out, parameters,
# tokens, wall time, FLOPs, peak memory, losses. The CLI entries below return exit codes.
Summary = dict


def _start_run(verb: str, cfg):
    """The recorded run on rank 0; a stand-in elsewhere (one record per job, not per rank)."""
    from contextlib import nullcontext

    from oficina.workspace import start_run

    rank, _ = dist_env()
    return start_run(verb, cfg) if rank == 0 else nullcontext(NullRun())


def _flops_per_token(config, seq_len: int, full: bool) -> float:
    """6N + 12·L·d·s for full training (PaLM's count; N = non-embedding + output head);
    4N + 8·L·d·s when the base is frozen (no weight gradients, only activation gradients)."""
    d, L = config.hidden_size, config.num_hidden_layers
    inter = getattr(config, "intermediate_size", 4 * d)
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads) or heads
    hd = getattr(config, "head_dim", None) or d // heads
    per_layer = d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * inter
    n = L * per_layer + config.vocab_size * d
    k = 6 if full else 4
    return k * n + 2 * k * L * d * seq_len


def _save_hf(model, tokenizer, out: Path, rank: int, world: int) -> None:
    """save_pretrained on rank 0 (gathering FSDP shards first: a collective on every rank)."""
    m = unwrap(model)
    state = None
    if world > 1 and any(type(p).__name__ == "DTensor" for p in m.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(
            m, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    if rank == 0:
        with staged_dir(out) as stage:  # a full disk mid-save leaves no half model in out
            if state is not None:
                m.save_pretrained(stage, state_dict=state, safe_serialization=True)
            else:
                m.save_pretrained(stage, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(stage)
    if world > 1:
        torch.distributed.barrier()


def _summary(run, cfg_out: str, model, result, flops_per_token: float, mem: MemorySpan) -> Summary:
    total, trainable = param_counts(model)
    mem.stop()  # this verb's own peak: a ladder or a test running several verbs in one process
    # must not see the peak of an earlier one
    s = Summary(
        {
            "out": str(Path(cfg_out).resolve()),
            "params_total": total,
            "params_trainable": trainable,
            "train_tokens": result.train_tokens,
            "wall_time_s": round(mem.wall_s, 2),
            "flops": float(flops_per_token * result.train_tokens),
            "peak_memory_mb": round(mem.peak_mb, 1),
            "tokens_per_s": round(result.tokens_per_s, 1),
            "best_val_loss": result.best_val_loss,
            "steps": result.steps,
            "max_steps": result.max_steps,
            "run_id": str(run.id) if run.id else "",
            "best_step": result.best_step,
            "final_train_loss": result.final_train_loss,
            "stopped": result.stopped,
            "overfit_warnings": len(result.overfit_warnings),
            # The curves, for callers that plot or judge them (the ladder): (step, loss) pairs.
            "loss_curve": [[int(k), float(v)] for k, v in result.history],
            "val_curve": [[int(k), float(v)] for k, v in result.val_history],
            "cooldown": result.cooldown,
            # What picked the best weights: the loss, or a caller's metric (its value for the
            # weights returned, and its curve).
            "select_by": result.select_by,
            "best_val_metric": result.best_metric,
            "select_curve": [[int(k), float(v)] for k, v in result.select_history],
            # The validation hook's per-row answers at each validation (FitHooks), if any.
            "val_answers": [[int(k), a] for k, a in result.val_answers],
        }
    )
    # The run's record keeps the figures; its curves are already in its metrics.jsonl.
    run.summary.update(
        {k: v for k, v in s.items() if not k.endswith("_curve") and k != "val_answers"}
    )
    rank, _ = dist_env()
    best = "-" if s["best_val_loss"] is None else f"{s['best_val_loss']:.4f}"
    if rank == 0:
        print(
            f"done: {s['steps']} steps, {s['train_tokens']:,} tokens at {s['tokens_per_s']:,.0f} "
            f"tok/s, {s['wall_time_s']:.1f}s, peak memory {s['peak_memory_mb']:,.0f} MB, "
            f"params {total:,} ({trainable:,} trainable), best val loss "
            f"{best} -> {s['out']}"
        )
    return s


def _seeded(seed: int):
    torch.manual_seed(seed)


def _finish_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------- pretrain


def _preset_model(name: str, tokenizer, seq_len: int, dropout: float, seed: int, vocab: int):
    from transformers import AutoModelForCausalLM, GenerationConfig

    from oficina.models.presets import preset_config

    cfg = preset_config(
        name,
        vocab_size=vocab,
        max_position_embeddings=max(2048, seq_len),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=dropout,
    )
    _seeded(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def _load_lm(spec: str, dropout: float | None = None):
    from oficina.models.sources import load_causal_lm

    model, tok = load_causal_lm(spec)
    if dropout:
        model.config.attention_dropout = dropout
        for mod in model.modules():
            if hasattr(mod, "attention_dropout"):
                mod.attention_dropout = dropout
    tok.padding_side = "right"
    return model, tok


def _pack_tokenizer(meta: dict, fallback: str | None):
    from transformers import AutoTokenizer

    path = meta.get("tokenizer")
    if path and Path(path).is_dir():
        return AutoTokenizer.from_pretrained(path)
    if fallback:
        from oficina.models.sources import load_tokenizer

        return load_tokenizer(fallback)
    raise UserError(f"the shards' tokenizer {path!r} is not a directory here")


def pretrain(cfg: PretrainConfig, hooks: FitHooks | None = None) -> Summary:
    from oficina.models.presets import is_preset

    mem = start_span()
    rank, world = dist_env()
    meta = read_pack_meta(cfg.data)
    seq_len = cfg.seq_len or meta["seq_len"]
    if seq_len > meta["seq_len"]:
        raise UserError(
            f"--seq-len {seq_len} is longer than the packed windows ({meta['seq_len']})"
        )
    train_ds = PackedDataset(cfg.data, "train", seq_len)
    val_ds = (
        PackedDataset(cfg.data, "val", seq_len) if (Path(cfg.data) / "val.bin").is_file() else None
    )
    init = cfg.init or (None if is_preset(cfg.model) else cfg.model)
    with _start_run("pretrain", cfg) as run:
        if rank == 0:
            run.add_input("data", cfg.data)
        if init:
            model, tok = _load_lm(init, cfg.dropout)
            if meta["vocab_size"] > model.config.vocab_size:
                raise UserError(
                    f"the shards use a {meta['vocab_size']}-token vocabulary but {init} has "
                    f"{model.config.vocab_size} embeddings: pack with the model's tokenizer"
                )
            if rank == 0:
                run.add_input("init", init)
        else:
            tok = _pack_tokenizer(meta, "smollm2-135m-instruct")
            vocab = max(len(tok), meta["vocab_size"])
            model = _preset_model(cfg.model, tok, seq_len, cfg.dropout, cfg.train.seed, vocab)
            if rank == 0:
                run.add_input("preset", cfg.model)
        model.train()
        result = fit(
            model, CausalLM(), train_ds, val_ds, cfg.train, cfg.max_steps, cfg.out, run,
            cfg.resume, hooks=hooks,
        )  # fmt: skip
        out = Path(cfg.out)
        _save_hf(model, tok, out, rank, world)
        if rank == 0:
            run.add_output("model", out)
        summary = _summary(
            run, cfg.out, model, result, _flops_per_token(model.config, seq_len, True), mem
        )
    _finish_process_group()
    return summary


# ---------------------------------------------------------------------------- finetune


def _split(
    ds: JsonlDataset, fraction: float, seed: int
) -> tuple[JsonlDataset, JsonlDataset | None]:
    if fraction <= 0 or len(ds) < 10:
        return ds, None
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(ds))
    n_val = max(1, int(round(len(ds) * fraction)))
    pick = lambda idx: JsonlDataset(  # noqa: E731
        [ds.examples[int(i)] for i in idx], ds.task, ds.pad_id, label_names=ds.label_names
    )
    return pick(order[n_val:]), pick(order[:n_val])


@contextlib.contextmanager
def _hf_quiet():
    """transformers' logging at ERROR for the duration (its load reports go to stderr)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _apply_lora(model, args: LoraArgs, task_type: str):
    from peft import LoraConfig, get_peft_model

    present = {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [m for m in args.target_modules if m not in present]
    if missing:
        raise UserError(f"--lora.target-modules {missing} are not modules of this model")
    lcfg = LoraConfig(
        r=args.r,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=list(args.target_modules),
        task_type=task_type,
    )
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated alias; the warning is theirs, not the user's.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        return get_peft_model(model, lcfg)


def _max_steps(cfg_steps: int | None, epochs: float, n: int, args: TrainArgs, world: int) -> int:
    if cfg_steps:
        return cfg_steps
    per_step = args.batch_size * args.grad_accum * world
    return max(1, math.ceil(epochs * n / per_step))


def finetune(cfg: FinetuneConfig, hooks: FitHooks | None = None) -> Summary:
    from oficina.models.safety import check_model_dir
    from oficina.models.sources import load_tokenizer, resolve

    mem = start_span()
    rank, world = dist_env()
    base = resolve(cfg.model)
    check_model_dir(base)  # the classification head loads it directly, not via load_causal_lm
    tok = load_tokenizer(str(base))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    ds = load_jsonl_dataset(cfg.data, tok, cfg.max_len, cfg.task, cfg.template, cfg.labels)
    if cfg.val_data:
        val = load_jsonl_dataset(
            cfg.val_data, tok, cfg.max_len, ds.task, cfg.template, ds.label_names
        )
        train = ds
    else:
        train, val = _split(ds, cfg.val_fraction, cfg.train.seed)
    if rank == 0 and (ds.skipped or ds.truncated):
        print(
            f"data: {ds.skipped} malformed rows set aside, {ds.truncated} truncated to {cfg.max_len} tokens"
        )

    with _start_run("finetune", cfg) as run:
        if rank == 0:
            run.add_input("model", base)
            run.add_input("data", cfg.data)
        _seeded(cfg.train.seed)
        if ds.task == "sft":
            model, _ = _load_lm(str(base), cfg.dropout if cfg.method == "full" else None)
            objective = SFT()
            peft_task = "CAUSAL_LM"
        else:
            from transformers import AutoModelForSequenceClassification

            n_labels = 1 if ds.task == "regression" else len(ds.label_names)
            extra = (
                {
                    "id2label": dict(enumerate(ds.label_names)),
                    "label2id": {n: i for i, n in enumerate(ds.label_names)},
                }
                if ds.task == "classification"
                else {}
            )
            # transformers prints a load report naming the head as MISSING: a new head is what
            # a classifier fine-tune starts from, so the report is ours to say, in one line.
            with _hf_quiet():
                model = AutoModelForSequenceClassification.from_pretrained(
                    base,
                    num_labels=n_labels,
                    problem_type="regression"
                    if ds.task == "regression"
                    else "single_label_classification",
                    pad_token_id=tok.pad_token_id,
                    use_safetensors=True,
                    **extra,
                )
            if rank == 0:
                print(f"{ds.task} head: new, {n_labels} output(s), trained from scratch")
            objective = Classification() if ds.task == "classification" else Regression()
            peft_task = "SEQ_CLS"
        if cfg.method == "lora":
            model = _apply_lora(model, cfg.lora, peft_task)
        model.train()
        steps = _max_steps(cfg.max_steps, cfg.epochs, len(train), cfg.train, world)
        result = fit(
            model, objective, train, val, cfg.train, steps, cfg.out, run, cfg.resume, hooks=hooks
        )
        out = Path(cfg.out)
        _save_hf(model, tok, out, rank, world)  # PEFT models save an adapter directory
        if rank == 0:
            if cfg.method == "lora" and ds.task != "sft":
                _write_head_config(model, out, cfg.max_len)  # merge: shape, labels; eval: max_len
            run.add_output("adapter" if cfg.method == "lora" else "model", out)
        seq = max(len(e.ids) for e in train.examples)
        fpt = _flops_per_token(unwrap(model).config, seq, cfg.method == "full")
        summary = _summary(run, cfg.out, model, result, fpt, mem)
        summary.update(task=ds.task, method=cfg.method, skipped_rows=ds.skipped)
        run.summary.update(task=ds.task, method=cfg.method, skipped_rows=ds.skipped)
    _finish_process_group()
    return summary


# ---------------------------------------------------------------------------- distill


def student_from_teacher(teacher, keep: int):
    """A copy of the teacher keeping ``keep`` evenly spaced decoder layers (first and last kept)."""
    layers = teacher.model.layers
    n = len(layers)
    if keep >= n:
        raise UserError(f"--keep-layers {keep}: the teacher has only {n} layers")
    idx = sorted({round(i * (n - 1) / max(keep - 1, 1)) for i in range(keep)})
    student = copy.deepcopy(teacher)
    student.model.layers = torch.nn.ModuleList([student.model.layers[i] for i in idx])
    for new_i, layer in enumerate(student.model.layers):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_i
    student.config.num_hidden_layers = len(idx)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in idx]
    for p in student.parameters():
        p.requires_grad_(True)
    return student


def _teacher_generations(
    teacher, tok, ds_rows: list[dict], template: str | None, max_new: int, out: Path
) -> Path:
    """Sequence-level KD data: the teacher's greedy answers to each prompt, as SFT JSONL."""
    from tqdm import tqdm

    prompts = []
    for r in ds_rows:
        if "messages" in r:
            msgs = [m for m in r["messages"] if m.get("role") != "assistant"]
            prompts.append(
                tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            )
        elif template:
            prompts.append(template.format(**r))
        elif "prompt" in r:
            prompts.append(r["prompt"])
    if not prompts:
        raise UserError(
            "--method sequence needs rows with a prompt (prompt, messages or --template)"
        )
    tok.padding_side = "left"
    rows = []
    for i in tqdm(range(0, len(prompts), 8), desc="teacher generations"):
        chunk = prompts[i : i + 8]
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = teacher.generate(
                **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
            )
        for p, g in zip(chunk, gen[:, enc["input_ids"].shape[1] :], strict=True):
            rows.append({"prompt": p, "completion": tok.decode(g, skip_special_tokens=True)})
    tok.padding_side = "right"
    from oficina.workspace import atomic_write_text

    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return out


def distill(cfg: DistillConfig, hooks: FitHooks | None = None) -> Summary:
    from oficina.jsonl import read_jsonl
    from oficina.models.presets import is_preset

    mem = start_span()
    rank, world = dist_env()
    teacher, t_tok = _load_lm(cfg.teacher)
    packed = Path(cfg.data).is_dir()
    with _start_run("distill", cfg) as run:
        if rank == 0:
            run.add_input("teacher", cfg.teacher)
            run.add_input("data", cfg.data)
        # -- the student
        if cfg.keep_layers:
            student, s_tok = student_from_teacher(teacher, cfg.keep_layers), t_tok
        elif is_preset(cfg.student):
            s_tok = t_tok
            seq = cfg.seq_len or (read_pack_meta(cfg.data)["seq_len"] if packed else cfg.max_len)
            student = _preset_model(
                cfg.student, t_tok, seq, 0.0, cfg.train.seed, teacher.config.vocab_size
            )
        else:
            student, s_tok = _load_lm(cfg.student)
        # -- data and objective
        if cfg.method == "sequence":
            if packed:
                raise UserError("--method sequence needs a JSONL of prompts, not packed shards")
            rows, _bad = read_jsonl(cfg.data)
            gen_path = Path(run.dir or cfg.out) / "teacher_generations.jsonl"
            if rank == 0:
                _teacher_generations(
                    teacher, t_tok, rows, cfg.template, cfg.max_new_tokens, gen_path
                )
            if world > 1:
                torch.distributed.barrier()
            ds = load_jsonl_dataset(gen_path, s_tok, cfg.max_len, "sft")
            train, val = _split(ds, 0.1, cfg.train.seed)
            objective, eval_objective = SFT(), SFT()
            del teacher
        else:
            if packed:
                seq = cfg.seq_len or read_pack_meta(cfg.data)["seq_len"]
                train = PackedDataset(cfg.data, "train", seq)
                val = (
                    PackedDataset(cfg.data, "val", seq)
                    if (Path(cfg.data) / "val.bin").is_file()
                    else None
                )
            else:
                ds = load_jsonl_dataset(cfg.data, s_tok, cfg.max_len, "sft", cfg.template)
                if cfg.val_data:
                    train = ds
                    val = load_jsonl_dataset(cfg.val_data, s_tok, cfg.max_len, "sft", cfg.template)
                else:
                    train, val = _split(ds, 0.1, cfg.train.seed)
            if cfg.alpha > 0:
                check_same_vocab(t_tok, s_tok, teacher.config.vocab_size, student.config.vocab_size)
                objective = KD(teacher, cfg.temperature, cfg.alpha)
            else:
                objective = CausalLM()  # the control: same student, data and steps, no teacher
                del teacher
            eval_objective = CausalLM()
        student.train()
        result = fit(
            student,
            objective,
            train,
            val,
            cfg.train,
            cfg.max_steps,
            cfg.out,
            run,
            cfg.resume,
            eval_objective=eval_objective,
            hooks=hooks,
        )
        out = Path(cfg.out)
        _save_hf(student, s_tok, out, rank, world)
        if rank == 0:
            run.add_output("model", out)
        seq = (
            train.seq_len
            if isinstance(train, PackedDataset)
            else max(len(e.ids) for e in train.examples)
        )
        summary = _summary(
            run, cfg.out, student, result, _flops_per_token(student.config, seq, True), mem
        )
    _finish_process_group()
    return summary


# ---------------------------------------------------------------------------- merge


def merge(cfg: MergeConfig) -> Summary:
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from oficina.models.safety import check_adapter_dir, check_model_dir, load_errors
    from oficina.models.sources import resolve

    mem = start_span()
    adir = check_adapter_dir(cfg.adapter)
    with load_errors(adir, "adapter"):
        pcfg = PeftConfig.from_pretrained(str(adir))
    base = resolve(pcfg.base_model_name_or_path)
    check_model_dir(base)
    with _start_run("merge", cfg) as run:
        run.add_input("adapter", adir)
        run.add_input("base", base)
        with load_errors(adir, "adapter"):
            if pcfg.task_type == "SEQ_CLS":
                model = AutoModelForSequenceClassification.from_pretrained(
                    base, use_safetensors=True, **_head_kwargs(adir)
                )
            else:
                model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
            merged = PeftModel.from_pretrained(model, str(adir)).merge_and_unload()
        out = Path(cfg.out)
        merged.save_pretrained(out, safe_serialization=True)
        tok_src = adir if (adir / "tokenizer_config.json").is_file() else base
        AutoTokenizer.from_pretrained(tok_src).save_pretrained(out)
        run.add_output("model", out)
        total, _ = param_counts(merged)
        s = Summary(
            {
                "out": str(out.resolve()),
                "params_total": total,
                "params_trainable": 0,
                "wall_time_s": round(mem.stop().wall_s, 2),
                "peak_memory_mb": round(mem.peak_mb, 1),
                "run_id": run.id,
                "base": str(base),
            }
        )
        run.summary.update(s)
    print(f"merged {adir} into {base.name}: {total:,} parameters -> {out}")
    return s


# Kept in head_config.json beside the head's shape but not model-config fields: how its inputs
# were made (``oficina eval`` truncates a task's texts the same way).
HEAD_INPUT_KEYS = ("max_len",)


def _head_kwargs(adir: Path) -> dict:
    """num_labels/id2label of a classification adapter, read from the config saved beside it."""
    cfg_path = adir / "head_config.json"
    if cfg_path.is_file():
        data = json.loads(cfg_path.read_text())
        return {k: v for k, v in data.items() if k not in HEAD_INPUT_KEYS}
    raise UserError(f"{adir} has no head_config.json: cannot rebuild the classification head")


def head_max_len(adir: Path) -> int | None:
    """The token length a head adapter's texts were truncated to in training (None: not kept,
    an adapter saved before it was)."""
    cfg_path = adir / "head_config.json"
    return json.loads(cfg_path.read_text()).get("max_len") if cfg_path.is_file() else None


def _write_head_config(model, out: Path, max_len: int | None = None) -> None:
    conf = unwrap(model).config
    data = {"num_labels": conf.num_labels, "pad_token_id": conf.pad_token_id}
    if max_len is not None:
        data["max_len"] = max_len
    if getattr(conf, "problem_type", None):
        data["problem_type"] = conf.problem_type
    if conf.num_labels > 1:
        data["id2label"] = {int(k): v for k, v in conf.id2label.items()}
        data["label2id"] = dict(conf.label2id)
    from oficina.workspace import atomic_write_json

    atomic_write_json(out / "head_config.json", data)


# ---------------------------------------------------------------------------- the verbs
# The CLI's convention (cli.py): an entry takes the verb's config and returns the exit code.


def pretrain_verb(cfg: PretrainConfig) -> int:
    pretrain(cfg)
    return 0


def finetune_verb(cfg: FinetuneConfig) -> int:
    finetune(cfg)
    return 0


def distill_verb(cfg: DistillConfig) -> int:
    distill(cfg)
    return 0


def merge_verb(cfg: MergeConfig) -> int:
    merge(cfg)
    return 0
