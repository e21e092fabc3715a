"""The anneal after training (``train.cooldown_steps``): from the best weights, N more steps with
the learning rate falling linearly to 0, one validation, kept only if it is lower. Validation
losses are scripted, so no verdict depends on what the random model learns."""

from __future__ import annotations

import pytest
import torch

from oficina.train import loop
from oficina.train.data import PackedDataset
from oficina.train.loop import FitHooks, TrainArgs, fit
from oficina.train.objectives import CausalLM

# Falls, then rises twice: early stopping (patience 2) at the 4th evaluation, best at step 4.
MAIN = [1.0, 0.8, 0.9, 0.95]


def scripted(monkeypatch, tiny_lm, shards, tmp_path, losses, hooks=None, max_steps=20, **kw):
    """fit() validating every 2 steps on scripted ``losses``; returns (result, model, the
    learning rate of every optimizer step)."""
    from transformers import AutoModelForCausalLM

    it = iter(losses)
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: next(it))
    rates: list[float] = []
    make = loop.make_optimizer

    def recording(*a, **k):
        opt = make(*a, **k)

        class Recording(type(opt)):  # a subclass, so the LR scheduler still wraps a method
            def step(self, *sa, **sk):
                rates.append(self.param_groups[0]["lr"])
                return super().step(*sa, **sk)

        opt.__class__ = Recording
        return opt

    monkeypatch.setattr(loop, "make_optimizer", recording)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    ds = PackedDataset(shards, "train")
    args = TrainArgs(
        lr=1e-2, batch_size=2, eval_every=2, eval_batches=1, warmup_steps=0, min_lr_ratio=1.0,
        precision="fp32", weight_decay=0.0, **{"patience": 2, **kw},
    )  # fmt: skip
    r = fit(model, CausalLM(), ds, ds, args, max_steps, tmp_path / "o", hooks=hooks)
    return r, model, rates


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_lower_annealed_loss_keeps_the_annealed_weights(monkeypatch, tiny_lm, shards, tmp_path):
    base, m0, _ = scripted(monkeypatch, tiny_lm, shards, tmp_path / "a", MAIN)
    assert (base.stopped, base.steps, base.best_step, base.cooldown) == (
        "early_stopping", 8, 4, None,
    )  # fmt: skip
    r, m1, rates = scripted(
        monkeypatch, tiny_lm, shards, tmp_path / "b", [*MAIN, 0.7], cooldown_steps=3
    )
    assert r.cooldown == {"from_step": 4, "steps": 3, "val_loss": 0.7, "kept": True}
    assert r.best_val_loss == 0.7 and r.best_step == 4 and r.steps == 8
    # 8 steps at the constant rate, then 3 from it falling linearly: 3/3, 2/3, 1/3 of it.
    assert rates == pytest.approx([1e-2] * 8 + [1e-2, 2e-2 / 3, 1e-2 / 3])
    assert len(r.history) == 11 and r.train_tokens == base.train_tokens * 11 // 8
    w0, w1 = weights(m0), weights(m1)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # the annealed weights, not step 4's


def test_a_higher_annealed_loss_keeps_the_best_weights(monkeypatch, tiny_lm, shards, tmp_path):
    _, m0, _ = scripted(monkeypatch, tiny_lm, shards, tmp_path / "a", MAIN)
    r, m1, _ = scripted(
        monkeypatch, tiny_lm, shards, tmp_path / "b", [*MAIN, 0.85], cooldown_steps=3
    )
    assert r.cooldown == {"from_step": 4, "steps": 3, "val_loss": 0.85, "kept": False}
    assert r.best_val_loss == 0.8
    w0, w1 = weights(m0), weights(m1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # step 4's weights, restored again


def test_a_run_its_caller_stopped_is_not_annealed(monkeypatch, tiny_lm, shards, tmp_path):
    # A pruned search trial (on_eval returns True) is discarded: annealing it would be waste.
    hooks = FitHooks(on_eval=lambda step, metrics: step == 4)
    r, _, rates = scripted(
        monkeypatch, tiny_lm, shards, tmp_path, MAIN, hooks=hooks, cooldown_steps=3
    )
    assert r.stopped == "on_eval" and r.cooldown is None and len(rates) == 4


def test_the_anneal_depends_on_the_best_step_alone(monkeypatch, tiny_lm, shards, tmp_path):
    # benchmarks/ladder_budget.py's question: a run stopped early at step 8 and a run given 12
    # steps without early stopping, both best at step 4, must anneal to the same model; from the
    # last step's optimizer moments and batches they did not (0.5193 vs 0.5418 on the demo).
    short, m0, _ = scripted(
        monkeypatch, tiny_lm, shards, tmp_path / "a", [*MAIN, 0.7], cooldown_steps=3
    )
    long, m1, _ = scripted(
        monkeypatch, tiny_lm, shards, tmp_path / "b", [*MAIN, 0.97, 0.99, 0.7],
        cooldown_steps=3, patience=0, max_steps=12,
    )  # fmt: skip
    assert (short.steps, long.steps, short.best_step, long.best_step) == (8, 12, 4, 4)
    assert short.cooldown["kept"] and long.cooldown["kept"]
    w0, w1 = weights(m0), weights(m1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def test_without_validation_the_anneal_is_skipped_and_said(tiny_lm, shards, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    args = TrainArgs(batch_size=2, warmup_steps=0, precision="fp32", cooldown_steps=3)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    ds = PackedDataset(shards, "train")
    r = fit(model, CausalLM(), ds, None, args, 4, tmp_path / "o")
    assert r.cooldown is None and len(r.history) == 4
    assert "cooldown_steps 3: no validation data to judge it by, skipped" in capsys.readouterr().out
