"""The one training loop. Pretraining, continued pretraining, SFT, LoRA, classification heads and
distillation all run through ``fit``; what differs is the objective object and the data.

What it does, step by step: AdamW (fused on CPU; no weight decay on norms and biases) with
linear warm-up then cosine decay to ``min_lr_ratio * lr``; ``grad_accum`` micro-batches per
step; bf16 autocast (the fast path on CPUs with AMX; frozen linear weights — and a KD
teacher's, ``objective.frozen_models()`` — stored in bf16 for the run, ``train/frozen.py``) or
fp32; eager attention on short batches, SDPA on long ones (``train/attention.py``); gradient clipping; a NaN/inf loss or gradient stops the step *before* the optimizer
touches the weights; validation every
``eval_every`` steps with the best weights kept — lowest validation loss, or the highest value
of a metric the caller computes (``select_by``: the ladder picks classifiers by validation
accuracy) —, early stopping after ``patience`` evaluations
without an improvement of at least ``min_delta`` (relative) and a warning when validation loss
rises by more than ``min_delta`` while training loss falls; optionally (``cooldown_steps``) an
anneal of the best weights at the end, the rate falling linearly to 0, kept if validation falls;
atomic checkpoints every ``save_every`` steps that ``resume=True`` continues exactly; a
progress bar (loss, tokens/s, time left); metrics to the run folder (and TensorBoard/MLflow
with ``report_to``); a loss-curve PNG at the end. Causal-LM objectives take the chunked fused
output layer + cross-entropy of ``oficina.train.fused_ce`` when the model allows; with
``compile`` that path compiles the decoder stack and the loss's softmax kernel separately.

Under ``torchrun --nproc_per_node=N`` the same call uses DDP (gloo on CPU) or, with
``parallel: fsdp``, FSDP2 ``fully_shard`` on an explicit CPU mesh. Each rank reads its own
slice of every global batch, so N ranks × B rows train like 1 rank × N·B rows. Under FSDP the
checkpoints are sharded (``torch.distributed.checkpoint``: each rank writes its own slice of
the weights and AdamW moments) and ``resume`` continues them just as exactly.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from oficina.config import Section
from oficina.errors import UserError
from oficina.measure import auto_precision, emulated_bf16_note, param_counts
from oficina.train.attention import AttentionByLength
from oficina.train.checkpoint import Checkpointer, unwrap
from oficina.train.data import BatchStream, eval_batches
from oficina.train.frozen import FrozenCast
from oficina.train.fused_ce import COMPILE_KERNEL, causal_lm_parts, compile_decoder
from oficina.train.memory import keep_freed_memory


class TrainArgs(Section):
    """Hyperparameters and loop settings shared by every training verb (``--train.X``)."""

    lr: float = Field(3e-4, gt=0, description="peak learning rate (AdamW)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * this")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up steps")
    batch_size: int = Field(8, ge=1, description="rows per micro-batch per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    group_by_length: int = Field(
        0,
        ge=0,
        description="JSONL data: batch rows of similar length together (sort each window of N "
        "global batches by length, shuffle the batches; less padding); 0 = off",
    )
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (not on norms/biases)")
    beta2: float = Field(0.95, gt=0, lt=1, description="AdamW beta2")
    max_grad_norm: float = Field(1.0, ge=0, description="clip gradients to this norm (0 = off)")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="bf16 autocast or plain fp32; auto: bf16 where the CPU has AMX or is an AMD "
        "with AVX-512 BF16 (1.58x on Zen 4), fp32 elsewhere (bf16 was 5x slower emulated on AVX2, "
        "0.57x on an Intel Xeon with AVX-512 BF16 and no AMX)",
    )
    compile: bool = Field(False, description="torch.compile the model (first steps slower)")
    deterministic: bool = Field(
        False, description="torch.use_deterministic_algorithms: bitwise-repeatable runs"
    )
    seed: int = Field(0, description="seed for initialisation, data order and dropout")
    eval_every: int = Field(50, ge=1, description="validate every N steps (and at the end)")
    eval_batches: int = Field(20, ge=1, description="at most this many validation batches")
    select_by: str = Field(
        "loss",
        description="what picks the best weights, counts for patience and judges a cooldown: "
        "'loss' (validation loss, lower is better) or a metric the caller's validation hook "
        "returns, higher is better, ties to the lower loss (the ladder's classification rungs: "
        "'accuracy' by label scoring)",
    )
    patience: int = Field(
        0,
        ge=0,
        description="stop after N evaluations without a min_delta improvement of the select_by "
        "value over the last improvement (0 = never)",
    )
    min_delta: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="relative change that counts: an improvement of the select_by value smaller "
        "than this is not one (patience), a val loss rise smaller than this is no overfitting "
        "warning (0.01 = 1%)",
    )
    cooldown_steps: int = Field(
        0,
        ge=0,
        description="after training, anneal the best weights for N more steps with the learning "
        "rate falling linearly to 0, validate, keep them if the select_by value improved (needs "
        "validation data; 0 = off)",
    )
    save_every: int = Field(100, ge=1, description="write a resumable checkpoint every N steps")
    log_every: int = Field(10, ge=1, description="log training metrics every N steps")
    keep_checkpoints: bool = Field(
        False, description="keep <out>/checkpoints after a successful run"
    )
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="also send metrics to these trackers"
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: DDP, or FSDP2 fully_shard (shards weights)"
    )


class TrainingStopped(UserError):
    """A NaN/inf loss or gradient: the step was abandoned before the optimizer ran."""


# The terminal line this process's progress bar owns: a forked tune worker sets its index
# (evals/tune.py), so two trials training side by side draw two bars, not one line between them.
BAR_LINE = 0


# ---------------------------------------------------------------------------- distributed


def dist_env() -> tuple[int, int]:
    """(rank, world size); initialises gloo when started by torchrun with >1 process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _wrap(model, parallel: str, world: int):
    if world == 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        inner = unwrap(model)
        layers = getattr(getattr(inner, "model", inner), "layers", None)
        for layer in layers or []:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model)


def _all_mean(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        torch.distributed.all_reduce(x)
        x = x / world
    return x


# ---------------------------------------------------------------------------- pieces


def make_optimizer(model, args: TrainArgs, fsdp: bool = False) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for _name, p in unwrap(model).named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kw = {"foreach": True} if fsdp else {"fused": True}
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, args.beta2), **kw)


def make_scheduler(opt, args: TrainArgs, max_steps: int):
    warm, floor = args.warmup_steps, args.min_lr_ratio

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        span = max(1, max_steps - warm)
        progress = min(1.0, (step - warm) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def plot_losses(train: list[tuple[int, float]], val: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train", lw=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", lw=2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


class _Trackers:
    """Optional TensorBoard / MLflow sinks beside metrics.jsonl (rank 0 only)."""

    def __init__(self, names: list[str], run, params: dict):
        self.tb = self.mlflow = None
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run.dir) / "tensorboard"))
        if "mlflow" in names:
            try:
                import mlflow
            except ImportError:
                raise UserError(
                    "report_to mlflow needs the mlflow package: pip install mlflow"
                ) from None
            self.mlflow = mlflow
            mlflow.start_run(run_name=str(run.id))
            mlflow.log_params({k: v for k, v in params.items() if isinstance(v, int | float | str)})

    def log(self, metrics: dict, step: int) -> None:
        nums = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        if self.tb:
            for k, v in nums.items():
                self.tb.add_scalar(k, v, step)
        if self.mlflow:
            self.mlflow.log_metrics(nums, step=step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.mlflow:
            self.mlflow.end_run()


class NullRun:
    """Stands in for ``workspace.Run`` on ranks > 0: only rank 0 records."""

    def __init__(self):
        self.summary: dict = {}
        self.dir = None
        self.id = None

    def log(self, *a, **k) -> None:
        pass


# ---------------------------------------------------------------------------- the loop


@dataclass
class FitHooks:
    """What a caller such as ``oficina tune`` adds to each periodic validation.

    ``eval_metrics(model, val_batches) -> {name: value}`` adds metrics beside ``val_loss``
    (logged as ``val_<name>``; the model is in eval mode, without autocast, on the default
    attention kernel); ``TrainArgs.select_by`` may name one of them to pick the best weights
    by. A ``loss`` among them *is* the validation loss (the hook computed it from the passes it
    ran anyway: the ladder's label scoring), and ``fit`` skips its own loss pass — each
    validation of the demo's LoRA scored 40 rows twice, ~14 s each on 2 AVX2 cores
    (2026-12-01). ``on_eval(step, metrics) -> stop`` sees them all and returns
    True to end training there (``FitResult.stopped == "on_eval"``: a pruned trial costs only
    the steps it ran). Under torchrun every rank must return the same answer. An ``answers``
    entry (one JSON-able item per validation row, e.g. ``[prediction, gold]``) is neither logged
    nor a metric: fit keeps it per validation (``FitResult.val_answers``), so a caller can ask
    whether one checkpoint really beats another on the same rows (the ladder's budget check).
    """

    eval_metrics: Callable[[object, list[dict]], dict[str, Any]] | None = None
    on_eval: Callable[[int, dict[str, float]], bool] | None = None


@dataclass
class FitResult:
    steps: int
    train_tokens: int
    train_time_s: float
    tokens_per_s: float
    best_val_loss: float | None
    best_step: int | None
    final_train_loss: float | None
    stopped: str  # "max_steps" | "early_stopping" | "on_eval"
    max_steps: int = 0  # the budget it was given: ``steps`` < this when it stopped early
    overfit_warnings: list[str] = field(default_factory=list)
    history: list[tuple[int, float]] = field(default_factory=list)
    val_history: list[tuple[int, float]] = field(default_factory=list)
    # The anneal after training (``cooldown_steps``): from_step, steps, val_loss, kept.
    cooldown: dict | None = None
    # What picked the best weights (``TrainArgs.select_by``), its value for the weights returned
    # (the loss: best_val_loss) and its curve (step, value) when a metric (the loss's is
    # val_history).
    select_by: str = "loss"
    best_metric: float | None = None
    select_history: list[tuple[int, float]] = field(default_factory=list)
    # The hook's per-row ``answers`` at each validation, (step, answers) (FitHooks).
    val_answers: list[tuple[int, list]] = field(default_factory=list)


def _say(msg: str, rank: int) -> None:
    if rank == 0:
        from tqdm import tqdm

        tqdm.write(msg)


def significant_drop(ref: float | None, v: float, min_delta: float) -> bool:
    """Is ``v`` an improvement on ``ref`` by at least the relative ``min_delta``? (None: the
    first evaluation always is.)"""
    return ref is None or v < ref - min_delta * abs(ref)


def selection_key(select_by: str, val_loss: float, metrics: dict[str, float]) -> list[float]:
    """What the best weights minimise: [val loss], or [-metric, val loss] when ``select_by``
    names a validation metric (higher is better; a tie goes to the lower loss). ``metrics`` are
    the hook's, as logged (``val_<name>``)."""
    if select_by == "loss":
        return [val_loss]
    value = metrics.get(f"val_{select_by}")
    if value is None:
        raise UserError(
            f"train.select_by {select_by!r}: the validation hook returned no {select_by!r} "
            f"(it returned {sorted(k[4:] for k in metrics) or 'nothing'}); use 'loss'"
        )
    return [-float(value), val_loss]


def significant_rise(before: float, after: float, min_delta: float) -> bool:
    """Did the validation loss rise from ``before`` to ``after`` by more than ``min_delta``?"""
    return after > before + min_delta * abs(before)


def overfitting(
    val_history: list[tuple[int, float]], train_at_eval: list[float], min_delta: float
) -> str | None:
    """The warning when the last validation loss rose by more than ``min_delta`` (relative)
    while the training loss fell; None for a rise inside that noise (still learning)."""
    if len(val_history) < 2 or len(train_at_eval) < 2:
        return None
    (_, before), (step, after) = val_history[-2], val_history[-1]
    t0, t1 = train_at_eval[-2], train_at_eval[-1]
    if not (significant_rise(before, after, min_delta) and t1 < t0):
        return None
    return (
        f"overfitting? at step {step} validation loss rose {before:.4f} -> {after:.4f} "
        f"(more than {min_delta:.1%}) while training loss fell {t0:.4f} -> {t1:.4f}"
    )


def evaluate(
    model, objective, batches: list[dict], precision: str, attention: Callable | None = None
) -> float:
    """Token-weighted mean loss over fixed batches (``attention(batch)`` picks each batch's
    attention kernel, as in training)."""
    was = model.training
    model.eval()
    total, weight = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        for b in batches:
            if attention is not None:
                attention(b)
            loss, n = objective(model, b)
            w = max(n, 1)
            total += float(loss) * w
            weight += w
    model.train(was)
    return total / max(weight, 1)


def fit(
    model,
    objective,
    train_ds,
    val_ds,
    args: TrainArgs,
    max_steps: int,
    out_dir: str | Path,
    run=None,
    resume: bool = False,
    eval_objective=None,
    hooks: FitHooks | None = None,
) -> FitResult:
    """Train ``model`` in place; on return it holds the best validation weights (or the last).

    ``objective(model, batch) -> (loss, n_target_tokens)``; ``eval_objective`` (default: the
    same) scores validation batches — distillation validates on plain cross-entropy.
    ``hooks`` (``FitHooks``) add validation metrics and a stop signal.
    """
    # "auto" becomes what this CPU runs fast, before anything records or compares the args.
    args = args.model_copy(update={"precision": auto_precision(args.precision)})
    restore: list = []
    undo_memory = keep_freed_memory()  # big tensors reuse mapped pages: see train/memory.py
    if undo_memory is not None:
        restore.append(undo_memory)
    try:
        return _fit(
            model, objective, train_ds, val_ds, args, max_steps, out_dir, run, resume,
            eval_objective, restore, hooks or FitHooks(),
        )  # fmt: skip
    finally:
        for undo in reversed(restore):
            undo()


def _compile(wrapped, objective, restore: list):
    """``--train.compile``: the decoder stack alone when the objective takes the fused
    cross-entropy path (the loss stays outside the graph, its softmax kernel compiled on its
    own) or KD's kept-positions path (it calls the decoder itself); otherwise the whole model.
    Undone when ``fit`` returns."""
    if getattr(objective, "fused", False) and causal_lm_parts(wrapped) is not None:
        restore.append(compile_decoder(wrapped))
        was = COMPILE_KERNEL["on"]
        COMPILE_KERNEL["on"] = True
        restore.append(lambda: COMPILE_KERNEL.update(on=was))
        return wrapped
    return torch.compile(wrapped)


def _fit(
    model, objective, train_ds, val_ds, args: TrainArgs, max_steps: int, out_dir, run,
    resume: bool, eval_objective, restore: list, hooks: FitHooks,
) -> FitResult:  # fmt: skip
    rank, world = dist_env()
    run = run or NullRun()
    torch.manual_seed(args.seed + rank)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    fsdp = world > 1 and args.parallel == "fsdp"
    ckpt = Checkpointer(Path(out_dir) / "checkpoints", rank, world, sharded=fsdp)
    if not resume and ckpt.latest() is not None:
        raise UserError(
            f"{out_dir} holds checkpoints of an earlier run: pass --resume to continue it, "
            "or choose another --out"
        )

    total, trainable = param_counts(model)
    if trainable == 0:
        raise UserError("the model has no trainable parameters")
    if args.select_by != "loss" and val_ds is not None and hooks.eval_metrics is None:
        raise UserError(
            f"train.select_by {args.select_by!r} needs a validation hook that computes it (the "
            "ladder's classification rungs give one); this run has only the validation loss: "
            "use 'loss'"
        )
    wrapped = _wrap(model, args.parallel, world)
    # bf16: frozen linear weights stored in bf16 for the run, as autocast would cast them on
    # every forward (the same operands; see train/frozen.py). After wrapping, so DDP broadcasts
    # float32; not under FSDP, whose shards hold one dtype per group.
    frozen = (
        FrozenCast(unwrap(model), torch.bfloat16) if args.precision == "bf16" and not fsdp else None
    )
    if frozen is not None:
        restore.append(frozen.restore)
    if args.precision == "bf16":  # a KD teacher: frozen, run under no_grad, never saved
        for m in getattr(objective, "frozen_models", list)():
            restore.append(FrozenCast(m, torch.bfloat16).restore)
    opt = make_optimizer(model, args, fsdp=fsdp)
    sched = make_scheduler(opt, args, max_steps)
    train_model = _compile(wrapped, objective, restore) if args.compile else wrapped
    eval_objective = eval_objective or objective
    # Eager attention on short batches, SDPA on long ones (train/attention.py); not when
    # compiled, where a kernel switch would recompile the graph.
    attention = None
    if not args.compile:
        attention = AttentionByLength([model, *getattr(objective, "frozen_models", list)()])
        restore.append(attention.restore)

    stream = BatchStream(
        train_ds, args.batch_size, args.seed, rank, world, group_by_length=args.group_by_length
    )
    val = (
        eval_batches(val_ds, args.batch_size, args.eval_batches, by_length=True)
        if val_ds is not None
        else []
    )

    state = {
        "step": 0,
        "micro": 0,
        "train_tokens": 0,
        "train_time_s": 0.0,
        "best_val": None,  # the val loss of the best weights
        "best_key": None,  # what picked them: selection_key
        "best_step": None,
        "ref_val": None,  # the select_by value of the last improvement by at least min_delta
        "select_history": [],
        "val_answers": [],  # the hook's per-row answers at each validation (FitHooks)
        "bad_evals": 0,
        "history": [],
        "val_history": [],
        "train_at_eval": [],
        "warnings": [],
    }
    if resume:
        loaded = ckpt.load(model, opt, sched)
        if loaded is None:
            _say(f"no checkpoint in {ckpt.root}: starting from step 0", rank)
        else:
            state.update(loaded)
            if state["ref_val"] is None:  # a checkpoint written before min_delta existed
                state["ref_val"] = state["best_val"]
            if state["best_key"] is None and state["best_val"] is not None:  # before select_by
                state["best_key"] = [state["best_val"]]
            _say(f"resumed from step {state['step']} ({ckpt.latest()})", rank)
    step = state["step"]
    _say(
        f"parameters: {total:,} total, {trainable:,} trainable ({100 * trainable / total:.2f}%)"
        f" · {world} process(es) · global batch {stream.global_batch * args.grad_accum} rows",
        rank,
    )

    if args.precision == "bf16" and (note := emulated_bf16_note("training")):
        _say(note, rank)
    trackers = _Trackers(args.report_to, run, args.model_dump()) if rank == 0 else None
    from tqdm import tqdm

    bar = tqdm(
        total=max_steps,
        initial=step,
        disable=rank != 0,
        unit="step",
        dynamic_ncols=True,
        position=BAR_LINE,
    )
    params = [p for p in unwrap(model).parameters() if p.requires_grad]
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=args.precision == "bf16")
    ddp = world > 1 and args.parallel == "ddp"
    stopped = "max_steps"
    best_opt = None  # the optimizer's state at the best step (a cooldown starts from it)
    window_tokens, window_t0 = 0, time.perf_counter()
    train_model.train()

    def train_step(step: int) -> tuple[float, float, int]:
        """One optimizer step (``grad_accum`` micro-batches) after ``step``: (loss, gradient
        norm, tokens). The learning rate is whatever the optimizer holds."""
        t0 = time.perf_counter()
        loss_sum = torch.zeros(())
        step_tokens = 0
        for a in range(args.grad_accum):
            batch = stream.batch(state["micro"] + a)
            sync = ddp and a < args.grad_accum - 1
            if attention is not None:
                attention(batch)
            with train_model.no_sync() if sync else contextlib.nullcontext(), autocast:
                loss, _n = objective(train_model, batch)
            (loss / args.grad_accum).backward()
            loss_sum += loss.detach().float()
            mask = batch.get("attention_mask")
            step_tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        loss_val = float(_all_mean(loss_sum / args.grad_accum, world))
        if not math.isfinite(loss_val):
            opt.zero_grad(set_to_none=True)
            bar.close()
            raise TrainingStopped(
                f"loss is {loss_val} at step {step + 1}: stopped before the optimizer step, so "
                f"the weights are those after step {step}; lower --train.lr, keep "
                "--train.max_grad_norm on, or check the data (resume from the last checkpoint)"
            )
        if args.max_grad_norm > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        else:
            gnorm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if hasattr(gnorm, "full_tensor"):
            gnorm = gnorm.full_tensor()
        gnorm = float(gnorm)
        if not math.isfinite(gnorm):
            opt.zero_grad(set_to_none=True)
            bar.close()
            raise TrainingStopped(
                f"gradient norm is {gnorm} at step {step + 1}: stopped before the optimizer "
                f"step (weights are those after step {step}); lower --train.lr"
            )
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["micro"] += args.grad_accum
        step_tokens *= world
        state["train_tokens"] += step_tokens
        state["train_time_s"] += time.perf_counter() - t0
        state["history"].append((step + 1, loss_val))
        return loss_val, gnorm, step_tokens

    answers: list = []  # the last validation's per-row answers, when the hook gives them

    def validate() -> tuple[float, dict[str, float]]:
        """(val loss, the hook's metrics as ``val_<name>``) of the weights the model holds;
        the hook's per-row ``answers`` (if any) left in ``answers``."""
        extra: dict[str, float] = {}
        answers.clear()
        if hooks.eval_metrics:
            # The caller's code runs the model in eval mode, without autocast, on rows of any
            # length (the default attention kernel).
            if attention is not None:
                attention.restore()
            was = train_model.training
            train_model.eval()
            try:
                with frozen.originals() if frozen else contextlib.nullcontext():
                    extra = dict(hooks.eval_metrics(train_model, val))
            finally:
                train_model.train(was)
            answers.extend(extra.pop("answers", None) or [])
        if "loss" in extra:
            v = float(extra.pop("loss"))
        else:
            v = evaluate(train_model, eval_objective, val, args.precision, attention)
        return v, {f"val_{k}": float(x) for k, x in extra.items()}

    def described(v: float, extra: dict[str, float]) -> str:
        text = f"val loss {v:.4f}"
        if args.select_by != "loss":
            text += f", val {args.select_by} {extra[f'val_{args.select_by}']:.4f}"
        return text

    def best_text() -> str:
        key = state["best_key"]
        value = key[0] if args.select_by == "loss" else -key[0]
        return f"{value:.4f} at step {state['best_step']}"

    while step < max_steps:
        loss_val, gnorm, step_tokens = train_step(step)
        sched.step()
        step += 1
        window_tokens += step_tokens

        if step % args.log_every == 0 or step == max_steps:
            now = time.perf_counter()
            tps = window_tokens / max(now - window_t0, 1e-9)
            window_tokens, window_t0 = 0, now
            metrics = {
                "loss": loss_val,  # full precision: resumed runs are compared bitwise
                "lr": sched.get_last_lr()[0],
                "grad_norm": round(gnorm, 4),
                "tokens_per_s": round(tps, 1),
                "epoch": round(stream.epoch_of(state["micro"]), 3),
            }
            if rank == 0:
                run.log(metrics, step=step)
                trackers.log(metrics, step)
            bar.set_postfix(loss=f"{loss_val:.4f}", tok_s=f"{tps:,.0f}")
        bar.update(1)

        at_end = step == max_steps
        if val and (step % args.eval_every == 0 or at_end):
            v, extra = validate()
            key = selection_key(args.select_by, v, extra)
            recent = [x for s, x in state["history"] if s > step - args.eval_every]
            train_avg = sum(recent) / max(len(recent), 1)
            state["val_history"].append((step, v))
            if args.select_by != "loss":  # for the loss it is val_history
                state["select_history"].append((step, -key[0]))
            if answers:
                state["val_answers"].append((step, list(answers)))
            state["train_at_eval"].append(train_avg)
            # The best weights are the best select_by value seen; patience counts only
            # improvements of at least min_delta, so a model creeping by noise-sized steps is
            # not "learning".
            if state["best_key"] is None or key < state["best_key"]:
                state["best_val"], state["best_key"], state["best_step"] = v, key, step
                # Where a cooldown starts from: the rates the next step would have taken, the
                # optimizer's moments and the data position of this step, so that the anneal
                # depends on the best step alone, not on where training went on to end.
                state["lr_at_best"] = [g["lr"] for g in opt.param_groups]
                state["micro_at_best"] = state["micro"]
                if args.cooldown_steps:
                    best_opt = copy.deepcopy(opt.state_dict())
                ckpt.save_best(model)
            if significant_drop(state["ref_val"], key[0], args.min_delta):
                state["ref_val"], state["bad_evals"] = key[0], 0
            else:
                state["bad_evals"] += 1
            if rank == 0:
                run.log(
                    {"val_loss": round(v, 6), "train_loss_avg": round(train_avg, 6), **extra}, step
                )
                trackers.log({"val_loss": v, **extra}, step)
            hook_stop = bool(hooks.on_eval and hooks.on_eval(step, {"val_loss": v, **extra}))
            msg = overfitting(state["val_history"], state["train_at_eval"], args.min_delta)
            if msg:
                state["warnings"].append(msg)
                _say("warning: " + msg, rank)
                if rank == 0:
                    run.log({"event": "overfitting_warning", "message": msg}, step)
            _say(f"step {step}: {described(v, extra)} (best {best_text()})", rank)
            if args.patience and state["bad_evals"] >= args.patience and not at_end:
                stopped = "early_stopping"
                ref = abs(state["ref_val"])
                _say(
                    f"early stopping at step {step}: no validation {args.select_by} "
                    f"{args.min_delta:.1%} {'below' if args.select_by == 'loss' else 'above'} "
                    f"{ref:.4f} in {args.patience} evaluations; keeping step "
                    f"{state['best_step']}",
                    rank,
                )
                if rank == 0:
                    run.log({"event": "early_stopping", "best_step": state["best_step"]}, step)
                break
            if hook_stop and not at_end:
                stopped = "on_eval"
                _say(f"stopped at step {step} by the caller (on_eval)", rank)
                if rank == 0:
                    run.log({"event": "stopped_on_eval"}, step)
                break
        if step % args.save_every == 0 and not at_end:
            state["step"] = step
            ckpt.save(step, model, opt, sched, state)

    bar.close()
    if trackers:
        trackers.close()
    state["step"] = step
    if args.keep_checkpoints:
        ckpt.save(step, model, opt, sched, state)  # the last state, before restoring the best
    if val and ckpt.load_best(model):
        _say(f"restored the best weights (step {state['best_step']})", rank)
    cooldown = None
    if args.cooldown_steps and not val:
        _say(
            f"cooldown_steps {args.cooldown_steps}: no validation data to judge it by, skipped",
            rank,
        )
    if val and args.cooldown_steps and state["best_step"] is not None and stopped != "on_eval":
        # Warm-up, a constant rate, then a short linear anneal of the best weights: the
        # warmup-stable-decay schedule (Hägele et al. 2024 measured it matching a cosine),
        # whose length early stopping decides instead of a budget fixed in advance. A run
        # stopped by its caller (a pruned search trial) is discarded and not annealed.
        n = args.cooldown_steps
        start = state.get("lr_at_best") or [g["lr"] for g in opt.param_groups]
        # From the best step's own optimizer state and batches: a run given a longer budget
        # with the same best step anneals to the same weights (benchmarks/ladder_budget.py's
        # 3x run annealed from its last step's moments missed, 0.5418 vs 0.5193, and scored
        # 0.342 vs 0.452, 2026-11-30). A resumed run has not kept the state: it uses the last.
        if best_opt is not None:
            opt.load_state_dict(best_opt)
        state["micro"] = state.get("micro_at_best", state["micro"])
        bar = tqdm(
            total=n,
            disable=rank != 0,
            unit="step",
            dynamic_ncols=True,
            desc="cooldown",
            position=BAR_LINE,
        )
        for i in range(n):
            for g, lr0 in zip(opt.param_groups, start, strict=True):
                g["lr"] = lr0 * (n - i) / n  # linear to lr0 / n at the last step
            loss_val, _, _ = train_step(step + i)
            bar.set_postfix(loss=f"{loss_val:.4f}")
            bar.update(1)
        bar.close()
        v, extra = validate()
        key = selection_key(args.select_by, v, extra)
        kept = key < state["best_key"]
        cooldown = {"from_step": state["best_step"], "steps": n, "val_loss": v, "kept": kept}
        if args.select_by != "loss":
            cooldown[args.select_by] = extra[f"val_{args.select_by}"]
        if rank == 0:
            run.log({"event": "cooldown", **cooldown}, step + n)
        if not kept:
            ckpt.load_best(model)
        else:  # the model holds the annealed weights; a kept checkpoint folder records them
            state["best_val"], state["best_key"] = v, key
            if args.keep_checkpoints:
                ckpt.save_best(model)
        _say(
            f"cooldown: {n} steps from step {state['best_step']}'s weights, {described(v, extra)} "
            + ("(kept)" if kept else f"(not better than {best_text()}: the best kept)"),
            rank,
        )
    if rank == 0 and run.dir is not None:
        plot_losses(state["history"], state["val_history"], Path(run.dir) / "loss_curve.png")
    if not args.keep_checkpoints:
        ckpt.clear()
    torch.use_deterministic_algorithms(was_deterministic)
    tt = max(state["train_time_s"], 1e-9)
    best_key = state["best_key"]
    # the select_by value of the weights returned (a metric is stored negated in its key)
    best_metric = None if best_key is None else -best_key[0] if len(best_key) > 1 else best_key[0]
    hist = state["history"]
    return FitResult(
        steps=step,
        train_tokens=state["train_tokens"],
        train_time_s=tt,
        tokens_per_s=state["train_tokens"] / tt,
        best_val_loss=state["best_val"],
        best_step=state["best_step"],
        final_train_loss=hist[-1][1] if hist else None,
        stopped=stopped,
        max_steps=max_steps,
        overfit_warnings=list(state["warnings"]),
        history=[tuple(x) for x in hist],
        val_history=[tuple(x) for x in state["val_history"]],
        cooldown=cooldown,
        select_by=args.select_by,
        best_metric=best_metric,
        select_history=[tuple(x) for x in state["select_history"]],
        val_answers=[(int(k), list(a)) for k, a in state["val_answers"]],
    )
