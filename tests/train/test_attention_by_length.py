"""Eager attention on short batches, SDPA on long ones (train/attention.py): which kernel each
training and validation batch ran, the model's setting back after the run, and the same losses
as SDPA throughout (the kernel is a speed choice, not a change to training)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import oficina.train.attention as attention
from oficina.train.attention import AttentionByLength
from oficina.train.loop import TrainArgs, fit
from oficina.train.objectives import SFT

TEMPLATE = "Passage: {text}\nQuestion: which kind?\nAnswer:"


def _rows(tmp_path, name: str = "task", order=lambda i: i % 2):
    # Rows of very different lengths, so batches fall on both sides of the cut.
    rows = [
        {"text": ("short " if order(i) else "a much longer passage about lists " * 6) + str(i),
         "label": "data" if i % 3 else "code"}
        for i in range(16)
    ]  # fmt: skip
    f = tmp_path / f"{name}.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def _model(tiny_lm):
    return AutoModelForCausalLM.from_pretrained(tiny_lm, attn_implementation="sdpa")


def test_short_batches_run_eager_long_ones_sdpa_and_restore_puts_sdpa_back(tiny_lm):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _model(tiny_lm), LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
    )
    pick = AttentionByLength([model, model])  # one config, however often it is named
    assert len(pick.configs) == 1
    short = {"input_ids": torch.zeros(2, attention.EAGER_MAX_LEN, dtype=torch.long)}
    long = {"input_ids": torch.zeros(2, attention.EAGER_MAX_LEN + 1, dtype=torch.long)}
    cfg = model.get_base_model().config
    assert pick(short) == "eager" and cfg._attn_implementation == "eager"
    assert pick(long) == "sdpa" and cfg._attn_implementation == "sdpa"
    pick(short)
    pick.restore()
    assert cfg._attn_implementation == "sdpa"


def test_a_model_set_to_another_kernel_is_left_alone(tiny_lm):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm, attn_implementation="eager")
    pick = AttentionByLength([model])
    pick({"input_ids": torch.zeros(1, 10_000, dtype=torch.long)})
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fit_switches_per_batch_and_trains_as_sdpa_does(tiny_lm, tmp_path, monkeypatch, precision):
    from oficina.train.data import load_jsonl_dataset

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    ds = load_jsonl_dataset(_rows(tmp_path), tok, 96, "sft", TEMPLATE, None)
    # Validation: short batches, then long ones; each must pick its own kernel, whatever the
    # training batch before it left set.
    val = load_jsonl_dataset(
        _rows(tmp_path, "val", lambda i: i < 8), tok, 96, "sft", TEMPLATE, None
    )
    seen: list[tuple[int, str]] = []

    class Spy(SFT):
        def __call__(self, m, batch):
            seen.append((batch["input_ids"].shape[-1], m.config._attn_implementation))
            return super().__call__(m, batch)

    args = TrainArgs(
        lr=1e-2, batch_size=2, eval_every=3, warmup_steps=1, precision=precision,
        group_by_length=4, seed=3,
    )  # fmt: skip

    def run(cut: int, name: str):
        monkeypatch.setattr(attention, "EAGER_MAX_LEN", cut)
        torch.manual_seed(0)
        model = _model(tiny_lm)
        seen.clear()
        res = fit(model, Spy(), ds, val, args, 6, tmp_path / name)
        assert model.config._attn_implementation == "sdpa"  # the model's own setting is back
        return res, list(seen)

    lengths = sorted({n for n, _ in run(10_000, "probe")[1]})
    assert len(lengths) >= 2, lengths  # the data gives batches of several lengths
    cut = lengths[len(lengths) // 2 - 1]  # some batches at or below it, some above
    mixed, kernels = run(cut, "mixed")
    assert kernels and all(k == ("eager" if n <= cut else "sdpa") for n, k in kernels)
    assert {k for _, k in kernels} == {"eager", "sdpa"}
    plain, kernels = run(0, "sdpa")
    assert {k for _, k in kernels} == {"sdpa"}
    # Same math, other kernel: the losses agree to float rounding (bf16: its rounding).
    tol = 1e-4 if precision == "fp32" else 2e-2
    for (_, a), (_, b) in zip(mixed.history, plain.history, strict=True):
        assert a == pytest.approx(b, rel=tol)
    assert mixed.best_val_loss == pytest.approx(plain.best_val_loss, rel=tol)
    assert mixed.val_history and mixed.best_step == plain.best_step
