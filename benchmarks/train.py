"""Training benchmarks: speed and MFU against a plain HF Trainer, and the quality claims.

    .venv/bin/python benchmarks/train.py [--quick] [--compile]        # speed (default)
    .venv/bin/python benchmarks/train.py --what pretrain|lora|distill|all [--quick]
    .venv/bin/python benchmarks/train.py --what lora-speed|full-speed [--steps N]
    .venv/bin/python benchmarks/train.py --what frozen-cast [--steps N]
    .venv/bin/python benchmarks/train.py --what lora-step [--steps N]
    .venv/bin/python benchmarks/train.py --what distill-step [--steps N]
    .venv/bin/python benchmarks/train.py --what precision [--steps N]

* speed    the `mini` preset (SmolLM2 tokenizer, 8×256-token batches of the demo domain),
           Oficina's loop (bf16 autocast, fused AdamW, chunked fused output layer +
           cross-entropy, freed memory kept mapped) vs the same loop with plain logits and vs
           transformers.Trainer (bf16, same model init, data, batch, optimizer and schedule),
           also given Oficina's allocator setting to show what that alone is worth; tokens/s
           and model-FLOPs utilisation against fp32 and bf16 matmul peaks measured in the same
           run.
* pretrain `mini` from random weights on the demo reference: validation loss before/after.
* lora     LoRA on smollm2-135m-instruct for the demo task: test accuracy by the
           log-likelihood of each label, untouched model vs the adapter.
* distill  student `mini` trained with SmolLM2 as teacher (KD) vs the same student, data and
           steps without it: validation cross-entropy.
* lora-speed / full-speed  Oficina's ``finetune`` (recipes + fit) vs transformers.Trainer
           (+ PEFT for LoRA) on SmolLM2 and the demo task's rows: same rows in the same order,
           batch, max_len, optimizer, schedule, bf16; real (non-pad) tokens/s; then each side
           with its length grouping (``bench_finetune_speed``).
* frozen-cast  one LoRA step at the ladder's shape with the frozen weights stored in bf16
           (what ``fit`` does under bf16) and in float32, alternating in one process, same
           batches: CPU and wall seconds per step, and the largest loss difference.
* lora-step  a LoRA step at the ladder's shape under each setting issue 14 measured (LoRA
           dropout, a padded batch's attention mask, SDPA vs eager attention), interleaved in
           one process: tokens/s and the losses (``bench_lora_step``).
* distill-step  a KD step at the ladder's distill shape (student: SmolLM2 keeping 10 layers,
           teacher: SmolLM2), the full logits vs the output layers at the target positions
           only, the teacher float32 vs bf16-stored, interleaved: tokens/s and the losses
           (``bench_distill_step``).
* precision  what ``precision: auto`` / ``dtype: auto`` decide on this CPU and why: a LoRA
           step of the ladder's shape in bf16 autocast vs float32, and a scoring forward in
           bfloat16 vs float32 weights, interleaved (``bench_precision``).
Every table shows each figure beside its peer from the same run, with the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    w = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print("  ".join(str(h).ljust(n) for h, n in zip(header, w, strict=True)))
    for r in rows:
        print("  ".join(str(x).ljust(n) for x, n in zip(r, w, strict=True)))


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best sustained FLOP/s of an n×n matmul (several trials; the best one counts)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))
    return best


def pack_demo(out: Path, seq_len: int = 256) -> Path:
    """The demo reference tokenized with SmolLM2's tokenizer, in the oficina-pack-v1 format
    (documents split by a hash of their id, ~10% for validation)."""
    import hashlib

    from oficina.models.sources import load_tokenizer, resolve

    if (out / "meta.json").is_file():
        return out
    tok_dir = resolve("smollm2-135m-instruct")
    tok = load_tokenizer(str(tok_dir))
    train, val = [], []
    for line in open(ROOT / "examples" / "demo" / "reference.jsonl"):
        d = json.loads(line)
        ids = tok(d["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        h = int(hashlib.sha256(d["id"].encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (val if h < 0.1 else train).extend(ids)
    out.mkdir(parents=True, exist_ok=True)
    np.asarray(train, dtype=np.uint16).tofile(out / "train.bin")
    np.asarray(val, dtype=np.uint16).tofile(out / "val.bin")
    meta = {
        "format": "oficina-pack-v1", "dtype": "uint16", "seq_len": seq_len,
        "vocab_size": len(tok), "eos_id": tok.eos_token_id, "tokenizer": str(tok_dir),
        "train_tokens": len(train), "val_tokens": len(val), "sources": ["examples/demo/reference.jsonl"],
    }  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def mini_model(seed: int = 0):
    from oficina.models.sources import load_tokenizer
    from oficina.train.recipes import _preset_model

    tok = load_tokenizer("smollm2-135m-instruct")
    return _preset_model("mini", tok, 256, 0.0, seed, len(tok)), tok


# ---------------------------------------------------------------------------- speed


def bench_speed(work: Path, steps: int, compile_: bool, trials: int = 2) -> None:
    from oficina.train.data import PackedDataset
    from oficina.train.loop import TrainArgs, fit
    from oficina.train.objectives import CausalLM
    from oficina.train.recipes import _flops_per_token

    peak32 = matmul_peak(torch.float32)
    peak16 = matmul_peak(torch.bfloat16)
    data = pack_demo(work / "pack")
    ds = PackedDataset(data, "train")
    model, _ = mini_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    fpt = _flops_per_token(model.config, ds.seq_len, True)
    bs, warm = 8, 3
    args = dict(lr=1e-3, warmup_steps=5, batch_size=bs, weight_decay=0.1, log_every=steps)

    def ours(compiled: bool, fused: bool = True) -> tuple[float, float]:
        model.load_state_dict(init)
        a = TrainArgs(**args, precision="bf16", compile=compiled)
        tag = f"{compiled}-{fused}-{time.monotonic_ns()}"
        obj = CausalLM(fused=fused)
        fit(model, obj, ds, None, a, warm, work / f"warm-{tag}")  # warm-up/compile
        model.load_state_dict(init)
        r = fit(model, obj, ds, None, a, steps, work / f"ours-{tag}")
        return r.tokens_per_s, sum(x for _, x in r.history) / len(r.history)

    # -- transformers.Trainer on the same model init, windows in the same order, optimizer and
    # schedule: it is handed Oficina's AdamW (same groups and betas) and LR schedule, and a
    # sampler that yields BatchStream's rows; each window goes in as input_ids + shift_labels
    # (HF's loss then skips its own shift), so both sides compute the very same losses and the
    # mean train loss column must agree — a check that the two do the same work.
    from transformers import Trainer, TrainingArguments

    from oficina.train.data import BatchStream
    from oficina.train.loop import make_optimizer, make_scheduler

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            w = ds.collate([i])
            x, y = w["input_ids"][0], w["targets"][0]
            return {"input_ids": x, "labels": x, "shift_labels": y}

    class SameRows(torch.utils.data.Sampler):
        def __init__(self, step_count: int):
            stream = BatchStream(ds, bs, seed=0)
            self.idx = [int(r) for i in range(step_count) for r in stream.rows(i)]

        def __iter__(self):
            return iter(self.idx)

        def __len__(self):
            return len(self.idx)

    def hf(step_count: int, keep_memory: bool = False) -> tuple[float, float]:
        from oficina.train.memory import keep_freed_memory

        model.load_state_dict(init)
        a = TrainArgs(**args, precision="bf16")
        opt = make_optimizer(model, a)
        targs = TrainingArguments(
            output_dir=str(work / "hf"), per_device_train_batch_size=bs, max_steps=step_count,
            max_grad_norm=a.max_grad_norm, bf16=True, use_cpu=True, save_strategy="no",
            report_to=[], logging_steps=max(1, step_count), dataloader_num_workers=0, seed=0,
            remove_unused_columns=False, disable_tqdm=True,
        )  # fmt: skip

        class SameOrderTrainer(Trainer):
            def _get_train_sampler(self, train_dataset=None):
                return SameRows(step_count)

        tr = SameOrderTrainer(
            model=model,
            args=targs,
            train_dataset=Windows(),
            optimizers=(opt, make_scheduler(opt, a, step_count)),
        )
        undo = keep_freed_memory() if keep_memory else None
        try:
            out = tr.train()
        finally:
            if undo:
                undo()
        return step_count * bs * ds.seq_len / out.metrics["train_runtime"], out.training_loss

    hf(warm)
    # Interleaved trials, best of each: the machine is shared and its load drifts, so measuring
    # one side first and the other later would favour whichever ran in the quieter minutes.
    best: dict[str, tuple[float, float]] = {}
    setups = [
        ("oficina loop, bf16 autocast, fused AdamW, chunked fused CE", lambda: ours(False)),
        ("oficina loop, plain logits + fp32 CE (before #4)", lambda: ours(False, False)),
        ("transformers.Trainer, bf16, fused AdamW", lambda: hf(steps)),
        (
            "transformers.Trainer + oficina's allocator setting (train/memory.py)",
            lambda: hf(steps, keep_memory=True),
        ),
    ]
    if compile_:
        setups += [
            ("oficina loop + torch.compile (decoder; CE kernel)", lambda: ours(True)),
            ("oficina loop + torch.compile, plain logits (before #4)", lambda: ours(True, False)),
        ]
    for _ in range(trials):
        for name, fn in setups:
            t, lo = fn()
            if t > best.get(name, (0.0, 0.0))[0]:
                best[name] = (t, lo)
    tps_hf = best["transformers.Trainer, bf16, fused AdamW"][0]
    rows = [[name, t, lo] for name, (t, lo) in best.items()]
    peak32 = max(peak32, matmul_peak(torch.float32))
    peak16 = max(peak16, matmul_peak(torch.bfloat16))

    table(
        f"speed: preset mini ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"vocab {model.config.vocab_size}), batch {bs}x{ds.seq_len}, {steps} steps, best of {trials} interleaved trials; "
        f"{fpt / 1e6:.0f} MFLOP/token (6N + 12·L·d·s)",
        [
            "setup",
            "tokens/s",
            "vs Trainer",
            "MFU vs bf16 peak",
            "MFU vs fp32 peak",
            "mean train loss",
        ],
        [
            [
                name,
                f"{t:,.0f}",
                f"{t / tps_hf:.2f}x",
                f"{100 * fpt * t / peak16:.1f}%",
                f"{100 * fpt * t / peak32:.1f}%",
                f"{lo:.3f}",
            ]  # fmt: skip
            for name, t, lo in rows
        ],
    )
    print(f"loadavg at the end {open('/proc/loadavg').read().split()[:3]}")
    table(
        "matmul peaks measured in this run (2048x2048, best of 5, at the start and at the end)",
        ["dtype", "GFLOP/s"],
        [["fp32", f"{peak32 / 1e9:,.0f}"], ["bf16", f"{peak16 / 1e9:,.0f}"]],
    )


# ---------------------------------------------------------------------------- pretrain


def bench_pretrain(work: Path, steps: int) -> None:
    from oficina.train.data import PackedDataset, eval_batches
    from oficina.train.loop import TrainArgs, evaluate
    from oficina.train.objectives import CausalLM
    from oficina.train.recipes import PretrainConfig, pretrain

    data = pack_demo(work / "pack")
    model, _ = mini_model(seed=0)
    val = eval_batches(PackedDataset(data, "val"), 8, 10)
    before = evaluate(model, CausalLM(), val, "bf16")
    s = pretrain(
        PretrainConfig(
            model="mini",
            data=str(data),
            out=str(work / "mini-pre"),
            max_steps=steps,
            train=TrainArgs(lr=2e-3, batch_size=8, eval_every=max(steps // 5, 1), eval_batches=10),
        )  # fmt: skip
    )
    table(
        f"pretrain: mini from random weights on the demo reference, {steps} steps x 8x256 tokens",
        ["", "val loss", "val perplexity"],
        [
            ["random init", f"{before:.3f}", f"{np.exp(before):,.0f}"],
            [
                f"after (best, step {s['best_step']})",
                f"{s['best_val_loss']:.3f}",
                f"{np.exp(s['best_val_loss']):,.0f}",
            ],
            ["ratio", f"{s['best_val_loss'] / before:.2f}x", ""],
        ],
    )
    print(f"tokens/s {s['tokens_per_s']:,.0f} · wall {s['wall_time_s']:.0f}s · run {s['run_id']}")


# ---------------------------------------------------------------------------- lora


def label_accuracy(model, tok, rows: list[dict], labels: list[str], template: str) -> float:
    """Pick the label most likely after the prompt: the engine's scoring, as ``oficina eval``."""
    from oficina.evals.tasks import classify
    from oficina.infer.engine import Engine

    model.eval()
    # bf16 autocast: ~3x faster here, and the argmax over 5 labels is robust to it
    with torch.autocast("cpu", torch.bfloat16):
        res = classify(Engine(model, tok), rows, labels, template, bootstrap=10)
    return res["accuracy"]


def bench_lora(work: Path, steps: int, n_test: int, overrides: dict | None = None) -> None:
    from peft import PeftModel

    from oficina.config import load
    from oficina.demo_domain import LABELS, TEMPLATE
    from oficina.models.sources import load_causal_lm
    from oficina.train.recipes import FinetuneConfig, finetune

    rows = [json.loads(x) for x in open(ROOT / "examples/demo/task/test.jsonl")][:n_test]
    model, tok = load_causal_lm("smollm2-135m-instruct")
    t = time.perf_counter()
    base_acc = label_accuracy(model, tok, rows, LABELS, TEMPLATE)
    t_eval = time.perf_counter() - t
    cfg = load(
        FinetuneConfig,
        ROOT / "examples/finetune.yaml",
        {"out": str(work / "lora"), "max_steps": steps, "data": str(ROOT / "examples/demo/task/train.jsonl"),
         "val_data": str(ROOT / "examples/demo/task/validation.jsonl"), **(overrides or {})},
    )  # fmt: skip
    s = finetune(cfg)
    tuned = PeftModel.from_pretrained(model, str(work / "lora"))
    lora_acc = label_accuracy(tuned, tok, rows, LABELS, TEMPLATE)
    table(
        f"lora: smollm2-135m-instruct on the demo task, {steps} steps (batch "
        f"{cfg.train.batch_size}x{cfg.train.grad_accum}), test accuracy by label log-likelihood "
        f"on {len(rows)} test rows (5 classes, majority {max(sum(r['label'] == lab for r in rows) for lab in LABELS) / len(rows):.2f})",
        ["model", "accuracy", "params trainable / total"],
        [
            ["untouched", f"{base_acc:.3f}", f"0 / {s['params_total']:,}"],
            [
                "LoRA adapter",
                f"{lora_acc:.3f}",
                f"{s['params_trainable']:,} / {s['params_total']:,}",
            ],
            ["difference", f"{lora_acc - base_acc:+.3f}", ""],
        ],
    )
    print(
        f"train {s['wall_time_s']:.0f}s at {s['tokens_per_s']:,.0f} tok/s · one eval pass "
        f"{t_eval:.0f}s · best val loss {s['best_val_loss']:.3f} · run {s['run_id']}"
    )


# ---------------------------------------------------------------------------- distill


def bench_distill(work: Path, steps: int) -> None:
    from oficina.train.loop import TrainArgs
    from oficina.train.recipes import DistillConfig, distill

    data = pack_demo(work / "pack")
    res = {}
    for name, alpha in (
        ("with teacher (KD, T=2, alpha=0.5)", 0.5),
        ("without teacher (alpha=0)", 0.0),
    ):
        res[name] = distill(
            DistillConfig(
                teacher="smollm2-135m-instruct",
                student="mini",
                data=str(data),
                out=str(work / f"student-{alpha}"),
                max_steps=steps,
                alpha=alpha,
                seq_len=128,
                temperature=2.0,
                train=TrainArgs(
                    lr=2e-3, batch_size=8, eval_every=max(steps // 4, 1), eval_batches=10
                ),
            )  # fmt: skip
        )
    kd, ctl = res.values()
    table(
        f"distill: student mini, teacher smollm2-135m-instruct, same data/steps ({steps} x 8x128)",
        ["student", "best val CE", "params", "wall s"],
        [
            [n, f"{s['best_val_loss']:.3f}", f"{s['params_total']:,}", f"{s['wall_time_s']:.0f}"]
            for n, s in res.items()
        ]
        + [["KD - control", f"{kd['best_val_loss'] - ctl['best_val_loss']:+.3f}", "", ""]],
    )


# ---------------------------------------------------------------------------- fine-tuning speed


def bench_finetune_speed(work: Path, method: str, steps: int, trials: int = 2) -> None:
    """Oficina's finetune recipe vs transformers.Trainer (+ PEFT for LoRA) on the same rows.

    Both sides: SmolLM2-135M-Instruct, the demo task's training rows rendered by its template
    (SFT, loss on the label only), tokenized once by ``load_jsonl_dataset`` (max_len 256, as the
    ladder), the rows of Oficina's ``BatchStream`` in the same order, batch 4, bf16 autocast, the
    same AdamW groups and LR schedule (Oficina's ``make_optimizer``/``make_scheduler`` handed to
    the Trainer), the same LoRA (r 8, alpha 16, attention projections) from the same seed.
    Throughput is real (non-pad) tokens over the time of the training steps: Oficina's
    ``tokens_per_s`` (its step time, validation excluded) and, for the Trainer, a callback timing
    from ``on_train_begin`` to the last ``on_step_end`` (batch fetch included, as Oficina's).
    The mean training loss of each side is shown: equal within bf16 rounding when both do the
    same work (no LoRA dropout, as the ladder). Then each side's own way to waste less on
    padding, each from the same
    training rows, each with its own sampler: Oficina's ``--train.group_by_length 16`` (what the ladder
    trains with) and the Trainer's ``train_sampling_strategy="group_by_length"`` (its LengthGroupedSampler).
    The two samplers draw different rows (over a few steps the Trainer's, longest batch first,
    gives far longer rows, and longer rows run at more tokens/s on either side), so the last
    setup feeds the Trainer Oficina's grouped batches: grouped against grouped on the same rows.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from oficina.demo_domain import LABELS, TEMPLATE
    from oficina.models.sources import load_causal_lm
    from oficina.train.data import BatchStream, load_jsonl_dataset
    from oficina.train.loop import TrainArgs, make_optimizer, make_scheduler
    from oficina.train.recipes import FinetuneConfig, LoraArgs, finetune

    task = ROOT / "examples/demo/task"
    bs, max_len, seed = 4, 256, 0
    # The ladder's LoRA: no dropout since issue 14 (both sides; PEFT then skips the masks too).
    lora = LoraArgs(
        r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    # The ladder's values: LoRA at 2e-3 without weight decay; full at 5e-5 with the default decay.
    targs = dict(lr=2e-3, weight_decay=0.0) if method == "lora" else dict(lr=5e-5)
    args = TrainArgs(
        **targs, batch_size=bs, warmup_steps=max(1, steps // 10), precision="bf16", seed=seed,
        eval_every=10_000, eval_batches=1, save_every=10_000, log_every=max(1, steps),
    )  # fmt: skip

    def ours(n_steps: int, group: int = 0) -> tuple[float, float, int]:
        out = work / f"ours-{method}-{time.monotonic_ns()}"
        s = finetune(
            FinetuneConfig(
                model="smollm2-135m-instruct",
                method=method,
                data=str(task / "train.jsonl"),
                val_data=str(task / "validation.jsonl"),
                template=TEMPLATE,
                labels=LABELS,
                out=str(out),
                max_steps=n_steps,
                max_len=max_len,
                lora=lora,
                train=args.model_copy(update={"group_by_length": group}),
            )
        )
        mean_loss = sum(x for _, x in s["loss_curve"]) / len(s["loss_curve"])
        return s["tokens_per_s"], mean_loss, s["train_tokens"]

    model, tok = load_causal_lm("smollm2-135m-instruct")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    ds = load_jsonl_dataset(task / "train.jsonl", tok, max_len, "sft", TEMPLATE, LABELS)
    init = {k: v.clone() for k, v in model.state_dict().items()}

    class Rows(torch.utils.data.Dataset):
        """The tokenized examples as a Trainer expects them: labels -100 outside the answer."""

        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            e = ds.examples[i]
            return {"input_ids": e.ids, "labels": e.labels}

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.t1 = time.perf_counter()

    class Counting(DataCollatorForSeq2Seq):
        """The standard padding collator, counting each batch's targets the way Oficina does."""

        tokens = 0

        def __call__(self, features, return_tensors=None):
            Counting.tokens += sum(len(f["input_ids"]) - 1 for f in features)
            return super().__call__(features, return_tensors)

    def hf(n_steps: int, grouped: bool = False, group: int = 0) -> tuple[float, float, int]:
        model.load_state_dict(init)
        torch.manual_seed(seed)  # Oficina's recipe seeds before it adds LoRA: the same A init
        m = model
        if method == "lora":
            m = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                    target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
                ),
            )  # fmt: skip
        m.train()
        stream = BatchStream(ds, bs, seed=seed, group_by_length=group)
        order = [int(r) for i in range(n_steps) for r in stream.rows(i)]
        # Oficina's collate feeds len-1 inputs (targets pre-shifted); HF shifts inside: the same
        # targets, one more input token a row. Count Oficina's way on both sides.
        tokens = sum(len(ds.examples[i].ids) - 1 for i in order)
        Counting.tokens = 0

        class SameRows(torch.utils.data.Sampler):
            def __iter__(self):
                return iter(order)

            def __len__(self):
                return len(order)

        class SameOrderTrainer(Trainer):
            def _get_train_sampler(self, train_dataset=None):
                return super()._get_train_sampler(train_dataset) if grouped else SameRows()

        opt = make_optimizer(m, args)
        timer = Timer()
        tr = SameOrderTrainer(
            model=m,
            args=TrainingArguments(
                output_dir=str(work / "hf"), per_device_train_batch_size=bs, max_steps=n_steps,
                max_grad_norm=args.max_grad_norm, bf16=True, use_cpu=True, save_strategy="no",
                report_to=[], logging_steps=max(1, n_steps), dataloader_num_workers=0, seed=seed,
                remove_unused_columns=False, disable_tqdm=True,
                train_sampling_strategy="group_by_length" if grouped else "random",
            ),
            train_dataset=Rows(),
            data_collator=Counting(tok, padding=True, label_pad_token_id=-100),
            optimizers=(opt, make_scheduler(opt, args, n_steps)),
            callbacks=[timer],
        )  # fmt: skip
        out = tr.train()
        if method == "lora":
            m.unload()  # take the adapters out again: the next trial starts from the base
        if grouped:  # its own sampler's rows: counted as they were collated
            tokens = Counting.tokens
        assert Counting.tokens == tokens, (Counting.tokens, tokens)  # the rows we meant
        return tokens / (timer.t1 - timer.t0), out.training_loss, tokens

    warm = 3
    ours(warm)
    hf(warm)
    # Interleaved trials, best of each (the machine is shared; see bench_speed).
    best: dict[str, tuple[float, float, int]] = {}
    name_o = f"oficina finetune --method {method} (recipes + fit)"
    name_h = "transformers.Trainer" + (" + PEFT" if method == "lora" else "")
    setups = [
        (f"{name_o}, same rows, same order", lambda: ours(steps)),
        (f"{name_h}, same rows, same order", lambda: hf(steps)),
        (f"{name_o} + group_by_length 16 (the ladder's)", lambda: ours(steps, 16)),
        (f"{name_h} + train_sampling_strategy group_by_length", lambda: hf(steps, grouped=True)),
        (f"{name_h} fed the rows of Oficina's group_by_length 16", lambda: hf(steps, group=16)),
    ]
    name_h = setups[1][0]
    for trial in range(trials):
        # Every other trial in reverse: on a machine whose load drifts, no setup always runs
        # first (under the load of the trial's start).
        for name, fn in setups if trial % 2 == 0 else setups[::-1]:
            r = fn()
            if r[0] > best.get(name, (0.0,))[0]:
                best[name] = r
    tps_hf = best[name_h][0]
    table(
        f"{method} fine-tuning speed: smollm2-135m-instruct on the demo task's rows (SFT, label "
        f"as completion), batch {bs}, max_len {max_len}, lr {args.lr:g}, bf16, {steps} steps, "
        f"best of {trials} interleaved trials; real (non-pad) tokens",
        ["setup", "tokens/s", "vs Trainer", "real tokens", "mean train loss"],
        [
            [n, f"{t:,.0f}", f"{t / tps_hf:.2f}x", f"{k:,}", f"{lo:.3f}"]
            for n, (t, lo, k) in best.items()
        ],
    )
    ours_g, own_g, same_g = (best[n][0] for n, _ in setups[2:])
    print(
        f"grouped vs grouped: Oficina / Trainer fed the same grouped rows {ours_g / same_g:.2f}x; "
        f"/ Trainer's own LengthGroupedSampler (other rows) {ours_g / own_g:.2f}x"
    )
    print(f"loadavg at the end {open('/proc/loadavg').read().split()[:3]}")


def ladder_sft_batches():
    """SmolLM2 and the demo task's training rows as the ladder's LoRA step sees them: SFT
    rows (the loss on the label), max_len 256, batches of 4 grouped by length (windows of 16)."""
    from oficina.demo_domain import LABELS, TEMPLATE
    from oficina.models.sources import load_causal_lm
    from oficina.train.data import BatchStream, load_jsonl_dataset

    model, tok = load_causal_lm("smollm2-135m-instruct")
    tok.pad_token = tok.pad_token or tok.eos_token
    task = ROOT / "examples/demo/task/train.jsonl"
    ds = load_jsonl_dataset(task, tok, 256, "sft", TEMPLATE, LABELS)
    return model, BatchStream(ds, 4, seed=0, group_by_length=16)


def bench_frozen_cast(work: Path, steps: int) -> None:
    """The bf16 storage of frozen weights (``train/frozen.py``) on and off, one LoRA step each
    in turn on the same batches, in one process: the ladder's shape (SmolLM2, the demo task's
    SFT rows, batch 4, max_len 256, ``group_by_length`` 16, bf16 autocast, LoRA r 8 on the
    attention projections). Process CPU seconds per step (less moved than wall time by the
    other jobs of a shared machine) and wall seconds; the losses of the two must be equal."""
    from oficina.train.frozen import FrozenCast
    from oficina.train.loop import TrainArgs, make_optimizer
    from oficina.train.memory import keep_freed_memory
    from oficina.train.objectives import SFT
    from oficina.train.recipes import LoraArgs, _apply_lora

    undo_memory = keep_freed_memory()  # as fit runs
    model, stream = ladder_sft_batches()
    torch.manual_seed(0)
    model = _apply_lora(model, LoraArgs(), "CAUSAL_LM").train()
    # AdamW runs its full step at lr 0: the weights stay put, so both settings see the same
    # model (even a 1e-7 lr moves a bf16 loss by ~1e-3: roundings flip through 30 layers)
    opt = make_optimizer(model, TrainArgs(weight_decay=0.0))
    for g in opt.param_groups:
        g["lr"] = 0.0
    params = [p for p in model.parameters() if p.requires_grad]

    def step(i: int, cast: bool) -> tuple[float, float, float]:
        frozen = FrozenCast(model, torch.bfloat16) if cast else None
        c, w = time.process_time(), time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16):
            loss, _ = SFT()(model, stream.batch(i))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out = time.process_time() - c, time.perf_counter() - w, float(loss.detach())
        if frozen:
            frozen.restore()
        return out

    step(0, False), step(0, True)  # warm-up
    res: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    for i in range(1, steps + 1):
        # the same batch for both, in alternating order
        for cast in (True, False) if i % 2 else (False, True):
            torch.manual_seed(i)  # the same LoRA dropout masks
            res[cast].append(step(i, cast))
    undo_memory and undo_memory()
    cpu = {k: sum(r[0] for r in v) / steps for k, v in res.items()}
    wall = {k: sum(r[1] for r in v) / steps for k, v in res.items()}
    same = max(abs(a[2] - b[2]) for a, b in zip(res[True], res[False], strict=True))
    table(
        f"frozen weights stored in bf16 vs float32 (autocast casts them every forward): LoRA on "
        f"SmolLM2, the demo task's rows, batch 4, {steps} steps each, alternating in one process; "
        f"largest loss difference {same:.2g}",
        ["frozen linear weights", "CPU s/step", "wall s/step"],
        [
            ["bf16 (fit's default under bf16)", f"{cpu[True]:.2f}", f"{wall[True]:.2f}"],
            ["float32 (before)", f"{cpu[False]:.2f}", f"{wall[False]:.2f}"],
            ["ratio", f"{cpu[False] / cpu[True]:.2f}x", f"{wall[False] / wall[True]:.2f}x"],
        ],
    )
    print(f"loadavg at the end {open('/proc/loadavg').read().split()[:3]}")


def bench_attention_layer(reps: int = 6) -> None:
    """One attention layer's forward + backward at the ladder's LoRA shape (batch 4, SmolLM2's
    9 heads of 64, 186 tokens, bf16): SDPA causal, SDPA with a padding mask, and the eager
    matmul + float32 softmax (causal mask only). Best of ``reps`` rounds of 5 calls each."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    b, h, t, d = 4, 9, 186, 64
    q, k, v = (torch.randn(b, h, t, d, dtype=torch.bfloat16, requires_grad=True) for _ in "qkv")
    grad = torch.randn(b, h, t, d, dtype=torch.bfloat16)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    real = torch.arange(t)[None, :] < torch.tensor([186, 180, 175, 170])[:, None]
    mask = (causal[None] & real[:, None, :])[:, None]

    def eager(q, k, v):
        s = (q @ k.transpose(-1, -2)) * d**-0.5
        return s.float().masked_fill(~causal, float("-inf")).softmax(-1).to(q.dtype) @ v

    ways = {
        "SDPA is_causal": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "SDPA with a padding mask": lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask
        ),
        "eager (matmul + float32 softmax)": eager,
    }
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(reps):
        for name, f in ways.items():
            t0 = time.perf_counter()
            for _ in range(5):
                f(q, k, v).backward(grad)
            best[name] = min(best[name], (time.perf_counter() - t0) / 5)
    table(
        f"one attention layer, forward + backward, [{b}, {h}, {t}, {d}] bf16, best of {reps}",
        ["attention", "ms"],
        [[n, f"{x * 1e3:.1f}"] for n, x in best.items()],
    )


def interleaved(settings: dict, run, steps: int, trials: int):
    """Each setting's ``run(*setting, first, n) -> (seconds, tokens, losses)`` once as a warm-up,
    then ``trials`` rounds of ``steps`` steps, every other round in reverse order (so no
    setting always runs first on a shared machine). Returns each setting's summed
    [seconds, tokens] and its first round's losses."""
    for setting in settings.values():
        run(*setting, 0, 1)  # warm-up
    totals = {k: [0.0, 0] for k in settings}
    first_losses: dict[str, list[float]] = {}
    for trial in range(trials):
        for name in list(settings) if trial % 2 == 0 else list(settings)[::-1]:
            sec, tok_n, losses = run(*settings[name], 1, steps)
            totals[name][0] += sec
            totals[name][1] += tok_n
            first_losses.setdefault(name, losses)
    return totals, first_losses


def timed_steps(model, objective, opt, stream, first: int, n: int, bf16: bool):
    """``fit``'s step (autocast under bf16, clipped at 1, AdamW) on ``stream``'s batches
    ``first .. first+n-1``: (seconds, real tokens, losses) of the steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    seconds, tokens, losses = 0.0, 0, []
    for i in range(first, first + n):
        batch = stream.batch(i)
        t0 = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss, _ = objective(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        seconds += time.perf_counter() - t0
        tokens += int(batch["attention_mask"].sum())
    return seconds, tokens, losses


def lora_steps(model, stream, first: int, n: int, dropout: float, bf16: bool):
    """Train a fresh LoRA (r 8 on q/k/v/o, seed 0, AdamW at the ladder's 2e-3, clipped at 1)
    on ``stream``'s batches ``first .. first+n-1`` as ``fit`` would (under bf16: autocast, the
    frozen weights stored in bf16), then unload it: (seconds, real tokens, losses) of the steps."""
    import oficina.train.objectives as objectives
    from oficina.train.frozen import FrozenCast
    from oficina.train.loop import TrainArgs, make_optimizer
    from oficina.train.recipes import LoraArgs, _apply_lora

    torch.manual_seed(0)
    m = _apply_lora(model, LoraArgs(r=8, alpha=16, dropout=dropout), "CAUSAL_LM").train()
    frozen = FrozenCast(m, torch.bfloat16) if bf16 else None
    opt = make_optimizer(m, TrainArgs(lr=2e-3, weight_decay=0.0))
    try:
        return timed_steps(m, objectives.SFT(), opt, stream, first, n, bf16)
    finally:
        if frozen is not None:
            frozen.restore()
        m.unload()  # the base again, for the next setting


def steps_table(title: str, what: str, base: str, totals: dict, first_losses: dict) -> None:
    """``interleaved``'s results as a table: tokens/s of each setting, its ratio to the first
    setting's (named ``base`` in the header), and its first round's losses."""
    s0, t0 = next(iter(totals.values()))
    table(
        title,
        [what, "tokens/s", f"vs {base}", "losses (first trial)"],
        [
            [k, f"{t / s:,.0f}", f"{t / s / (t0 / s0):.2f}x", " ".join(f"{x:.3f}" for x in lo)]
            for k, (s, t), lo in ((k, totals[k], first_losses[k]) for k in totals)
        ],
    )


def bench_lora_step(work: Path, steps: int, trials: int = 2) -> None:
    """What a LoRA step of the ladder's shape costs under each setting issue 14 looked at, in
    one process, interleaved (every other trial in reverse), each setting training a fresh
    adapter from the same seed on the same batches (SmolLM2, the demo task's SFT rows, batch 4,
    max_len 256, ``group_by_length`` 16, bf16 autocast with frozen weights in bf16 as ``fit``
    runs, LoRA r 8 on q/k/v/o, AdamW at the ladder's 2e-3). Settings: LoRA dropout 0.05 (the
    ladder before) or 0 (now); a right-padded batch's attention mask kept (before) or dropped
    (``objectives.mask_is_redundant``, now); transformers' SDPA attention or its ``eager`` one
    (matmul + float32 softmax: what ``fit`` runs on batches of at most 192 tokens,
    ``train/attention.py``). Real tokens/s of the
    steps, and each setting's first-trial losses."""
    import oficina.train.objectives as objectives
    from oficina.train.memory import keep_freed_memory

    undo_memory = keep_freed_memory()  # as fit runs
    model, stream = ladder_sft_batches()
    redundant = objectives.mask_is_redundant
    settings = {  # name: (LoRA dropout, drop the mask, attention)
        "before: dropout 0.05, mask kept, sdpa": (0.05, False, "sdpa"),
        "dropout 0.05, mask dropped, sdpa": (0.05, True, "sdpa"),
        "dropout 0, mask kept, sdpa": (0.0, False, "sdpa"),
        "dropout 0, mask dropped, sdpa": (0.0, True, "sdpa"),
        "now: dropout 0, mask dropped, eager attention": (0.0, True, "eager"),
    }

    def run(dropout: float, drop_mask: bool, attn: str, first: int, n: int):
        model.config._attn_implementation = attn
        objectives.mask_is_redundant = redundant if drop_mask else (lambda b: False)
        try:
            return lora_steps(model, stream, first, n, dropout=dropout, bf16=True)
        finally:
            objectives.mask_is_redundant = redundant
            model.config._attn_implementation = "sdpa"

    totals, first_losses = interleaved(settings, run, steps, trials)
    steps_table(
        f"a LoRA step of the ladder's shape, {steps} steps x {trials} interleaved trials per "
        "setting (tokens/s over all trials)",
        "setting",
        "before",
        totals,
        first_losses,
    )
    undo_memory and undo_memory()
    bench_attention_layer()
    print(f"loadavg at the end {open('/proc/loadavg').read().split()[:3]}")


def bench_precision(work: Path, steps: int, trials: int = 2) -> None:
    """What ``precision: auto`` decides, and why: a LoRA step of the ladder's shape (as
    ``bench_lora_step``'s "now" setting) under bf16 autocast with the frozen weights stored in
    bf16 (what ``fit`` runs in bf16) vs plain float32, then a batch-1 scoring forward of 128
    tokens with bfloat16 vs float32 weights (what the ladder's ``dtype`` picks), interleaved in
    one process. ``oficina.measure.native_bf16()`` says whether oneDNN runs bf16 natively
    (AVX-512 BF16, AMX; where it does not, bf16 is emulated), ``fast_bf16()`` what ``auto``
    follows (AMX: AVX-512 BF16 alone measured slower than float32)."""
    from oficina.measure import auto_precision, fast_bf16, native_bf16

    flags = Path("/proc/cpuinfo").read_text().split()
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    print(
        f"CPU flags: {' '.join(have)}; oficina.measure.native_bf16() = {native_bf16()}, "
        f"fast_bf16() = {fast_bf16()}: auto = {auto_precision('auto')}"
    )
    model, stream = ladder_sft_batches()
    model.config._attn_implementation = "eager"

    def run(bf16: bool, first: int, n: int):
        return lora_steps(model, stream, first, n, dropout=0.0, bf16=bf16)

    settings = {"fp32": (False,), "bf16 autocast, frozen weights bf16": (True,)}
    totals, first_losses = interleaved(settings, run, steps, trials)
    steps_table(
        f"a LoRA step of the ladder's shape, {steps} steps x {trials} interleaved trials",
        "precision",
        "fp32",
        totals,
        first_losses,
    )
    model.config._attn_implementation = "sdpa"
    ids = stream.batch(0)["input_ids"][:1, :128]
    timing = {"float32": [], "bfloat16": []}
    with torch.no_grad():
        for r in range(2 * trials + 1):
            for dt in ("float32", "bfloat16") if r % 2 == 0 else ("bfloat16", "float32"):
                m = model.to(getattr(torch, dt))
                t0 = time.perf_counter()
                m(input_ids=ids)
                if r:  # the first round warms up
                    timing[dt].append(time.perf_counter() - t0)
    model.to(torch.float32)
    f32 = float(np.median(timing["float32"]))
    table(
        f"a scoring forward, batch 1 x {ids.shape[1]} tokens, median of {2 * trials}",
        ["weights", "seconds", "vs float32"],
        [[dt, f"{np.median(v):.3f}", f"{np.median(v) / f32:.2f}x"] for dt, v in timing.items()],
    )
    print(f"loadavg at the end {open('/proc/loadavg').read().split()[:3]}")


def bench_distill_step(work: Path, steps: int, trials: int = 2) -> None:
    """A KD step of the ladder's distill rung, before and after issue 14, in one process,
    interleaved (every other trial in reverse): student = smollm2-135m-instruct keeping 10
    evenly spaced layers (``student_from_teacher``), teacher = smollm2-135m-instruct, T 2,
    alpha 0.5, the ladder's SFT batches (``ladder_sft_batches``: batch 4, max_len 256, grouped
    by length), bf16 autocast, AdamW's full step at lr 0 (the weights stay put, so every step
    of every setting sees the same student: a bf16 run's losses drift apart by ~1e-2 within a
    few steps at the rung's 3e-4, roundings flipping through the layers), the same batches.
    Settings: both models' logits over every position (before) or their output layers at the
    target positions only (``KD(fused=True)``), the teacher's linear weights float32 (autocast
    re-casts them each forward; before) or stored in bf16 (what ``fit`` does), and the
    teacher's logits read from the cache ``KD`` fills in a run's first epoch (what every later
    epoch does; warmed on the timed batches first). Precision as ``fit``'s ``auto`` decides: on
    a CPU without native bf16 everything runs in float32 and the bf16-stored settings are left
    out. Real tokens/s, and each setting's losses beside the old path's."""
    from oficina.measure import auto_precision
    from oficina.train.frozen import FrozenCast
    from oficina.train.loop import TrainArgs, make_optimizer
    from oficina.train.memory import keep_freed_memory
    from oficina.train.objectives import KD
    from oficina.train.recipes import student_from_teacher

    undo_memory = keep_freed_memory()  # as fit runs
    teacher, stream = ladder_sft_batches()
    student = student_from_teacher(teacher, 10).train()
    start = {k: v.clone() for k, v in student.state_dict().items()}
    bf16 = auto_precision("auto") == "bf16"
    settings = {  # name: (kept positions only, teacher stored in bf16, its logits cached)
        "before: full logits, teacher float32": (False, False, False),
        "kept positions, teacher float32": (True, False, False),
        "full logits, teacher bf16": (False, True, False),
        "kept positions, teacher bf16": (True, True, False),
        "now, epochs 2+: kept positions, teacher bf16, cached": (True, True, True),
    }
    if not bf16:  # float32 throughout: nothing is stored in bf16
        settings = {k.replace(", teacher bf16", ""): v for k, v in settings.items() if not v[1]}
        settings["now, epochs 2+: kept positions, cached"] = (True, False, True)
    warm = KD(teacher, 2.0, 0.5)  # the cached settings' objective, its cache filled below

    def run(kept: bool, cast: bool, cached: bool, first: int, n: int):
        student.load_state_dict(start)
        opt = make_optimizer(student, TrainArgs(lr=3e-4))
        for g in opt.param_groups:
            g["lr"] = 0.0
        objective = warm if cached else KD(teacher, 2.0, 0.5, fused=kept, cache_mb=0)
        frozen = FrozenCast(teacher, torch.bfloat16) if cast else None
        try:
            return timed_steps(student, objective, opt, stream, first, n, bf16)
        finally:
            if frozen:
                frozen.restore()

    frozen = FrozenCast(teacher, torch.bfloat16) if bf16 else None
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        for i in range(steps + 1):  # the warm-up's batch and the timed ones: the first epoch
            warm(student, stream.batch(i))
    if frozen:
        frozen.restore()
    totals, first_losses = interleaved(settings, run, steps, trials)
    base_name = next(iter(settings))
    base_tps = totals[base_name][1] / totals[base_name][0]
    ref = first_losses[base_name]
    table(
        f"a KD step of the ladder's distill shape (student 10 layers, teacher SmolLM2-135M, "
        f"batch 4, {'bf16' if bf16 else 'float32'}), {steps} steps x {trials} interleaved "
        "trials per setting (tokens/s "
        "over all trials; AdamW at lr 0: every step sees the same student)",
        ["setting", "tokens/s", "s/step", "vs before", "losses (first trial)", "max |d loss|"],
        [
            [
                k,
                f"{t / s:,.0f}",
                f"{s / (steps * trials):.2f}",
                f"{t / s / base_tps:.2f}x",
                " ".join(f"{x:.4f}" for x in lo),
                f"{max(abs(a - b) for a, b in zip(lo, ref, strict=True)):.2g}",
            ]
            for k, (s, t), lo in ((k, totals[k], first_losses[k]) for k in settings)
        ],
    )
    undo_memory and undo_memory()
    print(f"loadavg at the end {open('/proc/loadavg').read().split()[:3]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--what",
        default="speed",
        choices=[
            "speed",
            "pretrain",
            "lora",
            "distill",
            "lora-speed",
            "full-speed",
            "frozen-cast",
            "lora-step",
            "distill-step",
            "precision",
            "all",
        ],  # fmt: skip
    )
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--steps", type=int, default=None, help="override the step count")
    ap.add_argument("--n-test", type=int, default=None, help="lora: test rows to score")
    ap.add_argument("--lr", type=float, default=None, help="lora: learning rate")
    ap.add_argument("--max-len", type=int, default=None, help="lora: truncate examples")
    ap.add_argument("--grad-accum", type=int, default=None, help="lora: micro-batches per step")
    a = ap.parse_args()
    print(machine())
    work = Path(a.work or tempfile.mkdtemp(prefix="oficina-bench-train-"))
    os.environ.setdefault("OFICINA_HOME", str(work / "ws"))
    q = a.quick
    todo = ["speed", "pretrain", "lora", "distill"] if a.what == "all" else [a.what]
    for w in todo:
        t = time.perf_counter()
        if w == "speed":
            bench_speed(work, a.steps or (10 if q else 30), a.compile)
        elif w == "pretrain":
            bench_pretrain(work, a.steps or (60 if q else 200))
        elif w == "lora":
            over: dict = {"train": {}}
            if a.lr:
                over["train"]["lr"] = a.lr
            if a.grad_accum:
                over["train"]["grad_accum"] = a.grad_accum
            if a.max_len:
                over["max_len"] = a.max_len
            bench_lora(work, a.steps or (15 if q else 40), a.n_test or (40 if q else 96), over)
        elif w == "distill":
            bench_distill(work, a.steps or (40 if q else 120))
        elif w in ("lora-speed", "full-speed"):
            bench_finetune_speed(work, w.split("-")[0], a.steps or (8 if q else 30))
        elif w == "frozen-cast":
            bench_frozen_cast(work, a.steps or (4 if q else 10))
        elif w == "lora-step":
            bench_lora_step(work, a.steps or (3 if q else 6))
        elif w == "distill-step":
            bench_distill_step(work, a.steps or (2 if q else 4))
        elif w == "precision":
            bench_precision(work, a.steps or (2 if q else 4))
        print(f"[{w}: {time.perf_counter() - t:.0f}s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
