"""Retrieval metrics and the demo question set."""

from __future__ import annotations

import json

import pytest

from oficina.errors import UserError
from oficina.rag import demo_questions
from oficina.rag.evaluate import evaluate, read_questions
from oficina.rag.index import build_index, read_documents
from oficina.rag.retrieve import Index


def test_recall_and_mrr_values(corpus_dir, tmp_path, hash_embedder):
    docs, _ = read_documents([corpus_dir])
    build_index(docs, tmp_path / "idx", embedder=hash_embedder, progress=False)
    index = Index.open(tmp_path / "idx", embedder=hash_embedder)
    qs = [
        {"question": "knead dough and bake the loaf", "relevant": ["cooking/bread.md"]},
        # two relevant docs: recall@1 can be at most 1/2
        {"question": "salt", "relevant": ["cooking/bread.md", "cooking/soup.md"]},
        # a relevant doc that cannot be found: MRR 0, recall 0
        {"question": "knead dough and bake the loaf", "relevant": ["no/such/doc"]},
    ]
    res = evaluate(index, qs, [1, 5], progress=False)
    for mode in ("bm25", "dense", "hybrid"):
        r = res[mode]
        assert r["recall@1"] == pytest.approx((1 + 0.5 + 0) / 3, abs=1e-4)
        assert r["recall@5"] == pytest.approx((1 + 1 + 0) / 3, abs=1e-4)
        assert r["mrr"] == pytest.approx((1 + 1 + 0) / 3, abs=1e-4)


def test_question_file_errors(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(UserError, match="relevant"):
        read_questions(bad)
    bad.write_text("not json\n")
    with pytest.raises(UserError, match="not valid JSON"):
        read_questions(bad)


def test_demo_questions_derive_from_reference(repo_root):
    rows = demo_questions.build_questions(repo_root / "examples/demo/reference.jsonl")
    shipped = [
        json.loads(x)
        for x in (repo_root / "examples/demo/questions.jsonl").read_text().splitlines()
    ]
    assert rows == shipped  # the shipped file is exactly what the builder derives
    assert len(rows) >= 60
    docs = {
        json.loads(x)["id"]: " ".join(json.loads(x)["text"].split())
        for x in (repo_root / "examples/demo/reference.jsonl").read_text().splitlines()
    }
    for r in rows:
        for d in r["relevant"]:
            assert " ".join(r["evidence"].split()) in docs[d]
        # Questions are paraphrases, not copies: no long run of words shared with the evidence.
        q_words = r["question"].lower().split()
        ev = " ".join(r["evidence"].lower().split())
        assert not any(" ".join(q_words[i : i + 5]) in ev for i in range(len(q_words) - 4))


def test_missing_evidence_is_an_error(tmp_path, monkeypatch):
    ref = tmp_path / "reference.jsonl"
    ref.write_text(json.dumps({"id": "a", "text": "nothing here"}) + "\n")
    monkeypatch.setattr(demo_questions, "QUESTIONS", [("q?", "absent quote")])
    with pytest.raises(ValueError, match="not in the reference"):
        demo_questions.build_questions(ref)
