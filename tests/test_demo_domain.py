"""The bundled demo domain is deterministic and its splits never share a passage."""

from __future__ import annotations

import json
import sys

import pytest

from oficina import demo_domain


def _rows(root, split):
    return [
        json.loads(x)
        for x in (root / "examples/demo/task" / f"{split}.jsonl").read_text().splitlines()
    ]


def test_splits_are_disjoint_and_labelled(repo_root):
    splits = {s: _rows(repo_root, s) for s in ("train", "validation", "test")}
    texts = {s: {r["text"] for r in rows} for s, rows in splits.items()}
    assert not (texts["train"] & texts["validation"]) and not (texts["train"] & texts["test"])
    assert not (texts["validation"] & texts["test"])
    labels = set(demo_domain.LABELS)
    for rows in splits.values():
        assert {r["label"] for r in rows} == labels
    assert len(splits["train"]) > 300 and len(splits["test"]) > 60


def test_rebuild_equals_committed(repo_root, tmp_path):
    task = json.loads((repo_root / "examples/demo/task/task.json").read_text())
    if task["python"] != sys.version.split()[0]:
        pytest.skip(
            f"committed files were built on Python {task['python']}; pydoc topics differ by version"
        )
    demo_domain.build(tmp_path)
    for rel in ("reference.jsonl", "task/train.jsonl", "task/validation.jsonl", "task/test.jsonl"):
        assert (tmp_path / rel).read_text() == (repo_root / "examples/demo" / rel).read_text(), rel
