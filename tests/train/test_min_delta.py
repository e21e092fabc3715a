"""Early stopping with patience and a minimum change (``train.min_delta``, relative): an
improvement smaller than it counts as a bad evaluation, and the overfitting warning ignores a
rise smaller than it. The validation losses are scripted, so no verdict depends on what the
random model learns."""

from __future__ import annotations

import pytest

from oficina.train import loop
from oficina.train.data import PackedDataset
from oficina.train.loop import TrainArgs, fit, overfitting
from oficina.train.objectives import CausalLM


def scripted_fit(monkeypatch, tiny_lm, shards, tmp_path, losses: list[float], **kw):
    """fit() whose validation returns ``losses`` in turn (one per evaluation, every 2 steps)."""
    from transformers import AutoModelForCausalLM

    it = iter(losses)
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: next(it))
    ds = PackedDataset(shards, "train")
    args = TrainArgs(
        batch_size=2, eval_every=2, eval_batches=1, warmup_steps=0, precision="fp32", **kw
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    return fit(model, CausalLM(), ds, ds, args, 2 * len(losses), tmp_path / "o")


# Falls 1.0 -> 0.80, then creeps down by 0.5% per evaluation: lower every time, never by 1%.
CREEP = [1.0, 0.80, 0.796, 0.792, 0.788, 0.784, 0.780, 0.776]


def test_an_improvement_below_min_delta_counts_as_a_bad_evaluation(
    monkeypatch, tiny_lm, shards, tmp_path
):
    r = scripted_fit(monkeypatch, tiny_lm, shards, tmp_path, CREEP, patience=2, min_delta=0.01)
    # 0.796 and 0.792 are lower than 0.80 but not 1% lower: two bad evaluations, stop at the
    # 4th evaluation (step 8), and the best weights are still the lowest loss seen (0.792).
    assert r.stopped == "early_stopping" and r.steps == 8
    assert r.best_step == 8 and r.best_val_loss == pytest.approx(0.792)


def test_without_min_delta_every_lower_loss_is_an_improvement(
    monkeypatch, tiny_lm, shards, tmp_path
):
    r = scripted_fit(monkeypatch, tiny_lm, shards, tmp_path, CREEP, patience=2, min_delta=0.0)
    assert r.stopped == "max_steps" and r.steps == 16 and r.best_step == 16


def test_min_delta_is_relative_to_the_last_real_improvement(monkeypatch, tiny_lm, shards, tmp_path):
    # 0.80 -> 0.795 (bad) -> 0.789 (1.4% below 0.80: an improvement, resets patience) -> ...
    losses = [1.0, 0.80, 0.795, 0.789, 0.786, 0.783, 0.70, 0.69]
    r = scripted_fit(monkeypatch, tiny_lm, shards, tmp_path, losses, patience=2, min_delta=0.01)
    assert r.stopped == "early_stopping" and r.steps == 12  # 0.786, 0.783: not 1% below 0.789


def test_the_overfitting_warning_ignores_a_blip_below_min_delta():
    # The demo's LoRA: validation fell from 1.21 and ticked up 0.3% while training fell.
    vals = [(7, 1.21), (15, 0.4512), (30, 0.4525)]
    train = [1.9, 0.6, 0.4]
    assert overfitting(vals, train, min_delta=0.01) is None
    assert "rose 0.4512 -> 0.4525" in overfitting(vals, train, min_delta=0.0)
    # A rise beyond 1% while training falls is still flagged; a rise while training rises is not.
    up = [(7, 1.21), (15, 0.4512), (30, 0.47)]
    assert "more than 1.0%" in overfitting(up, train, min_delta=0.01)
    assert overfitting(up, [1.9, 0.4, 0.6], min_delta=0.01) is None


def test_fit_warns_only_past_min_delta(monkeypatch, tiny_lm, shards, tmp_path):
    from transformers import AutoModelForCausalLM

    # Training loss is whatever the model does; pin it so "training fell" is true at each eval.
    ticks = iter(range(1000, 0, -1))

    class Falling(CausalLM):
        def __call__(self, model, batch):
            loss, n = super().__call__(model, batch)
            return loss * 0 + next(ticks) / 1000, n

    losses = [1.21, 0.4512, 0.4525, 0.47]
    it = iter(losses)
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: next(it))
    ds = PackedDataset(shards, "train")
    args = TrainArgs(
        batch_size=2, eval_every=2, eval_batches=1, warmup_steps=0, precision="fp32",
        min_delta=0.01,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    r = fit(model, Falling(), ds, ds, args, 8, tmp_path / "o")
    assert len(r.overfit_warnings) == 1 and "0.4525 -> 0.4700" in r.overfit_warnings[0]
