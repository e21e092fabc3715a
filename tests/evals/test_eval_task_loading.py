"""``oficina eval``'s task reading and baseline comparison on exact values, without a model:
inferred types, default prompt templates, labels, the items set aside, seeded samples, held-out
texts, and the paired comparison against a baseline run folder."""

from __future__ import annotations

import json

import pytest
from helpers import write_jsonl

from oficina.errors import UserError
from oficina.evals import metrics as M
from oficina.evals.evaluate import compare_to_baseline, load_task, read_texts, sample


def test_types_templates_and_labels_from_a_bare_jsonl(tmp_path):
    clf = load_task(
        str(
            write_jsonl(
                tmp_path / "clf.jsonl",
                [
                    {"text": "t1", "label": "b"},
                    {"text": "t2", "label": "a"},
                    {"text": "t3", "label": "b"},
                    {"text": "t4", "label": ""},
                ],
                "{broken\n",
            )
        )
    )
    assert (clf.type, clf.name, clf.labels) == ("classification", "clf", ["b", "a", ""])
    assert clf.template == "{text}\nQuestion: Which one is it: b, a, ?\nAnswer:"
    # the broken line and the row without a label are set aside and counted
    assert clf.skipped == 2 and [r["text"] for r in clf.rows] == ["t1", "t2", "t3"]

    mc = load_task(
        str(
            write_jsonl(
                tmp_path / "mc.jsonl", [{"question": "q", "choices": ["x", "y"], "gold": 1}]
            )
        )
    )
    assert (mc.type, mc.template, mc.answer_field) == (
        "multiple_choice",
        "{question}\nAnswer:",
        "gold",
    )

    gen = load_task(
        str(
            write_jsonl(
                tmp_path / "gen.jsonl",
                [
                    {"question": "q1", "answers": ["a", "b"]},
                    {"question": "q2", "reference": "r"},
                    {"question": "q3", "answer": ""},
                ],
            )
        )
    )
    assert (gen.type, gen.template, gen.answer_field) == (
        "generation",
        "Question: {question}\nAnswer:",
        "_references",
    )
    assert [r["_references"] for r in gen.rows] == [["a", "b"], "r"] and gen.skipped == 1
    prompt_gen = load_task(
        str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "say", "answer": "x"}]))
    )
    assert prompt_gen.template == "{prompt}" and prompt_gen.stop == ["\n"]

    ppl = load_task(str(write_jsonl(tmp_path / "ppl.jsonl", [{"text": "a"}, {"text": ""}])))
    assert (ppl.type, ppl.template, len(ppl.rows), ppl.skipped) == ("perplexity", None, 1, 1)


def test_a_task_json_names_its_fields_splits_and_stop(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    write_jsonl(d / "dev.jsonl", [{"q": "one", "y": 1}, {"q": "two", "y": 2}])
    write_jsonl(d / "other.jsonl", [{"q": "three", "y": 1}])
    spec = {
        "name": "named",
        "type": "classification",
        "labels": [1, 2],
        "template": "Q: {q}",
        "label_field": "y",
        "files": {"test": "dev.jsonl"},
        "stop": ["###"],
    }
    (d / "task.json").write_text(json.dumps(spec))
    t = load_task(str(d / "task.json"))
    assert (t.name, t.labels, t.template, t.label_field, t.stop) == (
        "named",
        ["1", "2"],
        "Q: {q}",
        "y",
        ["###"],
    )
    assert [r["q"] for r in t.rows] == ["one", "two"] and t.path == d / "dev.jsonl"
    assert set(t.split_files) == {"test", "dev", "other"}
    assert [r["q"] for r in load_task(str(d / "task.json"), split="other").rows] == ["three"]
    # the split's JSONL beside a task.json reads that task.json too
    assert load_task(str(d / "other.jsonl")).name == "named"


@pytest.mark.parametrize(
    "content, name, message",
    [
        (None, "nope.json", "task file not found: "),
        ("{not json", "task.json", "is not valid JSON (Expecting property name"),
        ("[1, 2]", "task.json", "must hold an object describing the task"),
        ('{"files": {"dev": "d.jsonl"}}', "task.json", "has no split 'test' (splits: dev)"),
        ("", "x.txt", "a task is a .json description or a .jsonl of items, not x.txt"),
        ("", "empty.jsonl", "empty.jsonl holds no items"),
        ("{bad\n", "bad.jsonl", "holds no items (1 malformed lines)"),
        ('{"id": 1}\n', "odd.jsonl", "cannot tell the task type from the fields ['id']"),
        ('{"text": "a"}\n', "typed.jsonl", None),
    ],
)
def test_task_errors_are_one_line(tmp_path, content, name, message):
    p = tmp_path / name
    if content is not None:
        p.write_text(content)
    if message is None:  # a task.json beside it with an unknown type
        (tmp_path / "task.json").write_text('{"type": "ranking"}')
        message = "task type 'ranking' is not one of classification, multiple_choice,"
    with pytest.raises(UserError) as e:
        load_task(str(p))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_sample_is_seeded_and_keeps_file_order():
    rows = list(range(10))
    s = sample(rows, 4, seed=3)
    assert len(s) == 4 and s == sorted(s) and s == sample(rows, 4, seed=3)
    assert s != sample(rows, 4, seed=4)
    assert (
        sample(rows, None, 0) == rows
        and sample(rows, 10, 0) == rows
        and sample(rows, 99, 0) == rows
    )
    assert sample(rows, 10, 0) is not rows  # a copy
    assert len(sample(rows, 9, 0)) == 9


def test_read_texts(tmp_path):
    j = write_jsonl(
        tmp_path / "t.jsonl", [{"text": "a"}, {"text": "  "}, {"body": "b"}, {"text": 5}]
    )
    assert read_texts(j) == ["a", "5"]
    assert read_texts(write_jsonl(tmp_path / "b.jsonl", [{"body": "x"}]), "body") == ["x"]
    (tmp_path / "t.txt").write_text("whole\nfile\n")
    assert read_texts(tmp_path / "t.txt") == ["whole\nfile\n"]
    with pytest.raises(UserError, match="perplexity file not found: "):
        read_texts(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text(" \n")
    with pytest.raises(UserError, match="blank.txt holds no text to compute perplexity on"):
        read_texts(tmp_path / "blank.txt")


def test_compare_to_a_baseline_folder_by_hand(tmp_path):
    base = tmp_path / "base-run"
    base.mkdir()
    write_jsonl(
        base / "predictions.jsonl",
        [
            {"id": "1", "prediction": "a", "gold": "a", "correct": True},
            {"id": "2", "prediction": "a", "gold": "b", "correct": False},
            {"id": "3", "prediction": "b", "gold": "b", "correct": True},
            {"id": "9", "prediction": "b", "gold": "b", "correct": True},  # not in this run
        ],
    )
    mine = [
        {"id": "1", "prediction": "a", "gold": "a", "correct": True},
        {"id": "2", "prediction": "b", "gold": "b", "correct": True},
        {"id": "3", "prediction": "b", "gold": "b", "correct": True},
        {"id": "4", "prediction": "a", "gold": "b", "correct": False},  # not in the baseline
    ]
    result = {"_predictions": mine, "task": {"type": "classification", "labels": ["a", "b"]}}
    c = compare_to_baseline(result, str(base), bootstrap=200, alpha=0.1, seed=5)
    assert c["baseline"] == str(base) and c["items"] == 3
    assert c["accuracy"] == M.paired_bootstrap(
        [1.0, 1.0, 1.0], [1.0, 0.0, 1.0], n=200, alpha=0.1, seed=5
    )
    assert c["accuracy"]["diff"] == pytest.approx(1 / 3)
    pairs_a = [("a", "a"), ("b", "b"), ("b", "b")]
    pairs_b = [("a", "a"), ("a", "b"), ("b", "b")]
    assert c["macro_f1"] == M.paired_bootstrap(
        pairs_a, pairs_b, M.macro_f1_stat(["a", "b"]), n=200, alpha=0.1, seed=5
    )
    with pytest.raises(UserError, match="shares no item ids with this evaluation"):
        compare_to_baseline({**result, "_predictions": [mine[3]]}, str(base))
    with pytest.raises(UserError, match="is not an eval run folder"):
        compare_to_baseline(result, str(tmp_path))
