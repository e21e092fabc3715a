"""Frozen linear weights stored in bf16 under bf16 autocast (train/frozen.py): which tensors,
the same losses and adapter gradients as float32 storage, the float32 originals back after the
run and lent to validation hooks, and a LoRA adapter that still saves in float32 and loads."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from oficina.train.frozen import FrozenCast
from oficina.train.loop import FitHooks, TrainArgs, fit
from oficina.train.objectives import SFT
from oficina.train.recipes import FinetuneConfig, finetune

TEMPLATE = "Passage: {text}\nQuestion: which kind?\nAnswer:"
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Stored bf16 weights are the very values autocast casts to, so the losses agree exactly in
# practice; the tolerance only leaves room for a different summation order in a kernel.
LOSS_RTOL = 1e-5


def _lora(model, r: int = 4):
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )  # fmt: skip
    for n, p in m.named_parameters():  # LoRA B starts at zero: move it so gradients flow
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    return m


def _tiny_lora(seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    return _lora(LlamaForCausalLM(cfg))


def _base_linear_weights(model) -> dict[str, torch.nn.Parameter]:
    return {
        n: p
        for n, p in model.named_parameters()
        if any(f"{k}.weight" in n or f"{k}.base_layer.weight" in n for k in LINEARS)
    }


def test_only_frozen_linears_change_dtype_and_restore_puts_the_originals_back():
    model = _tiny_lora()
    before = {n: (p.data, p.detach().clone()) for n, p in model.named_parameters()}
    frozen = FrozenCast(model, torch.bfloat16)
    base = _base_linear_weights(model)
    assert len(base) == 2 * len(LINEARS) == frozen.count  # 2 layers, no biases
    for n, p in model.named_parameters():
        want = torch.bfloat16 if n in base else torch.float32
        assert p.dtype == want, n  # LoRA A/B, embedding (= the tied head), norms: float32
        if n in base:
            assert torch.equal(p.data, before[n][1].to(torch.bfloat16))
    assert model.get_output_embeddings().weight.dtype == torch.float32
    with frozen.originals():
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in base.values())
    frozen.restore()
    for n, p in model.named_parameters():
        assert p.data_ptr() == before[n][0].data_ptr() and torch.equal(p, before[n][1]), n


def test_bf16_storage_gives_the_float32_storage_loss_and_adapter_gradients():
    batch = {
        "input_ids": torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(1)),
        "targets": torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(2)),
    }
    batch["targets"][:, :5] = -100  # SFT: the prompt carries no loss

    def run(model):
        with torch.autocast("cpu", torch.bfloat16):
            loss, _ = SFT()(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return loss.detach(), grads

    model = _tiny_lora()
    ref_loss, ref_grads = run(model)
    frozen = FrozenCast(model, torch.bfloat16)
    loss, grads = run(model)
    frozen.restore()
    torch.testing.assert_close(loss, ref_loss, rtol=LOSS_RTOL, atol=0)
    assert grads.keys() == ref_grads.keys() and all("lora_" in k for k in grads)
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=LOSS_RTOL, atol=1e-7, msg=k)


def _rows(tmp_path):
    words = {"data": "append items to a list and index the list", "code": "def a function"}
    rows = [{"text": f"{w} number {i}", "label": k} for i in range(12) for k, w in words.items()]
    f = tmp_path / "task.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_fit_trains_on_bf16_storage_lends_float32_to_hooks_and_restores_it(tiny_lm, tmp_path):
    from oficina.train.data import load_jsonl_dataset

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    ds = load_jsonl_dataset(_rows(tmp_path), tok, 64, "sft", TEMPLATE, None)
    model = _lora(AutoModelForCausalLM.from_pretrained(tiny_lm))
    frozen_before = {
        n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad
    }
    q = next(p for n, p in model.named_parameters() if "q_proj.base_layer.weight" in n)
    in_steps, in_hook = [], []

    class Spy(SFT):
        def __call__(self, m, batch):
            in_steps.append(q.dtype)
            return super().__call__(m, batch)

    def metrics(m, batches):
        in_hook.append(q.dtype)
        with torch.no_grad():  # no autocast: the way tune's head metrics run the model
            m(input_ids=batches[0]["input_ids"])
        return {"seen": 1.0}

    args = TrainArgs(lr=1e-2, batch_size=4, eval_every=2, warmup_steps=1, precision="bf16")
    fit(model, Spy(), ds, ds, args, 4, tmp_path / "run", hooks=FitHooks(eval_metrics=metrics))
    assert in_steps and set(in_steps) == {torch.bfloat16}
    assert in_hook and set(in_hook) == {torch.float32}
    after = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert after.keys() == frozen_before.keys()
    for n, p in after.items():
        assert p.dtype == torch.float32 and torch.equal(p, frozen_before[n]), n
    # fp32 runs store nothing differently
    in_steps.clear()
    fit(model, Spy(), ds, None, args.model_copy(update={"precision": "fp32"}), 1, tmp_path / "r2")
    assert in_steps == [torch.float32]


def test_lora_finetune_loss_curve_matches_float32_storage_and_the_adapter_loads(
    tiny_lm, tmp_path, monkeypatch
):
    from peft import PeftModel
    from safetensors.torch import load_file

    def run(out):
        return finetune(
            FinetuneConfig(
                model=str(tiny_lm),
                data=str(_rows(tmp_path)),
                template=TEMPLATE,
                out=str(out),
                max_steps=6,
                lora={"r": 4, "alpha": 8},
                train=TrainArgs(
                    lr=2e-2, batch_size=4, eval_every=3, warmup_steps=1, precision="bf16"
                ),
            )  # fmt: skip
        )

    fast = run(tmp_path / "bf16")
    adapter = load_file(tmp_path / "bf16" / "adapter_model.safetensors")
    assert adapter and all(t.dtype == torch.float32 for t in adapter.values())
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), str(tmp_path / "bf16"))
    monkeypatch.setattr("oficina.train.loop.FrozenCast", lambda model, dtype: None)
    ref = run(tmp_path / "fp32-stored")
    got, want = [x for _, x in fast["loss_curve"]], [x for _, x in ref["loss_curve"]]
    assert len(got) == len(want) == 6
    assert got == pytest.approx(want, rel=LOSS_RTOL)
    assert fast["best_val_loss"] == pytest.approx(ref["best_val_loss"], rel=LOSS_RTOL)


def test_lora_bf16_run_stopped_and_resumed_matches_an_uninterrupted_run_bitwise(tiny_lm, tmp_path):
    """The run stops after step 3 (a hook's stop, checkpoint kept) and resumes to step 6: the
    base is cast again from the same float32 weights, so the curve is the uninterrupted one."""
    rows = _rows(tmp_path)

    def run(out, hooks=None, resume=False):
        cfg = FinetuneConfig(
            model=str(tiny_lm), data=str(rows), template=TEMPLATE, out=str(out), max_steps=6,
            lora={"r": 4, "alpha": 8, "dropout": 0.1}, resume=resume,
            train=TrainArgs(lr=2e-2, batch_size=4, eval_every=3, warmup_steps=1, precision="bf16",
                            deterministic=True, keep_checkpoints=hooks is not None, log_every=1),
        )  # fmt: skip
        return finetune(cfg, hooks=hooks)

    whole = run(tmp_path / "whole")
    stop_at_3 = FitHooks(on_eval=lambda step, metrics: step == 3)
    first = run(tmp_path / "split", hooks=stop_at_3)
    assert first["steps"] == 3 and first["stopped"] == "on_eval"
    resumed = run(tmp_path / "split", resume=True)
    assert resumed["steps"] == 6
    assert resumed["loss_curve"] == whole["loss_curve"]


@pytest.mark.parametrize("native, stored", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_precision_trains_in_bf16_only_where_the_cpu_has_it(
    tiny_lm, tmp_path, monkeypatch, native, stored
):
    # The default: bf16 on AMX CPUs, fp32 elsewhere: emulated bf16 made a SmolLM2 step 5x
    # slower on AVX2 alone (2026-11-30), and AVX-512 BF16 without AMX 0.57x (2026-12-02).
    from oficina import measure
    from oficina.train.data import load_jsonl_dataset

    monkeypatch.setattr(measure, "_FAST_BF16", native)
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    ds = load_jsonl_dataset(_rows(tmp_path), tok, 64, "sft", TEMPLATE, None)
    model = _lora(AutoModelForCausalLM.from_pretrained(tiny_lm))
    q = next(p for n, p in model.named_parameters() if "q_proj.base_layer.weight" in n)
    seen = []

    class Spy(SFT):
        def __call__(self, m, batch):
            seen.append(q.dtype)
            return super().__call__(m, batch)

    args = TrainArgs(lr=1e-2, batch_size=4, warmup_steps=1)
    assert args.precision == "auto"
    fit(model, Spy(), ds, None, args, 2, tmp_path / "run")
    assert seen == [stored, stored]


def test_bf16_on_a_cpu_that_emulates_it_says_so(tiny_lm, tmp_path, monkeypatch, capsys):
    from oficina import measure
    from oficina.train.data import load_jsonl_dataset

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    ds = load_jsonl_dataset(_rows(tmp_path), tok, 64, "sft", TEMPLATE, None)
    model = _lora(AutoModelForCausalLM.from_pretrained(tiny_lm))
    said = {}
    for native in (False, True):
        monkeypatch.setattr(measure, "_NATIVE_BF16", native)
        args = TrainArgs(lr=1e-2, batch_size=4, warmup_steps=1, precision="bf16")
        fit(model, SFT(), ds, None, args, 1, tmp_path / f"run{native}")
        said[native] = capsys.readouterr().out + capsys.readouterr().err
    assert "this CPU emulates" in said[False] and "this CPU emulates" not in said[True]
