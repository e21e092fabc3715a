"""``oficina eval --adapter`` on a classification-head (SEQ_CLS) LoRA adapter: it runs the head,
scores what training scored, and truncates texts as training did; generation paths still refuse
such an adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import write_jsonl

from oficina.cli import main

LABELS = ["alpha", "beta", "gamma"]  # the head's order (sorted); the task lists them otherwise
WORDS = {"alpha": "class def return", "beta": "for while in", "gamma": "import from as"}
MAX_LEN = 8  # shorter than every text below: eval must cut where training cut


@pytest.fixture
def head_run(tiny_lm, tmp_path) -> dict:
    """A LoRA classification head trained on the tiny model, and the validation accuracy its
    training measured on the rows eval will score (one evaluation, at the last step, so the
    saved adapter holds exactly the weights that were scored)."""
    from oficina.evals.tune import classification_metrics
    from oficina.train.loop import FitHooks, TrainArgs
    from oficina.train.recipes import FinetuneConfig, finetune

    rows = [
        {"id": f"{lab}-{i}", "text": " ".join([f"{WORDS[lab]} {i}"] * 4), "label": lab}
        for i in range(6)
        for lab in LABELS
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows[:9])
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    val = write_jsonl(task_dir / "validation.jsonl", rows[9:])
    (task_dir / "task.json").write_text(
        json.dumps({"name": "words", "type": "classification", "labels": ["gamma", *LABELS[:2]]})
    )
    seen: list[dict] = []

    def on_eval(step: int, metrics: dict) -> bool:
        seen.append(dict(metrics))
        return False

    args = TrainArgs(
        lr=5e-3, warmup_steps=0, batch_size=3, eval_every=100, precision="fp32", save_every=100
    )
    finetune(
        FinetuneConfig(
            model=str(tiny_lm),
            method="lora",
            data=str(train),
            val_data=str(val),
            out=str(tmp_path / "head"),
            max_steps=3,
            max_len=MAX_LEN,
            train=args,
        ),  # fmt: skip
        hooks=FitHooks(classification_metrics, on_eval),
    )
    (trained,) = seen  # one evaluation: the final weights, which fit keeps and saves
    return {"adapter": tmp_path / "head", "task": task_dir / "task.json", "val": val,
            "trained": trained}  # fmt: skip


def _reference_logprobs(tiny_lm: Path, adapter: Path, texts: list[str]) -> list[list[float]]:
    """Each text alone through base + head + LoRA, cut at the training length: no batching, no
    padding and none of eval's code."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    conf = json.loads((adapter / "head_config.json").read_text())
    assert conf["max_len"] == MAX_LEN  # finetune records how it cut the texts
    kw = {k: v for k, v in conf.items() if k != "max_len"}
    model = AutoModelForSequenceClassification.from_pretrained(tiny_lm, **kw)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    tok = AutoTokenizer.from_pretrained(adapter)
    out = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            assert len(ids) > MAX_LEN
            logits = model(input_ids=torch.tensor([ids[:MAX_LEN]])).logits[0].float()
            out.append(torch.log_softmax(logits, -1).tolist())
    return out


def test_eval_runs_a_classification_head_and_reproduces_its_training_score(
    tiny_lm, head_run, capsys
):
    code = main(["eval", str(tiny_lm), "--adapter", str(head_run["adapter"]),
                 "--task", str(head_run["task"]), "--split", "validation", "--json",
                 "--bootstrap", "100"])  # fmt: skip
    cap = capsys.readouterr()
    assert code == 0, cap.err
    out = json.loads(cap.out)
    assert out["model"]["head"] is True and out["task"]["items"] == 9
    # The number training measured through the head on these rows is the number eval reports.
    acc, f1 = out["metrics"]["accuracy"], out["metrics"]["macro_f1"]
    assert acc["value"] == pytest.approx(head_run["trained"]["val_accuracy"])
    assert f1["value"] == pytest.approx(head_run["trained"]["val_macro_f1"])
    assert acc["ci"][0] <= acc["value"] <= acc["ci"][1]

    preds = [json.loads(x) for x in (Path(out["run_dir"]) / "predictions.jsonl").open()]
    rows = [json.loads(x) for x in head_run["val"].open()]
    assert [p["id"] for p in preds] == [r["id"] for r in rows]
    assert [p["gold"] for p in preds] == [r["label"] for r in rows]
    # Scores are the head's log-probabilities in the task's label order (gamma, alpha, beta),
    # equal to each text run alone at the training length.
    order = out["details"]["labels"]
    assert order == ["gamma", "alpha", "beta"]
    ref = _reference_logprobs(tiny_lm, head_run["adapter"], [r["text"] for r in rows])
    for p, r in zip(preds, ref, strict=True):
        want = [r[LABELS.index(lab)] for lab in order]
        assert p["scores"] == pytest.approx(want, abs=1e-4)
        assert p["prediction"] == order[max(range(3), key=lambda j: p["scores"][j])]
        assert p["correct"] == float(p["prediction"] == p["gold"])
    assert acc["value"] == pytest.approx(sum(p["correct"] for p in preds) / 9)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fewshot", "1"], "drop --fewshot"),
        (["--perplexity", "notes.txt"], "drop --perplexity"),
    ],
)
def test_a_head_adapter_refuses_what_a_head_cannot_do(tiny_lm, head_run, capsys, extra, message):
    code = main(["eval", str(tiny_lm), "--adapter", str(head_run["adapter"]),
                 "--task", str(head_run["task"]), "--split", "validation", *extra])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_head_adapter_on_a_generation_task_and_in_the_engine_is_one_line(
    tiny_lm, head_run, tmp_path, capsys
):
    from oficina.errors import UserError
    from oficina.infer.engine import Engine

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": "4"}])
    code = main(["eval", str(tiny_lm), "--adapter", str(head_run["adapter"]), "--task", str(qa)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "scores classification tasks" in err[0], err
    with pytest.raises(UserError, match="classification-head adapter"):  # generate/serve/batch
        Engine.from_spec(str(tiny_lm), adapter=str(head_run["adapter"]))


@pytest.mark.parametrize(
    "head", [{"num_labels": 1}, {"num_labels": 3, "problem_type": "regression"}]
)
def test_a_regression_head_is_refused_before_any_loading(tmp_path, head):
    """One output, or a declared regression: either makes a regression head (no labels to
    score), refused from head_config.json alone."""
    from oficina.errors import UserError
    from oficina.evals.evaluate import load_head

    (tmp_path / "head_config.json").write_text(json.dumps(head))
    with pytest.raises(UserError) as e:
        load_head("no-such-model", tmp_path, "float32", None)
    assert str(e.value) == f"{tmp_path} is a regression head: eval scores classification heads only"
