"""Search an index: BM25 (lexical), dense (embedding cosine) and hybrid (reciprocal rank fusion).

Hybrid fuses the two ranked lists with RRF: ``score(c) = sum over lists of w / (60 + rank)``
(Cormack et al., 2009, k = 60), taking the top ``depth`` of each list. Plain RRF weighs both
lists alike (``w = 1``, depth 20). When one retriever is much weaker on a corpus — BM25 on
questions phrased in other words than the documents — equal votes let it pull good dense hits
down, so the BM25 weight and the depth can be *calibrated* on the user's own labelled questions
(``oficina index eval --calibrate``, which reports a cross-validated figure and stores them in
``index.json``). RRF needs no score calibration between BM25 and cosine, which live on different
scales. Every hit still carries both raw scores (``bm25``, ``dense``) so a caller can judge
relevance (``oficina ask`` does).

    from oficina.rag import Index
    index = Index.open("workspace/indexes/demo")
    for hit in index.search("how do generators work?", k=5, mode="hybrid"):
        print(hit.doc_id, hit.start, hit.end, round(hit.score, 4))
    index.search("...", filters={"doc_id": ["pyref/yield", "pyref/for"]})
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from oficina.errors import NotFound, UserError
from oficina.rag import store

RRF_K = 60
MODES = ("bm25", "dense", "hybrid")
DEFAULT_FUSION = {"bm25_weight": 1.0, "depth": 20}  # plain RRF


def rrf(
    lists: list[list[tuple[int, float]]], weights: list[float], depth: int, k: int = RRF_K
) -> list[tuple[int, float]]:
    """Weighted reciprocal rank fusion of ranked (id, score) lists, best first.

    Each list contributes ``weight / (k + rank)`` for its first ``depth`` entries; ties break
    on the id so the order is deterministic.
    """
    fused: dict[int, float] = {}
    for lst, w in zip(lists, weights, strict=True):
        if w <= 0:
            continue
        for rank, (cid, _) in enumerate(lst[:depth], start=1):
            fused[cid] = fused.get(cid, 0.0) + w / (k + rank)
    return sorted(fused.items(), key=lambda x: (-x[1], x[0]))


@dataclass
class Hit:
    chunk_id: int
    doc_id: str
    source: str
    start: int
    end: int
    text: str
    score: float  # the mode's own score: BM25, cosine, or RRF
    bm25: float | None = None  # raw BM25 score when the chunk was in the BM25 list
    dense: float | None = None  # cosine similarity to the query (always filled for dense/hybrid)

    def to_dict(self) -> dict:
        return asdict(self)


def bm25_tokenize(texts: list[str], stemmer_name: str | None, ids: bool):
    """The one tokenizer for indexing and querying: lowercase words, English stopwords, stems."""
    import bm25s

    stemmer = None
    if stemmer_name:
        try:
            import Stemmer
        except ImportError:
            raise UserError(
                "this index was built with stemming; install PyStemmer (pip install PyStemmer)"
            ) from None
        stemmer = Stemmer.Stemmer(stemmer_name).stemWords
    return bm25s.tokenize(
        texts, stopwords="en", stemmer=stemmer, return_ids=ids, show_progress=False
    )


def default_stemmer() -> str | None:
    try:
        import Stemmer  # noqa: F401

        return "english"
    except ImportError:
        return None


class Index:
    """An index directory opened for search. Open with ``Index.open(dir)``."""

    def __init__(self, index_dir: Path, meta: dict, embedder=None):
        self.dir = Path(index_dir)
        self.meta = meta
        self.con = store.connect(self.dir)
        self._embedder = embedder
        self._vectors = None
        self._bm25 = None
        self._bm25_ids: np.ndarray | None = None
        self._qcache: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, index_dir: str | Path, embedder=None) -> Index:
        d = Path(index_dir)
        meta_f = d / "index.json"
        if not d.exists():
            raise NotFound(f"index not found: {d}; build one with `oficina index`")
        if not meta_f.is_file():
            raise UserError(f"{d} is not an index (no index.json); build one with `oficina index`")
        return cls(d, json.loads(meta_f.read_text()), embedder)

    # -- parts, loaded on first use -----------------------------------------
    @property
    def embedder(self):
        if self._embedder is None:
            from oficina.models.embed import Embedder

            # queries in the precision the passages were embedded in
            self._embedder = Embedder(
                self.meta["embedder"], precision=self.meta.get("embed_precision", "fp32")
            )
        if getattr(self._embedder, "dim", self.meta["dim"]) != self.meta["dim"]:
            raise UserError(
                f"embedder {self._embedder.name} gives {self._embedder.dim}-d vectors, "
                f"the index holds {self.meta['dim']}-d"
            )
        return self._embedder

    @property
    def vectors(self):
        if self._vectors is None:
            self._vectors = store.open_vector_store(self.dir, self.meta)
        return self._vectors

    def _load_bm25(self):
        if self._bm25 is None:
            import bm25s

            bdir = self.dir / "bm25"
            self._bm25_ids = np.load(bdir / "ids.npy", allow_pickle=False)
            if len(self._bm25_ids):
                self._bm25 = bm25s.BM25.load(str(bdir), show_progress=False)
        return self._bm25

    @property
    def fusion(self) -> dict:
        """Hybrid settings: plain RRF unless ``index eval --calibrate`` stored others."""
        return {**DEFAULT_FUSION, **self.meta.get("fusion", {})}

    def doc_ids(self, chunk_ids: list[int]) -> dict[int, str]:
        if not chunk_ids:
            return {}
        q = f"SELECT id, doc_id FROM chunks WHERE id IN ({','.join('?' * len(chunk_ids))})"
        return dict(self.con.execute(q, list(chunk_ids)).fetchall())

    def count(self) -> int:
        return int(self.con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def close(self) -> None:
        if self._vectors is not None:
            self._vectors.close()
        self.con.close()

    # -- the three retrievers ------------------------------------------------
    def bm25_search(
        self, query: str, n: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        model = self._load_bm25()
        if model is None:
            return []
        tokens = bm25_tokenize([query], self.meta["bm25"]["stemmer"], ids=False)[0]
        tokens = [t for t in tokens if t in model.vocab_dict]
        if not tokens:
            return []
        ids = self._bm25_ids
        mask = None
        if allowed is not None:
            mask = np.isin(ids, allowed).astype(np.float32)
            if not mask.any():
                return []
        n = min(n, len(ids))
        docs, scores = model.retrieve(
            [tokens], k=n, show_progress=False, weight_mask=mask, n_threads=0
        )
        return [(int(ids[i]), float(s)) for i, s in zip(docs[0], scores[0], strict=True) if s > 0]

    def embed_query(self, query: str) -> np.ndarray:
        # Memoised: hybrid, dense and the relevance check often embed the same query.
        vec = self._qcache.get(query)
        if vec is None:
            vec = self.embedder.encode([query])[0]
            if len(self._qcache) > 256:
                self._qcache.clear()
            self._qcache[query] = vec
        return vec

    def dense_search(
        self, qvec: np.ndarray, n: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        return self.vectors.search(qvec[None, :], n, allowed)[0]

    def search(
        self,
        query: str,
        k: int = 5,
        mode: str = "hybrid",
        filters: dict | None = None,
        depth: int | None = None,
        bm25_weight: float | None = None,
    ) -> list[Hit]:
        """The top ``k`` chunks for ``query``; ``filters`` restrict to matching documents.

        ``depth`` and ``bm25_weight`` (hybrid only) default to the index's fusion settings.
        """
        if mode not in MODES:
            raise UserError(f"unknown retrieval mode {mode!r}; choose one of {', '.join(MODES)}")
        if not query.strip():
            raise UserError("empty query")
        allowed = store.filter_ids(self.con, filters)
        fusion = self.fusion
        depth = max(fusion["depth"] if depth is None else depth, k)
        weight = fusion["bm25_weight"] if bm25_weight is None else bm25_weight
        bm25_scores: dict[int, float] = {}
        dense_scores: dict[int, float] = {}
        qvec = None
        if mode in ("bm25", "hybrid"):
            bm25_list = self.bm25_search(query, k if mode == "bm25" else depth, allowed)
            bm25_scores = dict(bm25_list)
        if mode in ("dense", "hybrid"):
            qvec = self.embed_query(query)
            dense_list = self.dense_search(qvec, k if mode == "dense" else depth, allowed)
            dense_scores = dict(dense_list)
        if mode == "bm25":
            ranked = bm25_list
        elif mode == "dense":
            ranked = dense_list
        else:
            ranked = rrf([bm25_list, dense_list], [weight, 1.0], depth)
        ranked = ranked[:k]
        hits = self._hits(ranked)
        for h in hits:
            h.bm25 = bm25_scores.get(h.chunk_id)
            h.dense = dense_scores.get(h.chunk_id)
        if qvec is not None:
            self._fill_dense(hits, qvec)
        return hits

    def _hits(self, ranked: list[tuple[int, float]]) -> list[Hit]:
        if not ranked:
            return []
        ids = [cid for cid, _ in ranked]
        rows = {
            r["id"]: r
            for r in self.con.execute(
                f"SELECT id, doc_id, source, start, end, text FROM chunks WHERE id IN ({','.join('?' * len(ids))})",
                ids,
            )
        }
        return [
            Hit(cid, r["doc_id"], r["source"], r["start"], r["end"], r["text"], score)
            for cid, score in ranked
            if (r := rows.get(cid)) is not None
        ]

    def score_dense(self, hits: list[Hit], query: str) -> None:
        """Fill each hit's cosine similarity to ``query`` (e.g. after a BM25-only search)."""
        self._fill_dense(hits, self.embed_query(query))

    def _fill_dense(self, hits: list[Hit], qvec: np.ndarray) -> None:
        """Cosine for hybrid hits that came from BM25 only (their vectors are in SQLite)."""
        missing = [h for h in hits if h.dense is None]
        if not missing:
            return
        rows = dict(
            self.con.execute(
                f"SELECT id, vec FROM chunks WHERE id IN ({','.join('?' * len(missing))})",
                [h.chunk_id for h in missing],
            ).fetchall()
        )
        for h in missing:
            if rows.get(h.chunk_id) is not None:
                h.dense = float(np.frombuffer(rows[h.chunk_id], dtype=np.float32) @ qvec)
