"""Fine-tuning (LoRA and full, SFT and heads), merging, and distillation on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from oficina.errors import UserError
from oficina.train.loop import TrainArgs
from oficina.train.recipes import (
    DistillConfig,
    FinetuneConfig,
    MergeConfig,
    distill,
    finetune,
    merge,
    student_from_teacher,
)

TEMPLATE = "Passage: {text}\nQuestion: which kind?\nAnswer:"


@pytest.fixture
def task_rows(tmp_path) -> Path:
    """A small separable task: passages about lists vs about functions."""
    words = {
        "list": "append items to a list and index the list",
        "def": "def a function that returns",
    }
    rows = [
        {"text": f"{words[k]} number {i}", "label": "data" if k == "list" else "code"}
        for i in range(20)
        for k in words
    ]
    f = tmp_path / "task.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    return f


def _fast(**kw) -> TrainArgs:
    base = dict(lr=5e-3, batch_size=4, eval_every=5, warmup_steps=2, precision="fp32")
    base.update(kw)
    return TrainArgs(**base)


def test_lora_sft_saves_a_peft_adapter_that_merges_into_a_plain_model(tiny_lm, task_rows, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    s = finetune(
        FinetuneConfig(
            model=str(tiny_lm),
            data=str(task_rows),
            template=TEMPLATE,
            out=str(out),
            max_steps=15,
            lora={"r": 4, "alpha": 8},
            train=_fast(lr=2e-2),
        )  # fmt: skip
    )
    assert s["task"] == "sft" and s["skipped_rows"] == 1
    assert 0 < s["params_trainable"] < s["params_total"] / 5
    from oficina.workspace import get_run

    metrics = Path(get_run(s["run_id"])["dir"]) / "metrics.jsonl"
    vals = [json.loads(x)["val_loss"] for x in metrics.read_text().splitlines() if "val_loss" in x]
    assert s["best_val_loss"] == pytest.approx(min(vals), abs=1e-5)
    assert vals[-1] < vals[0]  # the adapter learned something the base did not know
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    peft_model = PeftModel.from_pretrained(base, str(out)).eval()
    x = torch.randint(0, 500, (1, 12))
    with torch.no_grad():
        want = peft_model(input_ids=x).logits
    m = merge(MergeConfig(adapter=str(out), out=str(tmp_path / "merged")))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        got = merged(input_ids=x).logits
    assert torch.allclose(got, want, atol=1e-4)
    # fine-tuning keeps the parameter count: the merged model is exactly the base's size
    assert m["params_total"] == AutoModelForCausalLM.from_pretrained(tiny_lm).num_parameters()
    assert not torch.allclose(
        got, AutoModelForCausalLM.from_pretrained(tiny_lm).eval()(input_ids=x).logits
    )


def test_full_sft_with_messages_writes_a_hf_model(tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    rows = [
        {"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
        for w in ["yes", "no", "list", "dict", "tuple", "set"] * 4
    ]
    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = finetune(
        FinetuneConfig(
            model=str(tiny_lm),
            method="full",
            data=str(f),
            out=str(tmp_path / "full"),
            epochs=2,
            train=_fast(),
        )  # fmt: skip
    )
    assert s["params_trainable"] == s["params_total"]
    assert s["steps"] == 11  # ceil(2 epochs * 22 train rows / 4)
    from transformers import AutoTokenizer

    from oficina.train.data import eval_batches, load_jsonl_dataset
    from oficina.train.loop import evaluate
    from oficina.train.objectives import SFT
    from oficina.train.recipes import _split

    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    # every decoder weight moved (full fine-tuning, not a frozen or untouched model)
    changed = {
        n: not torch.equal(p, base.get_parameter(n))
        for n, p in tuned.named_parameters()
        if ".layers." in n and n.endswith("proj.weight")
    }
    assert changed and all(changed.values()), [n for n, c in changed.items() if not c]
    # what was saved is what was validated: its loss on the held-out rows is the best one logged
    tok = AutoTokenizer.from_pretrained(tmp_path / "full")
    _, val = _split(load_jsonl_dataset(f, tok, 512, "sft"), 0.1, 0)
    batches = eval_batches(val, 4, 20)
    got = evaluate(tuned, SFT(), batches, "fp32")
    assert s["best_val_loss"] == pytest.approx(got, abs=1e-5)
    assert got < evaluate(base, SFT(), batches, "fp32")  # and it learned the answers


def test_classification_head_full_and_lora(tiny_lm, task_rows, tmp_path):
    from transformers import AutoModelForSequenceClassification

    s = finetune(
        FinetuneConfig(
            model=str(tiny_lm),
            method="full",
            data=str(task_rows),
            out=str(tmp_path / "clf"),
            max_steps=20,
            train=_fast(),
        )  # fmt: skip
    )
    assert s["task"] == "classification"
    assert s["best_val_loss"] < 0.5  # separable task: the head learns it
    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf")
    assert clf.config.id2label == {0: "code", 1: "data"}

    s = finetune(
        FinetuneConfig(
            model=str(tiny_lm),
            data=str(task_rows),
            out=str(tmp_path / "clf-lora"),
            max_steps=4,
            train=_fast(),
        )  # fmt: skip
    )
    assert s["params_trainable"] < s["params_total"]
    merge(MergeConfig(adapter=str(tmp_path / "clf-lora"), out=str(tmp_path / "clf-merged")))
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf-merged")
    assert merged.config.num_labels == 2


def test_distill_keep_layers_and_control(tiny_lm, shards, tmp_path):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_lm)
    student = student_from_teacher(teacher, 1)
    assert student.config.num_hidden_layers == 1 and len(teacher.model.layers) == 2
    with pytest.raises(UserError, match="only 2 layers"):
        student_from_teacher(teacher, 2)
    common = dict(teacher=str(tiny_lm), data=str(shards), max_steps=6, train=_fast(eval_every=3))
    kd = distill(DistillConfig(**common, keep_layers=1, out=str(tmp_path / "kd")))
    # distillation reduces the parameter count
    assert kd["params_total"] < teacher.num_parameters()
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "kd")
    assert m.config.num_hidden_layers == 1
    ctl = distill(DistillConfig(**common, keep_layers=1, alpha=0.0, out=str(tmp_path / "ctl")))
    assert ctl["best_val_loss"] != kd["best_val_loss"]


def test_distill_refuses_a_different_vocabulary(tiny_lm, small_vocab_lm, shards, tmp_path):
    with pytest.raises(UserError, match="sequence-level"):
        distill(
            DistillConfig(
                teacher=str(tiny_lm),
                student=str(small_vocab_lm),
                data=str(shards),
                out=str(tmp_path / "o"),
                max_steps=1,
                train=_fast(),
            )  # fmt: skip
        )


def test_sequence_level_distillation_trains_on_teacher_generations(tiny_lm, task_rows, tmp_path):
    s = distill(
        DistillConfig(
            teacher=str(tiny_lm),
            keep_layers=1,
            method="sequence",
            data=str(task_rows),
            template=TEMPLATE,
            max_new_tokens=4,
            out=str(tmp_path / "seq"),
            max_steps=3,
            train=_fast(),
        )  # fmt: skip
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oficina.train.data import eval_batches, load_jsonl_dataset
    from oficina.train.loop import evaluate
    from oficina.train.objectives import SFT
    from oficina.train.recipes import _split
    from oficina.workspace import get_run

    run_dir = Path(get_run(s["run_id"])["dir"])
    gen = run_dir / "teacher_generations.jsonl"
    rows = [json.loads(x) for x in gen.read_text().splitlines()]
    gold = [json.loads(x) for x in task_rows.read_text().splitlines()[:-1]]  # less "{broken"
    assert [r["prompt"] for r in rows] == [TEMPLATE.format(**g) for g in gold]
    # The completions are the teacher's greedy continuations, computed here one prompt at a
    # time (no padding), not the gold labels.
    teacher = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    for r in rows[:8]:
        ids = tok(r["prompt"], return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = teacher.generate(
                ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
            )
        assert r["completion"] == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    # The student trained on those generations: the validation loss the run logged is the saved
    # student's loss on the held-out teacher generations (a student trained and validated on
    # the gold rows logs another number).
    ds = load_jsonl_dataset(gen, tok, 512, "sft")
    _, val = _split(ds, 0.1, 0)
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "seq").eval()
    want = evaluate(student, SFT(), eval_batches(val, 4, 20), "fp32")
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val_losses = [m["val_loss"] for m in logged if "val_loss" in m]
    assert val_losses[-1] == pytest.approx(want, abs=1e-5)
    assert s["best_val_loss"] == pytest.approx(want, abs=1e-5)
