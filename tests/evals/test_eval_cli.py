"""``oficina eval`` end to end on the tiny model: every task type, files written, errors clear."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import write_jsonl

from oficina.cli import main


def _eval(capsys, *args) -> dict:
    code = main(["eval", *args, "--json", "--bootstrap", "100"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


@pytest.fixture
def small_task(tmp_path) -> Path:
    """A task.json with short train/test splits (fits the tiny model's context with shots)."""
    d = tmp_path / "task"
    d.mkdir()
    kinds = {"statement": "for x in y: pass", "expression": "a + b * c", "data model": "__add__"}
    rows = [
        {"id": f"{lab}-{k}", "text": f"{txt} #{k}", "label": lab}
        for k in range(4)
        for lab, txt in kinds.items()
    ]
    write_jsonl(d / "train.jsonl", rows[:6])
    write_jsonl(d / "test.jsonl", rows[6:])
    (d / "task.json").write_text(
        json.dumps(
            {
                "name": "mini-sections",
                "type": "classification",
                "labels": list(kinds),
                "template": "Code: {text}\nKind:",
            }
        )
    )
    return d / "task.json"


def test_default_demo_task_writes_metrics_and_predictions(tiny_lm, capsys):
    out = _eval(capsys, str(tiny_lm), "--limit", "5", "--batch-size", "2")
    assert out["task"]["name"] == "pyref-section" and out["task"]["items"] == 5
    m = out["metrics"]
    for name in ("accuracy", "macro_f1", "perplexity", "bits_per_byte"):
        lo, hi = m[name]["ci"]
        assert lo <= m[name]["value"] <= hi, name
    inf = out["inference"]
    assert inf["latency_s_per_item"] > 0 and inf["prompt_tokens_per_s"] > 0
    assert inf["peak_rss_mb"] >= inf["rss_after_load_mb"] > 0
    assert inf["memory_method"].startswith(("VmHWM", "ru_maxrss"))
    assert out["model"]["params"] > 0 and len(out["model"]["model_hash"]) == 64
    run_dir = Path(out["run_dir"])
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["metrics"] == m
    preds = [json.loads(x) for x in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 5 and {"id", "prediction", "gold", "correct", "scores"} <= set(preds[0])
    assert sum(p["correct"] for p in preds) / 5 == pytest.approx(m["accuracy"]["value"])

    from oficina.workspace import list_runs

    (row,) = list_runs(verb="eval")
    assert row["status"] == "completed"
    summary = json.loads(row["summary"])
    assert summary["accuracy"] == m["accuracy"]["value"] and "perplexity_ci_hi" in summary
    assert summary["items"] == 5 and summary["params"] == out["model"]["params"]
    for k in ("latency_s_per_item", "prompt_tokens_mean", "prompt_tokens_per_s", "peak_rss_mb"):
        assert summary[k] == pytest.approx(inf[k]), k


def test_human_readable_output(tiny_lm, small_task, capsys):
    assert main(["eval", str(tiny_lm), "--task", str(small_task), "--bootstrap", "50"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "95% bootstrap interval" in text and "peak RSS" in text


def test_fewshot_from_the_train_split(tiny_lm, small_task, capsys):
    zero = _eval(capsys, str(tiny_lm), "--task", str(small_task))
    few = _eval(capsys, str(tiny_lm), "--task", str(small_task), "--fewshot", "3")
    assert few["fewshot"] == 3
    assert few["inference"]["prompt_tokens_mean"] > zero["inference"]["prompt_tokens_mean"] + 10


def test_paired_comparison_with_a_baseline_run(tiny_lm, small_task, capsys):
    first = _eval(capsys, str(tiny_lm), "--task", str(small_task))
    again = _eval(capsys, str(tiny_lm), "--task", str(small_task), "--baseline", first["run_id"])
    c = again["comparison"]
    assert c["items"] == first["task"]["items"]
    assert c["accuracy"]["diff"] == 0.0 and not c["accuracy"]["distinguishable"]
    assert c["macro_f1"]["diff"] == 0.0


def test_lora_adapter_at_zero_changes_nothing(tiny_lm, small_task, tmp_path, capsys):
    """PEFT initialises LoRA's B to zero: the adapted model must score exactly like the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    a = _eval(capsys, str(tiny_lm), "--task", str(small_task), "--perplexity", "off")
    b = _eval(
        capsys, str(tiny_lm), "--task", str(small_task), "--perplexity", "off",
        "--adapter", str(tmp_path / "adapter"),
    )  # fmt: skip
    assert b["model"]["adapter"] and b["model"]["params"] > a["model"]["params"]
    assert b["model"]["model_hash"] != a["model"]["model_hash"]
    assert b["metrics"]["accuracy"] == a["metrics"]["accuracy"]
    pa = (Path(a["run_dir"]) / "predictions.jsonl").read_text().splitlines()
    pb = (Path(b["run_dir"]) / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x)["prediction"] for x in pa] == [json.loads(x)["prediction"] for x in pb]


def test_generation_jsonl_with_a_malformed_line(tiny_lm, tmp_path, capsys):
    f = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"id": "1", "question": "What is 2 + 2?", "answer": "4"},
            {"id": "2", "question": "Name a Python keyword.", "answers": ["for", "if"]},
            {"id": "3", "question": "no answer here"},
        ],
        extra="{not json\n",
    )
    out = _eval(capsys, str(tiny_lm), "--task", str(f), "--max-new-tokens", "4")
    assert out["task"]["type"] == "generation"
    # the broken line and the item without an answer are set aside and counted
    assert out["task"]["items"] == 2 and out["task"]["skipped"] == 2
    assert set(out["metrics"]) >= {"exact_match", "token_f1", "rouge_l"}
    assert out["inference"]["generated_tokens"] > 0
    assert "perplexity" not in out["metrics"]  # generation items have no 'text' to score


def test_chat_asks_generation_items_in_chat_turns(tiny_lm, tiny_engine, tmp_path, capsys):
    rows = [{"id": "1", "question": "What is 2 + 2?", "answer": "4"}]
    f = write_jsonl(tmp_path / "qa.jsonl", rows)
    args = (str(tiny_lm), "--task", str(f), "--max-new-tokens", "2", "--perplexity", "off")
    raw = _eval(capsys, *args)["inference"]["prompt_tokens_mean"]
    chat = _eval(capsys, *args, "--chat")["inference"]["prompt_tokens_mean"]
    # the same prompt, wrapped as the user turn: the template's tokens more
    wrapped = tiny_engine.render_chat([{"role": "user", "content": "PROMPT"}])
    extra = len(tiny_engine.encode(wrapped)) - len(tiny_engine.encode("PROMPT"))
    assert chat - raw == pytest.approx(extra, abs=2) and extra > 4
    # a classification label is scored after the raw prompt: refused, one line
    cls = write_jsonl(
        tmp_path / "cls.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    )
    assert main(["eval", str(tiny_lm), "--task", str(cls), "--chat"]) == 2
    assert "--chat asks generation tasks" in capsys.readouterr().err


def test_multiple_choice_jsonl_and_a_perplexity_file(tiny_lm, tmp_path, capsys):
    f = write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {"id": "a", "question": "2 + 2 =", "choices": ["4", "5"], "answer": 0},
            {"id": "b", "question": "Python is a", "choices": ["language", "snake"], "answer": "language"},
        ],
    )  # fmt: skip
    txt = tmp_path / "held_out.txt"
    txt.write_text("The for statement is used to iterate over the elements of a sequence.\n" * 20)
    out = _eval(capsys, str(tiny_lm), "--task", str(f), "--perplexity", str(txt), "--window", "64")
    assert out["task"]["type"] == "multiple_choice"
    assert set(out["metrics"]) == {"accuracy", "acc", "acc_norm", "perplexity", "bits_per_byte"}
    assert out["details"]["perplexity"]["window"] == 64
    assert out["details"]["perplexity"]["windows"] > 1


def test_perplexity_only_task(tiny_lm, tmp_path, capsys):
    f = write_jsonl(
        tmp_path / "texts.jsonl", [{"text": "x = 1\n" * 5}, {"text": "for y in z: pass"}]
    )
    out = _eval(capsys, str(tiny_lm), "--task", str(f), "--window", "8")
    assert out["task"]["type"] == "perplexity"
    assert set(out["metrics"]) == {"perplexity", "bits_per_byte"}
    # The numbers are the definition's, by the naive one-token-at-a-time loop (tests/helpers.py)
    from helpers import nll_naive
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    texts = ["x = 1\n" * 5, "for y in z: pass"]
    d = out["details"]["perplexity"]
    assert (d["window"], d["stride"], d["texts"]) == (8, 4, 2)
    per_text = [nll_naive(model, tok, t, 8, 4) for t in texts]
    nll, n = sum(x for x, _ in per_text), sum(k for _, k in per_text)
    n_bytes = sum(len(t.encode()) for t in texts)
    assert d["tokens"] == n and d["bytes"] == n_bytes and d["windows"] > 2
    m = out["metrics"]
    assert m["perplexity"]["value"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert m["bits_per_byte"]["value"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-4)
    for name in ("perplexity", "bits_per_byte"):
        lo, hi = m[name]["ci"]
        assert lo <= m[name]["value"] <= hi and lo < hi, name  # two texts: a real interval


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "/nonexistent/task.json"], "task file not found"),
        (["--split", "nosuch"], "no split 'nosuch'"),
        (["--fewshot", "2", "--fewshot-split", "test"], "another split"),
        (["--perplexity", "/nonexistent.txt"], "perplexity file not found"),
        (["--adapter", "/nonexistent"], "adapter folder not found"),
        (["--task", "README.md"], "not README.md"),
    ],
)
def test_errors_are_one_line(tiny_lm, capsys, args, message):
    code = main(["eval", str(tiny_lm), *args])
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.integration
def test_fewshot_similar_examples(tiny_lm, small_task, capsys):
    """The k training examples nearest each query (MiniLM embeddings), most similar last."""
    out = _eval(
        capsys, str(tiny_lm), "--task", str(small_task), "--fewshot", "2",
        "--fewshot-strategy", "similar", "--perplexity", "off",
    )  # fmt: skip
    assert out["fewshot"] == 2 and out["task"]["items"] == 6
    assert out["inference"]["prompt_tokens_mean"] > 15
