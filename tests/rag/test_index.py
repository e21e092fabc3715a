"""Indexing and retrieval with a fast deterministic embedder: BM25, dense, hybrid, filters,
incremental re-indexing, and the Milvus (lite) store behind the same interface."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oficina.errors import UserError
from oficina.rag import Index
from oficina.rag.index import build_index, read_documents
from oficina.rag.retrieve import RRF_K


def _build(corpus_dir, out, emb, **kw):
    docs, _ = read_documents([corpus_dir])
    return build_index(
        docs, out, embedder=emb, chunk_chars=160, overlap_chars=40, progress=False, **kw
    )


def test_index_chunks_keep_document_offsets(corpus_dir, tmp_path, hash_embedder):
    s = _build(corpus_dir, tmp_path / "idx", hash_embedder)
    assert s["docs"] == 4 and s["chunks"] > 4 and s["chunks_embedded"] == s["chunks"]
    index = Index.open(tmp_path / "idx", embedder=hash_embedder)
    rows = index.con.execute("SELECT doc_id, source, start, end, text FROM chunks").fetchall()
    for r in rows:
        original = open(r["source"], encoding="utf-8").read()
        assert original[r["start"] : r["end"]] == r["text"]
    assert {r["doc_id"] for r in rows} == {
        "cooking/bread.md",
        "cooking/soup.md",
        "garden/tomatoes.txt",
        "garden/roses.txt",
    }


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_three_retrievers_find_the_right_document(corpus_dir, tmp_path, hash_embedder, mode):
    _build(corpus_dir, tmp_path / "idx", hash_embedder)
    index = Index.open(tmp_path / "idx", embedder=hash_embedder)
    hits = index.search("how long should bread dough rise", k=3, mode=mode)
    assert hits[0].doc_id == "cooking/bread.md"
    assert all(h.doc_id and h.end > h.start for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    if mode != "bm25":
        assert hits[0].dense is not None and hits[0].dense > 0.2


def test_hybrid_is_reciprocal_rank_fusion(corpus_dir, tmp_path, hash_embedder):
    _build(corpus_dir, tmp_path / "idx", hash_embedder)
    index = Index.open(tmp_path / "idx", embedder=hash_embedder)
    q = "prune the plants and feed them compost"
    bm = [h.chunk_id for h in index.search(q, k=50, mode="bm25")]
    de = [h.chunk_id for h in index.search(q, k=50, mode="dense")]
    expected = {}
    for lst in (bm, de):
        for r, cid in enumerate(lst, 1):
            expected[cid] = expected.get(cid, 0) + 1 / (RRF_K + r)
    hy = index.search(q, k=3, mode="hybrid")
    best = sorted(expected.items(), key=lambda x: (-x[1], x[0]))[:3]
    assert [h.chunk_id for h in hy] == [c for c, _ in best]
    assert hy[0].score == pytest.approx(best[0][1])


def test_metadata_filters(corpus_dir, tmp_path, hash_embedder):
    _build(corpus_dir, tmp_path / "idx", hash_embedder)
    index = Index.open(tmp_path / "idx", embedder=hash_embedder)
    for mode in ("bm25", "dense", "hybrid"):
        hits = index.search("salt", k=10, mode=mode, filters={"doc_id": "cooking/soup.md"})
        assert hits and {h.doc_id for h in hits} == {"cooking/soup.md"}
        assert index.search("salt", k=5, mode=mode, filters={"doc_id": "nope"}) == []


def test_jsonl_metadata_filter_and_bad_records(tmp_path, hash_embedder):
    f = tmp_path / "docs.jsonl"
    f.write_text(
        json.dumps({"id": "a", "text": "Apples grow on trees in the orchard.", "lang": "en"})
        + "\n"
        + "{not json\n"
        + json.dumps({"id": "b", "text": "Maçãs crescem em árvores no pomar.", "lang": "pt"})
        + "\n"
        + json.dumps({"id": "c", "title": "no text"})
        + "\n"
    )
    docs, stats = read_documents([f])
    assert [d.doc_id for d in docs] == ["a", "b"] and stats["bad_records"] == 2
    build_index(docs, tmp_path / "idx", embedder=hash_embedder, progress=False)
    index = Index.open(tmp_path / "idx", embedder=hash_embedder)
    hits = index.search("orchard trees apples", k=5, filters={"lang": "pt"})
    assert [h.doc_id for h in hits] == ["b"]


def test_reindex_embeds_only_what_changed(corpus_dir, tmp_path, hash_embedder):
    out = tmp_path / "idx"
    first = _build(corpus_dir, out, hash_embedder)
    n_first = hash_embedder.texts_encoded
    assert n_first == first["chunks"]

    again = _build(corpus_dir, out, hash_embedder)  # nothing changed: nothing embedded
    assert hash_embedder.texts_encoded == n_first and again["docs_unchanged"] == 4

    # Change one file: only its new chunk texts are embedded; others keep their vectors.
    p = corpus_dir / "garden/roses.txt"
    p.write_text(p.read_text() + " Water them deeply in dry summers.")
    hash_embedder.seen.clear()
    third = _build(corpus_dir, out, hash_embedder)
    assert third["docs_new_or_changed"] == 1 and third["docs_unchanged"] == 3
    assert third["chunks_embedded"] == len(hash_embedder.seen) >= 1
    assert all(t in p.read_text() for t in hash_embedder.seen)
    index = Index.open(out, embedder=hash_embedder)
    assert index.vectors.count() == index.count() == third["chunks"]
    assert index.search("water deeply dry summer", k=1)[0].doc_id == "garden/roses.txt"
    index.close()

    # Remove a file: its chunks leave SQLite, the vector store and BM25.
    (corpus_dir / "cooking/soup.md").unlink()
    fourth = _build(corpus_dir, out, hash_embedder)
    assert fourth["docs_removed"] == 1 and fourth["chunks_embedded"] == 0
    index = Index.open(out, embedder=hash_embedder)
    assert index.vectors.count() == index.count() == fourth["chunks"]
    assert all(h.doc_id != "cooking/soup.md" for h in index.search("vegetable soup stock", k=10))


def test_changing_chunk_size_rebuilds(corpus_dir, tmp_path, hash_embedder):
    out = tmp_path / "idx"
    _build(corpus_dir, out, hash_embedder)
    docs, _ = read_documents([corpus_dir])
    s = build_index(
        docs, out, embedder=hash_embedder, chunk_chars=400, overlap_chars=0, progress=False
    )
    assert s["rebuilt"] and s["chunks_removed"] == 0
    index = Index.open(out, embedder=hash_embedder)
    assert index.vectors.count() == index.count() == s["chunks"]


def test_bad_inputs_are_user_errors(tmp_path, hash_embedder):
    with pytest.raises(UserError):
        read_documents([tmp_path / "missing"])
    with pytest.raises(UserError):
        Index.open(tmp_path)


def test_milvus_lite_store_same_answers(corpus_dir, tmp_path, hash_embedder):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    _build(corpus_dir, tmp_path / "flat", hash_embedder)
    s = _build(corpus_dir, tmp_path / "milvus", hash_embedder, store_kind="milvus")
    flat = Index.open(tmp_path / "flat", embedder=hash_embedder)
    mil = Index.open(tmp_path / "milvus", embedder=hash_embedder)
    try:
        assert mil.vectors.kind == "milvus" and mil.vectors.count() == s["chunks"]
        for q in ("tomato seedlings frost", "oven crust brown"):
            a = flat.search(q, k=3, mode="dense")
            b = mil.search(q, k=3, mode="dense")
            assert a[0].chunk_id == b[0].chunk_id  # same best chunk, same cosines (ties aside)
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
        hits = mil.search("salt", k=5, mode="dense", filters={"doc_id": "cooking/bread.md"})
        assert hits and {h.doc_id for h in hits} == {"cooking/bread.md"}
        scores = [h.dense for h in mil.search("roses", k=3, mode="dense")]
        assert np.all(np.diff(scores) <= 1e-6)
    finally:
        mil.close()
        flat.close()
    # incremental update reaches Milvus too
    p = corpus_dir / "garden/roses.txt"
    p.write_text(p.read_text() + " Roses also like mulch.")
    s2 = _build(corpus_dir, tmp_path / "milvus", hash_embedder, store_kind="milvus")
    mil = Index.open(tmp_path / "milvus", embedder=hash_embedder)
    assert mil.vectors.count() == mil.count() == s2["chunks"]
    mil.close()


def test_cli_index_and_eval(corpus_dir, tmp_path, monkeypatch, hash_embedder, capsys):
    """The verbs end to end through the CLI (with the fast embedder patched in)."""
    import oficina.models.embed as embed_mod
    from oficina.cli import main

    monkeypatch.setattr(
        embed_mod,
        "Embedder",
        lambda spec="minilm-l6", batch_size=64, precision="fp32": hash_embedder,
    )
    out = tmp_path / "idx"
    assert (
        main(
            [
                "index",
                str(corpus_dir),
                "--out",
                str(out),
                "--chunk-chars",
                "200",
                "--overlap-chars",
                "50",
            ]
        )
        == 0
    )
    assert "indexed 4 documents" in capsys.readouterr().out
    q = tmp_path / "q.jsonl"
    q.write_text(
        json.dumps(
            {"question": "how long to bake the loaf in the oven", "relevant": ["cooking/bread.md"]}
        )
        + "\n"
        + json.dumps({"question": "when to prune roses", "relevant": ["garden/roses.txt"]})
        + "\n"
    )
    assert main(["index", "eval", str(out), "--questions", str(q), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    for mode in ("bm25", "dense", "hybrid"):
        assert res[mode]["recall@1"] == 1.0 and res[mode]["mrr"] == 1.0
    assert main(["index", "eval", str(out), "--questions", str(tmp_path / "none.jsonl")]) == 2


def test_html_through_the_data_readers(tmp_path, hash_embedder):
    pytest.importorskip("selectolax")
    d = tmp_path / "site"
    d.mkdir()
    (d / "page.html").write_text(
        "<html><head><title>Kettles</title></head><body><nav>menu</nav>"
        "<article><p>Descale the kettle with vinegar every month to keep it working.</p></article></body></html>"
    )
    (d / "notes.md").write_text("Boil water only once for the best tea.")
    docs, stats = read_documents([d])
    assert {x.doc_id.split(":")[0] for x in docs} == {"page.html", "notes.md"}
    build_index(docs, tmp_path / "idx", embedder=hash_embedder, progress=False)
    hits = Index.open(tmp_path / "idx", embedder=hash_embedder).search(
        "descale kettle vinegar", k=1
    )
    assert hits[0].source.endswith("page.html") and "vinegar" in hits[0].text
