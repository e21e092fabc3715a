"""``train.select_by``: the best weights, patience and a cooldown's verdict read a metric the
caller's validation hook computes (higher is better, ties to the lower loss) instead of the
validation loss. Losses and metrics are scripted, so no verdict depends on what the random model
learns; the weights kept are checked by value."""

from __future__ import annotations

import pytest
import torch

from oficina.errors import UserError
from oficina.train import loop
from oficina.train.data import PackedDataset
from oficina.train.loop import FitHooks, TrainArgs, fit, selection_key


def scripted(monkeypatch, tiny_lm, shards, tmp_path, losses, accs, **kw):
    """fit() validating every 2 steps; evaluation ``i`` returns ``losses[i]`` and the hook
    ``accs[i]``; each evaluation records a fingerprint of the weights it saw."""
    from transformers import AutoModelForCausalLM

    it_loss, it_acc = iter(losses), iter(accs)
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: next(it_loss))
    seen: list[torch.Tensor] = []
    modes: list[bool] = []

    def hook(model, _batches):
        seen.append(next(model.parameters()).detach().clone())
        modes.append(model.training)
        return {"accuracy": next(it_acc)}

    ds = PackedDataset(shards, "train")
    args = TrainArgs(
        batch_size=2, eval_every=2, eval_batches=1, warmup_steps=0, precision="fp32", lr=1e-2,
        select_by="accuracy", **kw,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    n_steps = 2 * (len(losses) - (1 if kw.get("cooldown_steps") else 0))
    r = fit(model, _objective(), ds, ds, args, n_steps, tmp_path / "o",
            hooks=FitHooks(eval_metrics=hook))  # fmt: skip
    return r, model, seen, modes


def _objective():
    from oficina.train.objectives import CausalLM

    return CausalLM()


def test_the_best_weights_are_the_highest_metric_not_the_lowest_loss(
    monkeypatch, tiny_lm, shards, tmp_path
):
    # The loss keeps falling; accuracy peaks at the 2nd evaluation (step 4).
    losses = [1.0, 0.9, 0.8, 0.7]
    accs = [0.50, 0.75, 0.60, 0.70]
    r, model, seen, modes = scripted(monkeypatch, tiny_lm, shards, tmp_path, losses, accs)
    assert r.select_by == "accuracy" and r.best_step == 4 and r.best_metric == 0.75
    assert r.best_val_loss == pytest.approx(0.9)  # the loss of the weights kept, not the lowest
    assert r.select_history == [(2, 0.50), (4, 0.75), (6, 0.60), (8, 0.70)]
    assert [s for s, _ in r.val_history] == [2, 4, 6, 8]
    # The model returned holds the weights the hook scored at step 4, and the hook ran them in
    # eval mode.
    assert torch.equal(next(model.parameters()).detach(), seen[1])
    assert not torch.equal(seen[1], seen[3])
    assert modes == [False] * 4


def test_a_tie_goes_to_the_lower_loss(monkeypatch, tiny_lm, shards, tmp_path):
    r, *_ = scripted(monkeypatch, tiny_lm, shards, tmp_path, [1.0, 0.8, 0.9], [0.6, 0.6, 0.6])
    assert r.best_step == 4 and r.best_val_loss == pytest.approx(0.8)


def test_patience_counts_the_metric(monkeypatch, tiny_lm, shards, tmp_path):
    # The loss falls every time; accuracy rises 0.50 -> 0.60, then creeps (+0.3%: under 1%)
    # twice: two bad evaluations, stop at step 8 although the loss still falls.
    losses = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    accs = [0.50, 0.60, 0.6018, 0.6036, 0.9, 0.9]
    r, *_ = scripted(
        monkeypatch, tiny_lm, shards, tmp_path, losses, accs, patience=2, min_delta=0.01
    )
    assert r.stopped == "early_stopping" and r.steps == 8
    assert r.best_step == 8 and r.best_metric == pytest.approx(0.6036)


def test_a_cooldown_is_kept_when_the_metric_rises(monkeypatch, tiny_lm, shards, tmp_path):
    # Two evaluations, then the anneal's: its loss is higher but its accuracy is better.
    r, *_ = scripted(
        monkeypatch, tiny_lm, shards, tmp_path, [1.0, 0.8, 0.95], [0.5, 0.6, 0.7],
        cooldown_steps=2,
    )  # fmt: skip
    assert r.cooldown["kept"] and r.cooldown["accuracy"] == 0.7
    assert r.best_metric == 0.7 and r.best_val_loss == pytest.approx(0.95)


def test_a_cooldown_with_a_lower_metric_is_not_kept(monkeypatch, tiny_lm, shards, tmp_path):
    r, model, seen, _ = scripted(
        monkeypatch, tiny_lm, shards, tmp_path, [1.0, 0.8, 0.5], [0.5, 0.6, 0.55],
        cooldown_steps=2,
    )  # fmt: skip
    assert not r.cooldown["kept"] and r.best_metric == 0.6
    assert torch.equal(next(model.parameters()).detach(), seen[1])  # step 4's weights again


def test_select_by_a_metric_without_a_hook_is_refused(tiny_lm, shards, tmp_path):
    from transformers import AutoModelForCausalLM

    ds = PackedDataset(shards, "train")
    args = TrainArgs(batch_size=2, eval_every=2, precision="fp32", select_by="accuracy")
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    with pytest.raises(UserError, match="select_by 'accuracy' needs a validation hook"):
        fit(model, _objective(), ds, ds, args, 2, tmp_path / "o")


def test_a_hook_without_the_metric_is_named():
    with pytest.raises(UserError, match=r"returned no 'accuracy' \(it returned \['f1'\]\)"):
        selection_key("accuracy", 1.0, {"val_f1": 0.3})
    assert selection_key("loss", 0.7, {}) == [0.7]
    assert selection_key("accuracy", 0.7, {"val_accuracy": 0.4}) == [-0.4, 0.7]


def test_a_hook_that_computes_the_loss_replaces_the_loss_pass(
    monkeypatch, tiny_lm, shards, tmp_path
):
    """The ladder's label scoring yields the validation loss from the passes it runs anyway: a
    ``loss`` among the hook's metrics is the validation loss, and fit runs no pass of its own."""
    from transformers import AutoModelForCausalLM

    def no_pass(*a, **k):
        raise AssertionError("fit ran its own loss pass")

    monkeypatch.setattr(loop, "evaluate", no_pass)
    scripted_ = iter([(0.8, 0.5), (0.6, 0.5), (0.7, 0.9)])

    def hook(model, _batches):
        loss, acc = next(scripted_)
        return {"loss": loss, "accuracy": acc}

    ds = PackedDataset(shards, "train")
    args = TrainArgs(batch_size=2, eval_every=2, eval_batches=1, warmup_steps=0, lr=1e-2,
                     precision="fp32", select_by="accuracy")  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    r = fit(model, _objective(), ds, ds, args, 6, tmp_path / "o", hooks=FitHooks(eval_metrics=hook))
    assert [v for _, v in r.val_history] == [0.8, 0.6, 0.7]
    assert r.select_history == [(2, 0.5), (4, 0.5), (6, 0.9)]  # no "val_loss" metric twice
    assert r.best_step == 6 and r.best_val_loss == pytest.approx(0.7)


def test_the_hooks_per_row_answers_are_kept_per_validation_not_logged(
    monkeypatch, tiny_lm, shards, tmp_path
):
    """An ``answers`` entry is not a metric: fit keeps it per validation step
    (``val_answers``, what the ladder's budget check pairs) and logs only the numbers."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: 1.0)
    scripted_ = iter([[["a", "a"], ["b", "a"]], [["a", "a"], ["a", "a"]], [["b", "a"], ["b", "a"]]])
    seen_by_on_eval: list[dict] = []

    def hook(model, _batches):
        answers = next(scripted_)
        return {"accuracy": sum(p == g for p, g in answers) / 2, "answers": answers}

    def on_eval(step, metrics):
        seen_by_on_eval.append(dict(metrics))
        return False

    ds = PackedDataset(shards, "train")
    args = TrainArgs(batch_size=2, eval_every=2, eval_batches=1, warmup_steps=0, lr=1e-2,
                     precision="fp32", select_by="accuracy")  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)

    class Run(loop.NullRun):
        logged: list[dict] = []

        def log(self, metrics, step=None):
            self.logged.append(dict(metrics))

    r = fit(model, _objective(), ds, ds, args, 6, tmp_path / "o", run=Run(),
            hooks=FitHooks(eval_metrics=hook, on_eval=on_eval))  # fmt: skip
    assert r.val_answers == [
        (2, [["a", "a"], ["b", "a"]]),
        (4, [["a", "a"], ["a", "a"]]),
        (6, [["b", "a"], ["b", "a"]]),
    ]
    assert r.select_history == [(2, 0.5), (4, 1.0), (6, 0.0)] and r.best_step == 4
    assert all("val_answers" not in m and "answers" not in m for m in seen_by_on_eval)
    val_logs = [m for m in Run.logged if "val_accuracy" in m]
    assert len(val_logs) == 3 and not any("answers" in m or "val_answers" in m for m in val_logs)
