"""``oficina ladder --data FILE.jsonl``: the user's one labelled file -> stratified, seeded splits,
reused on a rerun; and every way the file can be unusable stops with one line (exit 2)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from oficina.cli import main
from oficina.errors import UserError
from oficina.ladder.data import prepare_task


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def labelled(counts: dict[str, int], text="item") -> list[dict]:
    return [
        {"text": f"{text} {lab} {i}", "label": lab} for lab, k in counts.items() for i in range(k)
    ]


def read_split(d: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (d / f"{name}.jsonl").read_text().splitlines()]


def test_split_is_stratified_disjoint_and_complete(tmp_path):
    rows = labelled({"billing": 10, "bug": 6, "other": 4})
    rows += [rows[0], rows[7]]  # two exact duplicates: dropped
    f = write_rows(tmp_path / "t.jsonl", rows)
    task = json.loads(prepare_task(f, tmp_path / "data").read_text())
    assert task["labels"] == ["billing", "bug", "other"] and task["duplicates_removed"] == 2
    assert "{text}" in task["template"] and "billing, bug, other" in task["template"]
    splits = {s: read_split(tmp_path / "data", s) for s in ("train", "validation", "test")}
    # Per label: test round(20%) (at least 1), validation round(10%) (at least 1), the rest train.
    # billing 10 -> 2/1/7, bug 6 -> 1/1/4, other 4 -> 1/1/2.
    assert Counter(r["label"] for r in splits["test"]) == {"billing": 2, "bug": 1, "other": 1}
    assert Counter(r["label"] for r in splits["validation"]) == {"billing": 1, "bug": 1, "other": 1}
    assert Counter(r["label"] for r in splits["train"]) == {"billing": 7, "bug": 4, "other": 2}
    ids = [r["id"] for part in splits.values() for r in part]
    assert len(ids) == len(set(ids)) == 20  # no row in two splits, every distinct row somewhere
    texts = {r["text"] for part in splits.values() for r in part}
    assert texts == {r["text"] for r in rows}
    assert task["sizes"] == {"train": 13, "validation": 3, "test": 4}


def test_split_is_seeded_and_reused_on_a_rerun(tmp_path):
    f = write_rows(tmp_path / "t.jsonl", labelled({"a": 12, "b": 12}))
    task_file = prepare_task(f, tmp_path / "d1", seed=3)
    first = {s: (tmp_path / "d1" / f"{s}.jsonl").read_text() for s in ("train", "test")}
    stamp = task_file.stat().st_mtime_ns
    assert prepare_task(f, tmp_path / "d1", seed=3) == task_file
    assert task_file.stat().st_mtime_ns == stamp  # reused, not rewritten
    prepare_task(f, tmp_path / "d2", seed=3)
    assert (tmp_path / "d2" / "test.jsonl").read_text() == first["test"]  # same seed, same split
    prepare_task(f, tmp_path / "d3", seed=4)
    assert (tmp_path / "d3" / "test.jsonl").read_text() != first["test"]
    # Another seed or a changed file in the same folder: refused, nothing overwritten.
    with pytest.raises(UserError, match="another seed"):
        prepare_task(f, tmp_path / "d1", seed=5)
    write_rows(f, labelled({"a": 12, "b": 13}))
    with pytest.raises(UserError, match="another sha256"):
        prepare_task(f, tmp_path / "d1", seed=3)
    assert (tmp_path / "d1" / "train.jsonl").read_text() == first["train"]


def test_question_answer_rows_make_a_generation_task(tmp_path):
    rows = [{"question": f"what is {i}?", "answer": f"number {i}"} for i in range(30)]
    f = write_rows(tmp_path / "qa.jsonl", rows + [rows[4]])
    task = json.loads(prepare_task(f, tmp_path / "d").read_text())
    assert task["type"] == "generation" and "labels" not in task and task["duplicates_removed"] == 1
    assert "{text}" in task["template"] and task["sizes"] == {
        "train": 21,
        "validation": 3,
        "test": 6,
    }
    test = read_split(tmp_path / "d", "test")
    assert set(test[0]) == {"id", "text", "answer"} and test[0]["text"].startswith("what is")
    ids = [r["id"] for s in ("train", "validation", "test") for r in read_split(tmp_path / "d", s)]
    assert sorted(ids) == list(range(1, 31))  # no row in two splits, the duplicate (31) dropped


def test_the_split_shares_are_settings_and_part_of_what_a_rerun_reuses(tmp_path):
    rows = [{"question": f"what is {i}?", "answer": f"number {i}"} for i in range(100)]
    f = write_rows(tmp_path / "qa.jsonl", rows)
    task = json.loads(
        prepare_task(f, tmp_path / "d", test_fraction=0.4, validation_fraction=0.15).read_text()
    )
    assert task["sizes"] == {"train": 45, "validation": 15, "test": 40}
    assert task["source"]["test_fraction"] == 0.4
    # The same folder with other shares: refused, the splits kept.
    with pytest.raises(UserError, match="another test_fraction"):
        prepare_task(f, tmp_path / "d", test_fraction=0.2, validation_fraction=0.15)
    # A folder split before the shares were settings was split with the defaults: reused.
    old = json.loads((tmp_path / "d" / "task.json").read_text())
    prepare_task(f, tmp_path / "e")
    legacy = json.loads((tmp_path / "e" / "task.json").read_text())
    for k in ("test_fraction", "validation_fraction"):
        del legacy["source"][k]
    (tmp_path / "e" / "task.json").write_text(json.dumps(legacy))
    assert prepare_task(f, tmp_path / "e") == tmp_path / "e" / "task.json"
    assert old["sizes"] != legacy["sizes"]


def test_shares_that_leave_nothing_to_train_on_are_refused(tmp_path, capsys):
    f = write_rows(tmp_path / "t.jsonl", labelled({"a": 12, "b": 12}))
    out = tmp_path / "o"
    argv = ["ladder", "--data", str(f), "--out", str(out), "--test-fraction", "0.8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "leave under 10% to train on" in err and err.count("\n") == 1
    assert not out.exists()
    # Per label, small labels round up: 3 examples at 0.5 + 0.35 leave none of 'c' to train on.
    f = write_rows(tmp_path / "s.jsonl", labelled({"a": 12, "b": 12, "c": 3}))
    with pytest.raises(UserError, match="no example of 'c' is left to train on"):
        prepare_task(f, out, test_fraction=0.5, validation_fraction=0.35)


def test_other_field_names(tmp_path):
    rows = [{"body": r["text"], "team": r["label"]} for r in labelled({"x": 10, "y": 10})]
    f = write_rows(tmp_path / "t.jsonl", rows)
    task = json.loads(
        prepare_task(f, tmp_path / "d", text_field="body", label_field="team").read_text()
    )
    assert task["labels"] == ["x", "y"] and read_split(tmp_path / "d", "test")[0]["text"]


ERRORS = {
    "not_jsonl": ("this is not json\n{\"text\": 1}\n", "is not JSONL: 1 of 2 lines"),
    "too_few": (labelled({"a": 5, "b": 5}), "has 10 distinct examples: the ladder needs at least 20"),
    "seen_once": (labelled({"a": 12, "b": 12, "c": 1}), "label 'c' appears once"),
    "two_only": (labelled({"a": 12, "b": 12, "c": 2}), "label 'c' has only 2 examples"),
    "one_label": (labelled({"a": 25}), "has one label ('a')"),
    "missing": (labelled({"a": 12, "b": 12}) + [{"text": "no label here"}], "row 25 of"),
    "empty": (labelled({"a": 12, "b": 12}) + [{"text": "  ", "label": "a"}], "empty or non-text 'text'"),
    "conflict": (labelled({"a": 12, "b": 12}) + [{"text": "item a 0", "label": "b"}], "same text with labels 'a' and 'b'"),
    "fields": ([{"body": "x", "team": "y"}] * 30, "no 'text' and 'label' fields (its fields: body, team)"),
    "qa_too_few": ([{"question": f"q{i}", "answer": "a"} for i in range(12)], "has 12 distinct examples"),
    "qa_conflict": ([{"question": f"q{i}", "answer": "a"} for i in range(30)] + [{"question": "q3", "answer": "b"}], "same question with answers 'a' and 'b'"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_unusable_data_is_one_line_exit_2_and_nothing_written(case, tmp_path, capsys):
    content, expected = ERRORS[case]
    f = tmp_path / "data.jsonl"
    if isinstance(content, str):
        f.write_text(content)
    else:
        write_rows(f, content)
    out = tmp_path / "out"
    assert main(["ladder", "--data", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_a_metric_of_the_other_kind_is_refused_before_anything_runs(tmp_path, capsys):
    f = write_rows(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": "a"} for i in range(25)])
    argv = ["ladder", "--data", str(f), "--out", str(tmp_path / "o"), "--metric", "macro_f1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "--metric macro_f1 does not score a generation task: use one of exact_match, token_f1"
        in err
    )
    assert not (tmp_path / "o" / "summary.json").exists() and not (tmp_path / "ws").exists()


def test_chat_on_a_classification_task_is_refused_before_anything_runs(tmp_path, capsys):
    f = write_rows(tmp_path / "t.jsonl", labelled({"a": 12, "b": 12}))
    argv = ["ladder", "--data", str(f), "--out", str(tmp_path / "o"), "--chat", "on"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "chat: on is for generation tasks" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "summary.json").exists() and not (tmp_path / "ws").exists()
    assert main([*argv[:-2], "--chat", "sometimes"]) == 2  # not a choice: one line too
    err = capsys.readouterr().err
    assert "auto" in err and "Traceback" not in err


def test_select_by_metric_on_a_generation_task_is_refused_before_anything_runs(tmp_path, capsys):
    f = write_rows(
        tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(30)]
    )
    argv = ["ladder", "--data", str(f), "--out", str(tmp_path / "o"), "--select-by", "metric"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "select_by: metric is for classification tasks" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_missing_data_file_and_bad_template(tmp_path, capsys):
    assert main(["ladder", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)]) == 2
    assert "data file not found" in capsys.readouterr().err
    f = write_rows(tmp_path / "t.jsonl", labelled({"a": 12, "b": 12}))
    argv = ["ladder", "--data", str(f), "--out", str(tmp_path / "o"), "--template", "no slot"]
    assert main(argv) == 2
    assert "must contain {text}" in capsys.readouterr().err


def test_the_qa_demo_config_is_a_generation_task_answered_by_the_reference(
    repo_root, tmp_path, monkeypatch
):
    from oficina.config import load
    from oficina.ladder.run import LadderConfig, load_task

    monkeypatch.chdir(repo_root)  # the config's paths are relative to the repository
    cfg = load(LadderConfig, "examples/ladder-qa.yaml", {"out": str(tmp_path)})
    task, corpus = load_task(cfg)
    assert task.kind == "generation" and corpus == "examples/demo/reference.jsonl"
    # 225 questions: test round(67.5) = 68 (test_fraction 0.3), validation round(22.5) = 22,
    # training the other 135, of which the ladder trains on a seeded 64 (limit_train).
    assert task.split_sizes == {"train": 135, "validation": 22, "test": 68}
    assert len(task.test) == 68 and len(task.train) == 64
    docs = [json.loads(x)["text"] for x in Path(corpus).read_text().splitlines()]
    reference = " ".join(" ".join(d.split()) for d in docs)
    assert all(" ".join(r["answer"].split()) in reference for r in task.test)
    # Every rung climbs this ladder, the trained ones too and lora_rag where retrieval matters,
    # but full fine-tuning and distillation (the classification demo shows them) and continued
    # pretraining (make demo's time).
    from oficina.ladder.rungs import REGISTRY

    off = [n for n in REGISTRY if not getattr(cfg.rungs, n).enabled]
    assert off == ["full", "cpt_lora", "distill"]


def test_a_limit_keeps_each_labels_share_not_the_files_first_rows():
    """The demo's files are in topic order: the first 160 training rows held 4 of 93 'built-in
    type' passages. A limit is a seeded sample per label, in file order."""
    from oficina.ladder.data import sample_rows

    rows = labelled({"a": 60, "b": 30, "c": 9, "d": 1})  # grouped by label, as the demo's
    got = sample_rows(rows, 20, seed=0)
    # shares 12, 6, 1.8, 0.2: largest remainders give c 2; d keeps one, taken from a
    assert Counter(r["label"] for r in got) == {"a": 11, "b": 6, "c": 2, "d": 1}
    assert got == sorted(got, key=rows.index)  # file order kept
    assert sample_rows(rows, 20, seed=0) == got and sample_rows(rows, 20, seed=1) != got
    assert sample_rows(rows, None, 0) == rows and sample_rows(rows, 500, 0) == rows
    # Rows without labels (a generation task): a plain seeded sample.
    qa = [{"text": f"q{i}", "answer": "x"} for i in range(50)]
    assert len(sample_rows(qa, 7, 0)) == 7 and sample_rows(qa, 7, 0) != qa[:7]


def test_the_ladder_limits_sample_every_split(tmp_path):
    from oficina.ladder.context import Task

    d = tmp_path / "task"
    d.mkdir()
    for split, k in (("train", 40), ("validation", 20), ("test", 20)):
        write_rows(d / f"{split}.jsonl", labelled({"x": k, "y": k}, text=split))
    (d / "task.json").write_text(json.dumps({"labels": ["x", "y"], "template": "{text}"}))
    t = Task.load(d / "task.json", limit_train=10, limit_validation=6, limit_test=4, seed=0)
    for rows, n in ((t.train, 10), (t.validation, 6), (t.test, 4)):
        assert Counter(r["label"] for r in rows) == {"x": n // 2, "y": n // 2}
    assert t.split_sizes == {"train": 80, "validation": 40, "test": 40}
