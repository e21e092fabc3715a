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


def test_weighted_rrf_hand_computed():
    from oficina.rag.retrieve import rrf

    bm25 = [(1, 9.0), (2, 5.0), (3, 1.0)]
    dense = [(3, 0.9), (1, 0.8)]
    # depth 2: BM25 contributes chunks 1, 2; dense contributes 3, 1.
    out = dict(rrf([bm25, dense], [0.5, 1.0], depth=2))
    assert out[1] == pytest.approx(0.5 / 61 + 1 / 62)
    assert out[2] == pytest.approx(0.5 / 62)
    assert out[3] == pytest.approx(1 / 61)
    assert [c for c, _ in rrf([bm25, dense], [0.5, 1.0], depth=2)] == [1, 3, 2]
    # weight 0: the BM25 list has no vote at all, hybrid is the dense order
    assert [c for c, _ in rrf([bm25, dense], [0.0, 1.0], depth=3)] == [3, 1]


def _questions():
    return [
        {"question": "knead dough and bake the loaf", "relevant": ["cooking/bread.md"]},
        {"question": "simmer the vegetable stock", "relevant": ["cooking/soup.md"]},
        {"question": "tomatoes need sun and water", "relevant": ["garden/tomatoes.txt"]},
        {"question": "prune roses in winter", "relevant": ["garden/roses.txt"]},
        {"question": "season with salt and pepper", "relevant": ["cooking/soup.md"]},
        {"question": "harvest red fruit", "relevant": ["garden/tomatoes.txt"]},
    ]


def test_calibration_is_cross_validated_and_stored(
    corpus_dir, tmp_path, hash_embedder, capsys, monkeypatch
):
    import oficina.models.embed as embed_mod
    from oficina.cli import main

    docs, _ = read_documents([corpus_dir])
    build_index(docs, tmp_path / "idx", embedder=hash_embedder, progress=False)
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in _questions()))
    monkeypatch.setattr(
        embed_mod,
        "Embedder",
        lambda spec="minilm-l6", batch_size=64, precision="fp32": hash_embedder,
    )
    assert (
        main(
            [
                "index",
                "eval",
                str(tmp_path / "idx"),
                "--questions",
                str(q),
                "--calibrate",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    fusion = out["fusion"]
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["fusion"] == fusion  # stored for every later search
    assert fusion["bm25_weight"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert fusion["questions"] == 6 and fusion["calibrated_on"] == str(q)
    assert set(out["results"]) == {"bm25", "dense", "hybrid", "hybrid calibrated"}
    # these questions are easy for every retriever: cross-validation finds them all
    assert out["results"]["hybrid calibrated"]["recall@5"] == 1.0
    # later searches use the stored weight: with weight 0 the hybrid order is the dense one
    meta["fusion"]["bm25_weight"] = 0.0
    (tmp_path / "idx" / "index.json").write_text(json.dumps(meta))
    index = Index.open(tmp_path / "idx", embedder=hash_embedder)
    query = "bake bread with salt"
    dense = [h.chunk_id for h in index.search(query, k=5, mode="dense")]
    assert [h.chunk_id for h in index.search(query, k=5, mode="hybrid")] == dense
    # and an evaluation on the same questions says it is in-sample
    assert main(["index", "eval", str(tmp_path / "idx"), "--questions", str(q)]) == 0
    assert "in-sample" in capsys.readouterr().out


def test_calibration_picks_the_better_weight(corpus_dir, tmp_path, hash_embedder):
    """A BM25 list that is pure noise must be voted down: plain RRF suffers, calibration not."""
    from oficina.rag.evaluate import calibrate

    docs, _ = read_documents([corpus_dir])
    build_index(docs, tmp_path / "idx", embedder=hash_embedder, progress=False)
    index = Index.open(tmp_path / "idx", embedder=hash_embedder)
    ids = [r[0] for r in index.con.execute("SELECT id FROM chunks ORDER BY id DESC")]
    # BM25 replaced by a retriever that ranks chunks in reverse id order whatever the query
    index.bm25_search = lambda query, n, allowed=None: [(c, 1.0) for c in ids[:n]]
    res = calibrate(index, _questions(), [1, 5], progress=False)
    plain = evaluate(index, _questions(), [1, 5], progress=False)
    assert plain["hybrid"]["mrr"] < plain["dense"]["mrr"]  # the noise costs plain RRF
    assert res["bm25_weight"] < 1.0
    assert res["in_sample"]["mrr"] == plain["dense"]["mrr"]
    assert res["cv"]["mrr"] >= plain["hybrid"]["mrr"]
    with pytest.raises(UserError, match="at least 5 questions"):
        calibrate(index, _questions()[:3], [5], progress=False)
