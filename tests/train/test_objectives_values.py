"""Every objective's loss and token count against the formula written out here with plain tensor
arithmetic (no F.cross_entropy / F.kl_div), on fixed logits from a stand-in model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from oficina.errors import UserError
from oficina.train.data import IGNORE
from oficina.train.objectives import KD, SFT, CausalLM, Classification, Regression


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are fixed numbers: the objectives see only ``model(**kw).logits``."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(logits.clone())
        self.seen: dict = {}

    def forward(self, input_ids, attention_mask=None, **_):
        self.seen = {"input_ids": input_ids, "attention_mask": attention_mask}
        return SimpleNamespace(logits=self.w * 1.0)


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    return x - torch.log(torch.exp(x).sum(-1, keepdim=True))


def _ce_by_hand(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over the targets that are not IGNORE of -log softmax(logits)[target]."""
    total, n = 0.0, 0
    lp = _log_softmax(logits.double())
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            if int(targets[b, t]) != IGNORE:
                total -= float(lp[b, t, int(targets[b, t])])
                n += 1
    return total / n


def _batch(seed: int = 0, vocab: int = 7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, vocab, generator=g) * 2
    targets = torch.randint(0, vocab, (2, 5), generator=g)
    targets[0, :2] = IGNORE  # a masked prompt
    targets[1, 4] = IGNORE  # and padding
    batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "targets": targets}
    return logits, batch


@pytest.mark.parametrize("objective", [CausalLM(fused=False), SFT(fused=False), CausalLM()])
def test_causal_lm_is_the_mean_over_unmasked_targets(objective):
    logits, batch = _batch()
    loss, n = objective(FixedLogits(logits), batch)
    assert n == 7  # 10 targets, 3 masked
    assert float(loss) == pytest.approx(_ce_by_hand(logits, batch["targets"]), rel=1e-5)


def test_attention_mask_is_passed_to_the_model():
    logits, batch = _batch()
    model = FixedLogits(logits)
    batch["attention_mask"] = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    CausalLM(fused=False)(model, batch)
    assert torch.equal(model.seen["attention_mask"], batch["attention_mask"])
    model.seen = {}
    del batch["attention_mask"]
    CausalLM(fused=False)(model, batch)
    assert model.seen["attention_mask"] is None


def test_classification_and_regression_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    batch = {
        "input_ids": torch.zeros(2, 4, dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
        "labels": torch.tensor([0, 1]),
    }
    loss, n = Classification()(FixedLogits(logits), batch)
    lp = _log_softmax(logits.double())
    assert float(loss) == pytest.approx(-(float(lp[0, 0]) + float(lp[1, 1])) / 2, rel=1e-6)
    assert n == 7  # the tokens the rows hold
    pred = torch.tensor([[0.5], [2.0]])
    batch["labels"] = torch.tensor([1.5, 1.0])
    loss, n = Regression()(FixedLogits(pred), batch)
    assert float(loss) == pytest.approx(((0.5 - 1.5) ** 2 + (2.0 - 1.0) ** 2) / 2) and n == 7


@pytest.mark.parametrize("T, alpha", [(2.0, 0.3), (1.0, 1.0), (0.5, 0.0)])
def test_kd_is_alpha_t2_kl_plus_one_minus_alpha_ce(T, alpha):
    s_logits, batch = _batch(seed=1)
    t_logits, _ = _batch(seed=2)
    loss, n = KD(FixedLogits(t_logits), temperature=T, alpha=alpha)(FixedLogits(s_logits), batch)
    keep = batch["targets"] != IGNORE
    # KL(p_t || p_s) at temperature T, summed over the vocabulary, averaged over the kept tokens
    lt = _log_softmax(t_logits.double() / T)[keep]
    ls = _log_softmax(s_logits.double() / T)[keep]
    kl = float((torch.exp(lt) * (lt - ls)).sum()) / int(keep.sum())
    want = alpha * T**2 * kl + (1 - alpha) * _ce_by_hand(s_logits, batch["targets"])
    assert n == 7
    assert float(loss) == pytest.approx(want, rel=1e-5)


def test_kd_freezes_the_teacher_and_refuses_bad_settings():
    t = FixedLogits(torch.zeros(2, 5, 7))
    KD(t, 2.0, 0.5)
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    for T in (0.0, -1.0):
        with pytest.raises(UserError, match=rf"^temperature must be > 0, got {T}$"):
            KD(t, T, 0.5)
    for a in (-0.1, 1.5):
        with pytest.raises(UserError, match=rf"^alpha must be in \[0, 1\], got {a}$"):
            KD(t, 2.0, a)
    KD(t, 2.0, 0.0), KD(t, 2.0, 1.0)  # the ends are allowed
    _, batch = _batch()
    with pytest.raises(
        UserError,
        match=r"^teacher has 7 logits, student 9: use sequence-level distillation "
        r"\(--method sequence\)$",
    ):
        KD(t, 2.0, 0.5)(FixedLogits(torch.zeros(2, 5, 9)), batch)
    assert math.isfinite(float(KD(t, 2.0, 0.5)(FixedLogits(torch.zeros(2, 5, 7)), batch)[0]))


def test_fused_causal_lm_never_runs_the_output_layer_and_gives_the_same_loss(tiny_lm):
    """The default CausalLM takes the fused path on a plain Llama: the [tokens, vocab] logits
    are never made (the output layer's forward is not called), and the loss is the plain one."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    calls = []
    model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 6), generator=g)
    targets = ids.clone()
    targets[0, :2] = IGNORE
    batch = {"input_ids": ids, "targets": targets}
    fused, n = CausalLM()(model, batch)
    assert (calls, n) == ([], 10)
    plain, _ = CausalLM(fused=False)(model, batch)
    assert calls == [1]
    assert float(fused) == pytest.approx(float(plain), rel=1e-5)
