"""The real MiniLM embedder: 384-d unit vectors, sentence-transformers' masked mean pooling."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def minilm():
    from oficina.models.embed import Embedder

    return Embedder("minilm-l6", batch_size=4)  # float32, the default: exact checks below


def test_shape_norm_and_meaning(minilm):
    texts = [
        "What does the yield statement do?",
        "A function containing yield becomes a generator function.",
        "Bake the bread in a hot oven for forty minutes.",
    ]
    v = minilm.encode(texts)
    assert v.shape == (3, 384) and v.dtype == np.float32 and minilm.dim == 384
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.4 > v[0] @ v[2]
    assert minilm.encode([]).shape == (0, 384)
    assert minilm.count_tokens("hello world") == 4  # [CLS] hello world [SEP]


def test_mean_pooling_over_attention_mask_matches_manual(minilm):
    """Padding in a batch must not change a vector: pooling averages real tokens only."""
    import torch

    short, long = "yield", "The yield statement is semantically equivalent to a yield expression."
    batched = minilm.encode([short, long])
    alone = minilm.encode([short])
    assert np.allclose(batched[0], alone[0], atol=1e-5)
    enc = minilm.tokenizer([short], return_tensors="pt")
    with torch.inference_mode():
        h = minilm.model(**enc).last_hidden_state[0]
    manual = h.mean(0)
    manual = (manual / manual.norm()).numpy()
    assert np.allclose(alone[0], manual, atol=1e-5)
    # Unnormalised vectors are the raw means (sentence-transformers without Normalize).
    raw = minilm.encode([short], normalize=False)[0]
    assert np.allclose(raw, h.mean(0).numpy(), atol=1e-5)


def test_long_text_is_truncated_to_the_trained_length(minilm):
    assert minilm.max_length == 256
    v = minilm.encode(["word " * 2000])
    assert v.shape == (1, 384) and np.isfinite(v).all()


def test_minilm_index_finds_demo_answers_and_rejects_off_topic(minilm, repo_root, tmp_path):
    """Small slice of the demo: the right document first, and an off-topic question scores
    below ask's relevance threshold (0.3), so `oficina ask` would say 'not found'."""
    import json

    from oficina.rag import Index
    from oficina.rag.ask import is_relevant
    from oficina.rag.index import Document, build_index

    keep = {"pyref/pass", "pyref/break", "pyref/continue", "pyref/truth", "pyref/lambda"}
    docs = [
        Document(d["id"], d["source"], d["text"], {"title": d["title"]})
        for d in map(
            json.loads, (repo_root / "examples/demo/reference.jsonl").read_text().splitlines()
        )
        if d["id"] in keep
    ]
    build_index(docs, tmp_path / "idx", embedder=minilm, progress=False)
    index = Index.open(tmp_path / "idx", embedder=minilm)
    for q, want in [
        ("How do I skip to the next iteration of a loop?", "pyref/continue"),
        ("Which values count as false in an if condition?", "pyref/truth"),
        ("Can a lambda contain statements?", "pyref/lambda"),
    ]:
        for mode in ("dense", "hybrid"):
            hits = index.search(q, k=3, mode=mode)
            assert hits[0].doc_id == want and is_relevant(hits[0], 0.3, None)
    off = index.search("What is the capital of France?", k=5, mode="hybrid")
    assert not any(is_relevant(h, 0.3, None) for h in off)


def test_bf16_autocast_keeps_the_float32_vectors_and_neighbours(minilm, repo_root):
    """``--precision bf16``, the fast path on AMX CPUs: every vector within cosine 0.9995 of float32's and the same
    nearest neighbour for each text."""
    import json

    from oficina.models.embed import Embedder

    fast = Embedder("minilm-l6", batch_size=8, precision="bf16")
    assert minilm.precision == "fp32" and fast.precision == "bf16"
    docs = [json.loads(x)["text"] for x in (repo_root / "examples/demo/reference.jsonl").open()]
    texts = [d[i : i + 600] for d in docs[:12] for i in (0, 600)]
    a, b = minilm.encode(texts), fast.encode(texts)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert ((a * b).sum(1) > 0.9995).all()
    sa, sb = a @ a.T - 2 * np.eye(len(a)), b @ b.T - 2 * np.eye(len(b))
    assert (sa.argmax(1) == sb.argmax(1)).mean() >= 0.95
    with pytest.raises(ValueError, match="precision"):
        Embedder("minilm-l6", precision="fp16")


def test_an_index_embeds_queries_in_the_precision_of_its_passages(tmp_path):
    import json

    from oficina.models.embed import Embedder
    from oficina.rag import Index
    from oficina.rag.index import Document, build_index

    docs = [Document("a", "t", "The pass statement does nothing."), Document("b", "t", "Loops.")]
    build_index(docs, tmp_path / "i", embedder=Embedder(precision="bf16"), progress=False)
    assert json.loads((tmp_path / "i" / "index.json").read_text())["embed_precision"] == "bf16"
    index = Index.open(tmp_path / "i")
    assert index.embedder.precision == "bf16"
    assert index.search("what does pass do?", k=1, mode="dense")[0].doc_id == "a"
    index.close()
    # another precision is another encoder: every chunk is embedded again, none reused
    again = build_index(docs, tmp_path / "i", embedder=Embedder(precision="fp32"), progress=False)
    assert again["rebuilt"] and again["chunks_embedded"] == again["chunks"] == 2
    assert again["chunks_reused_embedding"] == 0
    assert json.loads((tmp_path / "i" / "index.json").read_text())["embed_precision"] == "fp32"
