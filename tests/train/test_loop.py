"""The one loop: loss goes down, early stopping and the overfitting warning, NaN stops before
the optimizer step, the run folder gets metrics and a loss curve, output is a plain HF dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from oficina.errors import UserError
from oficina.train.data import PackedDataset
from oficina.train.loop import TrainArgs, TrainingStopped, fit
from oficina.train.objectives import CausalLM
from oficina.train.recipes import PretrainConfig, pretrain


def _run_dir(summary) -> Path:
    from oficina.workspace import get_run

    return Path(get_run(summary["run_id"])["dir"])


def test_pretrain_lowers_val_loss_and_writes_a_hf_dir(tiny_lm, shards, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    s = pretrain(
        PretrainConfig(
            init=str(tiny_lm),
            data=str(shards),
            out=str(out),
            max_steps=40,
            train=TrainArgs(
                lr=3e-3, batch_size=4, eval_every=10, warmup_steps=5, report_to=["tensorboard"]
            ),
        )
    )
    run = _run_dir(s)
    vals = [
        json.loads(x)["val_loss"]
        for x in (run / "metrics.jsonl").read_text().splitlines()
        if "val_loss" in x
    ]
    assert len(vals) == 4 and vals[-1] < vals[0] - 0.2, vals
    assert s["best_val_loss"] == pytest.approx(min(vals))
    assert s["params_total"] == s["params_trainable"] > 100_000
    assert s["steps"] == 40 and s["train_tokens"] == 40 * 4 * 32 and s["tokens_per_s"] > 0
    assert s["flops"] > 0 and s["peak_memory_mb"] > 0
    assert (run / "loss_curve.png").stat().st_size > 5_000
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not (out / "checkpoints").exists()  # cleared after success
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) and model.config.hidden_size == 64
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "completed" and meta["summary"]["steps"] == 40
    assert {o["name"] for o in meta["outputs"]} == {"model"}


def test_preset_from_scratch_uses_the_shards_tokenizer(tiny_lm, shards, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = pretrain(
        PretrainConfig(
            model="tiny",
            data=str(shards),
            out=str(tmp_path / "o"),
            max_steps=2,
            train=TrainArgs(batch_size=2, eval_batches=1),
        )
    )
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    assert m.config.hidden_size == 128 and m.config.num_hidden_layers == 4
    assert m.config.vocab_size == len(AutoTokenizer.from_pretrained(tiny_lm))
    assert s["params_total"] == m.num_parameters()


def test_long_run_on_tiny_data_overfits_and_stops_early(tiny_lm, tmp_path, make_shards):
    data = make_shards(tmp_path / "few", tiny_lm, seq_len=16, n_docs=2)
    s = pretrain(
        PretrainConfig(
            model=str(tiny_lm),
            data=str(data),
            out=str(tmp_path / "out"),
            max_steps=400,
            train=TrainArgs(
                lr=1e-2,
                batch_size=4,
                eval_every=10,
                patience=2,
                warmup_steps=5,
                weight_decay=0.0,
                precision="fp32",
                eval_batches=4,
            ),
        )
    )
    assert s["stopped"] == "early_stopping" and s["steps"] < 400
    assert s["overfit_warnings"] >= 1
    assert s["best_step"] < s["steps"]
    lines = (_run_dir(s) / "metrics.jsonl").read_text()
    assert "overfitting_warning" in lines and "early_stopping" in lines


def test_nan_loss_stops_before_the_optimizer_touches_the_weights(tiny_lm, shards, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    inner = CausalLM()
    seen = {"calls": 0, "before": None}

    def poisoned(m, batch):
        seen["calls"] += 1
        loss, n = inner(m, batch)
        if seen["calls"] == 6:  # step 6: remember the weights, then return NaN
            seen["before"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return loss * float("nan"), n
        return loss, n

    ds = PackedDataset(shards, "train")
    args = TrainArgs(lr=1e-2, batch_size=2, warmup_steps=0, precision="fp32")
    with pytest.raises(
        TrainingStopped, match="loss is nan at step 6: stopped before the optimizer"
    ):
        fit(model, poisoned, ds, None, args, 20, tmp_path / "o")
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in seen["before"].items())


def test_existing_checkpoints_need_resume(tiny_lm, shards, tmp_path):
    from transformers import AutoModelForCausalLM

    ds = PackedDataset(shards, "train")
    args = TrainArgs(batch_size=2, save_every=2, keep_checkpoints=True, precision="fp32")
    fit(
        AutoModelForCausalLM.from_pretrained(tiny_lm), CausalLM(), ds, None, args, 4, tmp_path / "o"
    )
    assert (tmp_path / "o" / "checkpoints" / "latest").read_text() == "step-000004"
    with pytest.raises(UserError, match="--resume"):
        fit(
            AutoModelForCausalLM.from_pretrained(tiny_lm),
            CausalLM(),
            ds,
            None,
            args,
            4,
            tmp_path / "o",
        )


def test_cli_pretrain_bad_data_is_one_line(tmp_path, capsys):
    from oficina.cli import main

    code = main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "oficina data pack" in err
