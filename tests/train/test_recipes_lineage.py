"""What each training verb records and passes on: its run's lineage (inputs, outputs, whole
config), the caller's hooks, the head's problem type, a shorter window than the shards', and
the broken-adapter message of merge.

Written for the survivors of ``make mutate MODULES=recipes`` (mutants that dropped the config
from the run record, renamed an artifact, skipped recording the distilled model, did not pass
``hooks`` to distillation's ``fit``, ignored ``seq_len``, or named the wrong folder in merge's
error): each test fails on one of them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from oficina.errors import UserError
from oficina.train.loop import FitHooks, TrainArgs
from oficina.train.recipes import (
    DistillConfig,
    FinetuneConfig,
    MergeConfig,
    PretrainConfig,
    distill,
    finetune,
    merge,
    pretrain,
)

TEMPLATE = "Passage: {text}\nQuestion: which kind?\nAnswer:"


def _fast(**kw) -> TrainArgs:
    base = dict(lr=5e-3, batch_size=2, eval_every=2, eval_batches=1, warmup_steps=0)
    return TrainArgs(**{**base, "precision": "fp32", **kw})


def _record(run_id: str) -> tuple[dict, dict[tuple[str, str], str]]:
    """The run's row and its artifacts as {(role, name): path}."""
    from oficina.workspace import get_run

    r = get_run(run_id)
    return r, {(a["role"], a["name"]): a["path"] for a in r["artifacts"]}


def _rows(tmp_path: Path, label=lambda i: "data" if i % 2 else "code") -> Path:
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps({"text": f"row {i} " * 3, "label": label(i)}) + "\n"
                         for i in range(12)))  # fmt: skip
    return f


def test_finetune_and_merge_record_inputs_outputs_and_the_whole_config(tiny_lm, tmp_path):
    data = _rows(tmp_path)
    cfg = FinetuneConfig(
        model=str(tiny_lm), data=str(data), template=TEMPLATE, out=str(tmp_path / "lora"),
        max_steps=2, lora={"r": 2, "alpha": 4}, train=_fast(),
    )  # fmt: skip
    s = finetune(cfg)
    r, arts = _record(s["run_id"])
    assert (r["verb"], r["status"]) == ("finetune", "completed")
    assert json.loads(r["config"]) == cfg.model_dump(mode="json")
    assert arts == {
        ("input", "model"): str(tiny_lm.resolve()),
        ("input", "data"): str(data.resolve()),
        ("output", "adapter"): str((tmp_path / "lora").resolve()),
    }

    m = merge(MergeConfig(adapter=str(tmp_path / "lora"), out=str(tmp_path / "merged")))
    r, arts = _record(m["run_id"])
    assert (r["verb"], r["status"]) == ("merge", "completed")
    assert arts == {
        ("input", "adapter"): str((tmp_path / "lora").resolve()),
        ("input", "base"): str(tiny_lm.resolve()),
        ("output", "model"): str((tmp_path / "merged").resolve()),
    }
    assert Path(m["base"]).resolve() == tiny_lm.resolve()
    assert m["params_trainable"] == 0 and m["peak_memory_mb"] == round(m["peak_memory_mb"], 1)
    assert s["tokens_per_s"] == round(s["tokens_per_s"], 1) > 0
    assert json.loads(r["summary"])["base"] == m["base"]


def test_merge_names_the_adapter_folder_its_config_breaks(tiny_lm, tmp_path):
    from helpers import make_tiny_lora

    adir = make_tiny_lora(tiny_lm, tmp_path / "ad", seed=0)
    broken = tmp_path / "broken"
    shutil.copytree(adir, broken)
    conf = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**conf, "peft_type": "NOT_A_PEFT"}))
    with pytest.raises(UserError) as e:
        merge(MergeConfig(adapter=str(broken), out=str(tmp_path / "m")))
    assert str(e.value).startswith(f"cannot load the adapter in {broken}: ")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("task", "label", "want"),
    [
        ("regression", lambda i: float(i) / 4, (1, "regression")),
        (
            "classification",
            lambda i: "data" if i % 2 else "code",
            (2, "single_label_classification"),
        ),
    ],
)
def test_a_head_keeps_its_problem_type_and_training_length(tiny_lm, tmp_path, task, label, want):
    from oficina.train.recipes import head_max_len

    data = _rows(tmp_path, label=label)
    finetune(
        FinetuneConfig(
            model=str(tiny_lm),
            data=str(data),
            task=task,
            out=str(tmp_path / "head"),
            max_len=24,
            max_steps=2,
            train=_fast(),
        )  # fmt: skip
    )
    head = json.loads((tmp_path / "head" / "head_config.json").read_text())
    assert (head["num_labels"], head["problem_type"]) == want
    assert head_max_len(tmp_path / "head") == 24 and head_max_len(tmp_path) is None


def test_distill_on_jsonl_rows_holds_out_a_tenth_for_validation(tiny_lm, tmp_path):
    data = _rows(tmp_path)
    s = distill(
        DistillConfig(
            teacher=str(tiny_lm),
            data=str(data),
            template=TEMPLATE,
            keep_layers=1,
            max_steps=2,
            out=str(tmp_path / "kd"),
            train=_fast(),
        )  # fmt: skip
    )
    assert s["best_val_loss"] is not None and s["val_curve"]


def test_distill_passes_the_hooks_honours_seq_len_and_records_its_model(tiny_lm, shards, tmp_path):
    from oficina.train.data import read_pack_meta

    assert read_pack_meta(shards)["seq_len"] > 8  # so a window of 8 is a real change
    seen: list[tuple[int, float]] = []
    hooks = FitHooks(on_eval=lambda step, m: seen.append((step, m["val_loss"])) is None and False)
    cfg = DistillConfig(
        teacher=str(tiny_lm), data=str(shards), keep_layers=1, seq_len=8, max_steps=4,
        out=str(tmp_path / "kd"), train=_fast(),
    )  # fmt: skip
    s = distill(cfg, hooks=hooks)
    assert [step for step, _ in seen] == [2, 4]
    assert s["best_val_loss"] == pytest.approx(min(v for _, v in seen), abs=1e-5)
    assert s["train_tokens"] == 4 * 2 * 8  # steps × batch × the asked window, not the shards'
    assert s["final_train_loss"] == s["loss_curve"][-1][1] and s["loss_curve"][-1][0] == 4
    r, arts = _record(s["run_id"])
    assert (r["verb"], r["status"]) == ("distill", "completed")
    assert json.loads(r["config"]) == cfg.model_dump(mode="json")
    assert arts == {
        ("input", "teacher"): str(tiny_lm.resolve()),
        ("input", "data"): str(shards.resolve()),
        ("output", "model"): str((tmp_path / "kd").resolve()),
    }


@pytest.mark.parametrize("start", ["init", "preset"])
def test_pretrain_records_where_it_started(start, tiny_lm, shards, tmp_path):
    kw = {"init": str(tiny_lm)} if start == "init" else {"model": "tiny"}
    cfg = PretrainConfig(
        **kw, data=str(shards), out=str(tmp_path / "pt"), max_steps=2, train=_fast()
    )
    s = pretrain(cfg)
    r, arts = _record(s["run_id"])
    assert (r["verb"], r["status"]) == ("pretrain", "completed")
    assert json.loads(r["config"]) == cfg.model_dump(mode="json")
    first = str(tiny_lm.resolve()) if start == "init" else "tiny"
    assert arts == {
        ("input", "data"): str(shards.resolve()),
        ("input", start): first,
        ("output", "model"): str((tmp_path / "pt").resolve()),
    }
    assert s["best_val_loss"] is not None  # the shards' val.bin was read
    if start == "preset":  # positions for any window up to 2048, more for a longer one
        conf = json.loads((tmp_path / "pt" / "config.json").read_text())
        assert conf["max_position_embeddings"] == 2048
