"""The chunked output layer + cross-entropy gives the plain path's loss and gradients (fp32:
to rounding; bf16 autocast: to bf16 tolerances), skips -100 targets, copes with chunk sizes that
do not divide the token count, and trains a tiny model to the same losses as the plain path."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from oficina.train.data import IGNORE, PackedDataset
from oficina.train.fused_ce import (
    causal_lm_parts,
    fused_linear_cross_entropy,
    reference_linear_cross_entropy,
)
from oficina.train.loop import TrainArgs, fit
from oficina.train.objectives import CausalLM

# bf16 autocast: the logits and both gradient matmuls are bf16 on either path, so gradients
# agree to a few bf16 ulps (2^-8 ≈ 0.4%) relative to their largest entry; the loss (fp32
# softmax over the same bf16 logits) to 1e-4.
BF16_GRAD_RTOL = 2e-2
BF16_LOSS_RTOL = 1e-4


def _case(n=37, d=16, vocab=101, ignored_every=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(vocab, d, generator=g) * 0.3
    targets = torch.randint(0, vocab, (n,), generator=g)
    if ignored_every:
        targets[::ignored_every] = IGNORE
    return hidden, weight, targets


def _loss_and_grads(fn, hidden, weight, targets, bf16=False, scale=1.0):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = fn(h, w, targets)
    (loss * scale).backward()
    return loss.detach(), h.grad, w.grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("chunk", [1, 5, 8, 27, 37, 1000])
@pytest.mark.parametrize("compiled", [False, True])
def test_fp32_matches_plain_path(chunk, compiled):
    hidden, weight, targets = _case()
    ref = _loss_and_grads(reference_linear_cross_entropy, hidden, weight, targets)
    got = _loss_and_grads(
        lambda h, w, t: fused_linear_cross_entropy(h, w, t, chunk_size=chunk, compiled=compiled),
        hidden,
        weight,
        targets,
    )
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-5, atol=1e-7)
    assert got[1][::4].abs().max() == 0  # ignored targets: no gradient into their hidden rows


@pytest.mark.parametrize("compiled", [False, True])
def test_bf16_autocast_matches_plain_path_within_bf16_tolerance(compiled):
    hidden, weight, targets = _case(n=300, d=64, vocab=1000, ignored_every=7)
    ref = _loss_and_grads(reference_linear_cross_entropy, hidden, weight, targets, bf16=True)
    got = _loss_and_grads(
        lambda h, w, t: fused_linear_cross_entropy(h, w, t, chunk_size=77, compiled=compiled),
        hidden,
        weight,
        targets,
        bf16=True,
    )
    assert got[0].dtype == torch.float32
    assert abs(float(got[0] - ref[0])) <= BF16_LOSS_RTOL * float(ref[0])
    assert got[1].dtype == got[2].dtype == torch.float32
    assert _rel(got[1], ref[1]) < BF16_GRAD_RTOL
    assert _rel(got[2], ref[2]) < BF16_GRAD_RTOL
    # and the fp32 answer is the same to bf16 precision
    exact = _loss_and_grads(reference_linear_cross_entropy, hidden, weight, targets)
    assert _rel(got[2], exact[2]) < BF16_GRAD_RTOL


def test_backward_scales_by_the_incoming_gradient_and_batched_shapes_work():
    hidden, weight, targets = _case(n=24, ignored_every=3)
    h3, t2 = hidden.view(4, 6, -1), targets.view(4, 6)  # [batch, seq, d] and [batch, seq]
    ref = _loss_and_grads(reference_linear_cross_entropy, h3, weight, t2, scale=0.25)
    got = _loss_and_grads(
        lambda h, w, t: fused_linear_cross_entropy(h, w, t, chunk_size=7),
        h3,
        weight,
        t2,
        scale=0.25,
    )
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert got[1].shape == h3.shape


def test_without_grad_only_the_loss_and_all_ignored_is_nan_like_the_plain_path():
    hidden, weight, targets = _case()
    with torch.no_grad():
        a = fused_linear_cross_entropy(hidden, weight, targets, chunk_size=10)
        b = reference_linear_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    none = torch.full_like(targets, IGNORE)
    assert torch.isnan(fused_linear_cross_entropy(hidden, weight, none))
    assert torch.isnan(reference_linear_cross_entropy(hidden, weight, none))
    with pytest.raises(ValueError):
        fused_linear_cross_entropy(hidden, weight, targets, chunk_size=0)


def _tiny_llama(vocab=300, seed=0, tie=True):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=tie,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def _batch(vocab=300, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 17), generator=g)
    targets = ids[:, 1:].clone()
    targets[0, :5] = IGNORE  # an SFT-style masked prompt
    return {"input_ids": ids[:, :-1].contiguous(), "targets": targets}


def _objective_grads(model, objective, batch):
    model.zero_grad(set_to_none=True)
    loss, n = objective(model, batch)
    loss.backward()
    return (
        loss.detach(),
        n,
        {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
    )


@pytest.mark.parametrize("tie", [True, False])
def test_objective_fused_equals_plain_for_tied_and_untied_heads(tie):
    model = _tiny_llama(tie=tie)
    assert causal_lm_parts(model) is not None
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    batch = _batch()
    fused = _objective_grads(model, CausalLM(fused=True, chunk_size=10), batch)
    plain = _objective_grads(model, CausalLM(fused=False), batch)
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-6, atol=1e-6)
    assert fused[1] == plain[1] == 3 * 16 - 5
    assert fused[2].keys() == plain[2].keys()
    for k in plain[2]:
        torch.testing.assert_close(fused[2][k], plain[2][k], rtol=1e-4, atol=1e-6, msg=k)


def test_lora_model_takes_the_fused_path_with_the_same_adapter_gradients():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    for n, p in model.named_parameters():  # LoRA B starts at zero: move it so gradients flow
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    parts = causal_lm_parts(model)
    assert parts is not None and not parts[1].weight.requires_grad  # frozen head: no grad_w work
    batch = _batch()
    fused = _objective_grads(model, CausalLM(fused=True, chunk_size=9), batch)
    plain = _objective_grads(model, CausalLM(fused=False), batch)
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-6, atol=1e-6)
    assert fused[2].keys() == plain[2].keys() and all("lora_" in k for k in plain[2])
    for k in plain[2]:
        torch.testing.assert_close(fused[2][k], plain[2][k], rtol=1e-4, atol=1e-6, msg=k)


def test_models_that_cannot_take_the_fused_path_fall_back():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = _tiny_llama()
    assert causal_lm_parts(torch.compile(model))[1] is model.lm_head  # compile wrapper: fine
    model.config.final_logit_softcapping = 30.0  # a head that changes the logits
    assert causal_lm_parts(model) is None

    class Wrapper(torch.nn.Module):  # what DDP looks like: the work is in the wrapper's forward
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert causal_lm_parts(Wrapper(_tiny_llama())) is None
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100))
    assert causal_lm_parts(gpt2) is None  # not a model type known to be plain
    batch = {"input_ids": torch.randint(0, 100, (2, 5)), "targets": torch.randint(0, 100, (2, 5))}
    loss, n = CausalLM()(gpt2, batch)  # the plain path still answers
    assert torch.isfinite(loss) and n == 10


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_loop_losses_match_with_and_without_fusion(tiny_lm, shards, tmp_path, precision):
    from transformers import AutoModelForCausalLM

    ds = PackedDataset(shards, "train")
    histories = []
    for fused in (True, False):
        model = AutoModelForCausalLM.from_pretrained(tiny_lm)
        args = TrainArgs(lr=3e-3, batch_size=4, warmup_steps=2, precision=precision, log_every=1)
        r = fit(
            model, CausalLM(fused=fused, chunk_size=50), ds, None, args, 5, tmp_path / str(fused)
        )
        histories.append([x for _, x in r.history])
    fused, plain = histories
    assert len(fused) == 5 and fused[-1] < fused[0]
    tol = 1e-5 if precision == "fp32" else 2e-3
    assert fused == pytest.approx(plain, rel=tol), (fused, plain)


def test_compile_decoder_is_undone_and_skips_models_off_the_fused_path():
    from oficina.train.fused_ce import compile_decoder

    model = _tiny_llama()
    undo = compile_decoder(model)
    assert model.model._compiled_call_impl is not None  # compiled lazily, on the first call
    undo()
    assert model.model._compiled_call_impl is None
    model.config.final_logit_softcapping = 30.0
    assert compile_decoder(model) is None


def test_auto_chunk_bounds_one_chunk_of_logits():
    from oficina.train.fused_ce import auto_chunk

    assert auto_chunk(49152) == 2048  # SmolLM2: 100 MB of bf16 logits per chunk
    assert auto_chunk(128256) == 1024  # Llama 3
    assert auto_chunk(32000) == 4096
    assert auto_chunk(256) == 8192 and auto_chunk(10**7) == 256  # the clamps
    for v in (1000, 49152, 151936):
        c = auto_chunk(v)
        assert c & (c - 1) == 0 and (c * v <= 2**27 or c == 256)
