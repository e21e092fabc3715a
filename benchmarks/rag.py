"""RAG index: build rate (chunks/s) and query latency (p50/p95), embedded store vs Milvus lite.

Two parts, both printed as tables:
  1. Embedding: MiniLM (all-MiniLM-L6-v2) on real demo chunks — the part of build time that
     dominates on a CPU — and the latency of embedding one query.
  2. Store scale at 10k and 100k chunks: the full ``build_index`` path (SQLite rows, BM25 index,
     vector store) for the embedded store (SQLite + faiss flat) and for Milvus (milvus-lite,
     same pymilvus client as a cluster), then query latency for dense and hybrid search.
     Embedding 100k chunks with MiniLM on 2 cores would take ~2 hours, so this part uses random
     unit vectors (384-d) from a stand-in encoder; chunk texts are synthetic sentences drawn
     from the demo reference's vocabulary so BM25 sees a realistic term distribution. The
     query latency therefore excludes query embedding, which part 1 measures.

    .venv/bin/python benchmarks/rag.py            # 10k and 100k chunks, 200 queries each
    .venv/bin/python benchmarks/rag.py --quick    # 10k and 30k chunks, 50 queries
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


class RandomUnitEmbedder:
    """Stand-in encoder for the store-scale part: a random unit vector per text (seeded by it)."""

    name, dim, model_hash, batch_size = "random-unit-384", 384, "random-unit-384", 64

    def encode(self, texts, normalize: bool = True):
        import numpy as np

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def vocabulary() -> list[str]:
    words: dict[str, int] = {}
    for line in (ROOT / "examples/demo/reference.jsonl").read_text().splitlines():
        for w in re.findall(r"[A-Za-z_]{3,}", json.loads(line)["text"]):
            words[w.lower()] = words.get(w.lower(), 0) + 1
    return sorted(words, key=lambda w: -words[w])[:5000]


def synthetic_docs(n: int, vocab: list[str], seed: int = 0):
    """n one-chunk documents of ~60 words; Zipf-like word choice like real text."""
    from oficina.rag.index import Document

    rng = random.Random(seed)
    weights = [1.0 / (r + 1) for r in range(len(vocab))]
    docs = []
    for i in range(n):
        words = rng.choices(vocab, weights, k=60)
        sents = [" ".join(words[j : j + 12]).capitalize() + "." for j in range(0, 60, 12)]
        docs.append(Document(f"syn/{i:06d}", "synthetic", " ".join(sents)))
    return docs


def embedding_part(n_chunks: int) -> dict:
    """MiniLM over real demo chunks in float32 and under bf16 autocast (the default on AMX
    CPUs), interleaved twice, best of each; plus how far the bf16 vectors are from float32's."""
    import numpy as np

    from oficina.models.embed import Embedder
    from oficina.rag.chunking import chunk_text

    texts = []
    for line in (ROOT / "examples/demo/reference.jsonl").read_text().splitlines():
        t = json.loads(line)["text"]
        texts += [t[s:e] for s, e in chunk_text(t, 800, 150)]
    texts = random.Random(0).sample(texts, n_chunks)
    embs = {p: Embedder("minilm-l6", precision=p) for p in ("fp32", "bf16")}
    res: dict = {"chunks": n_chunks, "mean_chars": sum(map(len, texts)) / len(texts)}
    vecs = {}
    for _ in range(2):
        for p, emb in embs.items():
            emb.encode(texts[:4])  # warm-up
            t0 = time.perf_counter()
            vecs[p] = emb.encode(texts)
            rate = n_chunks / (time.perf_counter() - t0)
            res[f"{p}_chunks_per_s"] = max(rate, res.get(f"{p}_chunks_per_s", 0.0))
    lat = []
    for i in range(30):
        t1 = time.perf_counter()
        embs["bf16"].encode([f"what does the {i}th statement of a loop do?"])
        lat.append(time.perf_counter() - t1)
    cos = (vecs["fp32"] * vecs["bf16"]).sum(1)
    return {
        **res,
        "chunks_per_s": res["bf16_chunks_per_s"],
        "bf16_min_cosine": float(np.min(cos)),
        "query_p50_ms": 1000 * pct(lat, 0.5),
        "query_p95_ms": 1000 * pct(lat, 0.95),
    }


def store_part(n: int, kind: str, vocab: list[str], n_queries: int, workdir: Path) -> dict:
    from oficina.rag import Index
    from oficina.rag.index import build_index

    out = workdir / f"{kind}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    docs = synthetic_docs(n, vocab)
    emb = RandomUnitEmbedder()
    s = build_index(docs, out, embedder=emb, store_kind=kind, progress=False)
    index = Index.open(out, embedder=emb)
    rng = random.Random(1)
    queries = [" ".join(rng.choices(vocab[:2000], k=6)) for _ in range(n_queries)]
    res = {
        "chunks": s["chunks"],
        "build_chunks_per_s": s["chunks"] / s["wall_time_s"],
        "build_s": s["wall_time_s"],
        "store_s": s["store_s"],
        "bm25_s": s["bm25_s"],
    }
    for mode in ("dense", "hybrid"):
        index.search(queries[0], k=5, mode=mode)  # warm-up (loads BM25 / connects)
        lat = []
        for q in queries:
            index._qcache.clear()
            t0 = time.perf_counter()
            index.search(q, k=5, mode=mode)
            lat.append(time.perf_counter() - t0)
        res[f"{mode}_p50_ms"] = 1000 * pct(lat, 0.5)
        res[f"{mode}_p95_ms"] = 1000 * pct(lat, 0.95)
    filt = []
    for q in queries[:20]:
        t0 = time.perf_counter()
        index.search(
            q,
            k=5,
            mode="dense",
            filters={"doc_id": [f"syn/{i:06d}" for i in range(0, n, n // 100)]},
        )
        filt.append(time.perf_counter() - t0)
    res["filtered_dense_p50_ms"] = 1000 * statistics.median(filt)
    index.close()
    shutil.rmtree(out, ignore_errors=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="10k and 30k chunks, 50 queries")
    ap.add_argument("--queries", type=int, default=None, help="queries per store (200; quick 50)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument(
        "--embedding-only", action="store_true", help="part 1 only (MiniLM fp32 vs bf16)"
    )
    args = ap.parse_args()
    sizes = [10_000, 30_000] if args.quick else [10_000, 100_000]
    n_queries = args.queries or (50 if args.quick else 200)
    print(f"machine: {machine()}")

    print("\n1. embedding with MiniLM (real demo chunks, 800 chars max)", flush=True)
    e = embedding_part(64 if args.quick else 256)
    print(
        f"   {e['chunks']} chunks of {e['mean_chars']:.0f} chars: bf16 autocast "
        f"{e['bf16_chunks_per_s']:.1f} chunks/s vs float32 {e['fp32_chunks_per_s']:.1f} "
        f"({e['bf16_chunks_per_s'] / e['fp32_chunks_per_s']:.2f}x; min cosine to float32 "
        f"{e['bf16_min_cosine']:.5f}); one query {e['query_p50_ms']:.1f} ms p50, "
        f"{e['query_p95_ms']:.1f} ms p95"
    )

    results: dict = {"embedding": e, "stores": {}}
    if args.embedding_only:
        sizes = []
    else:
        print(
            f"\n2. store scale (random unit vectors, synthetic text, {n_queries} queries, k=5)",
            flush=True,
        )
    vocab = vocabulary()
    with tempfile.TemporaryDirectory(prefix="oficina-rag-bench-") as tmp:
        for n in sizes:
            for kind in ("embedded", "milvus"):
                t0 = time.perf_counter()
                r = store_part(n, kind, vocab, n_queries, Path(tmp))
                results["stores"][f"{kind}-{n}"] = r
                print(
                    f"   {kind:>8} {n:>7}: built in {r['build_s']:.1f}s ({time.perf_counter() - t0:.0f}s with queries)",
                    flush=True,
                )

    rows = [
        ("build rate (chunks/s)", "build_chunks_per_s", "{:.0f}"),
        ("  vector store add (s)", "store_s", "{:.2f}"),
        ("  BM25 build (s)", "bm25_s", "{:.2f}"),
        ("dense query p50 (ms)", "dense_p50_ms", "{:.2f}"),
        ("dense query p95 (ms)", "dense_p95_ms", "{:.2f}"),
        ("hybrid query p50 (ms)", "hybrid_p50_ms", "{:.2f}"),
        ("hybrid query p95 (ms)", "hybrid_p95_ms", "{:.2f}"),
        ("filtered dense p50 (ms)", "filtered_dense_p50_ms", "{:.2f}"),
    ]
    for n in sizes:
        a, b = results["stores"][f"embedded-{n}"], results["stores"][f"milvus-{n}"]
        print(f"\n{n:,} chunks{'':<16} {'embedded':>10} {'milvus-lite':>12} {'milvus/emb':>10}")
        for label, key, fmt in rows:
            ratio = b[key] / a[key] if a[key] else float("nan")
            print(f"{label:<26} {fmt.format(a[key]):>10} {fmt.format(b[key]):>12} {ratio:>9.2f}x")
    full = e["chunks_per_s"]
    print(
        f"\nwith MiniLM embedding ({full:.1f} chunks/s) the build of 100k real chunks would take "
        f"~{100_000 / full / 3600:.1f} h; embedding is >95% of build time on this CPU."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
