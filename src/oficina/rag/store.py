"""Where an index keeps its chunks and vectors: SQLite for chunks, a vector store for search.

An index directory holds
  * ``index.db`` — SQLite: documents (id, source, content hash, metadata) and chunks (document,
    character offsets, text, text hash, embedding as float32 bytes). It is the source of truth:
    re-indexing compares content hashes against it and reuses stored embeddings.
  * a vector store, one of two behind the same small interface (``add``, ``delete``,
    ``search``, ``count``, ``save``, ``close``):
      - ``FlatStore`` (default, embedded): an exact inner-product faiss index in memory, saved
        as ``vectors.npy`` + ``vector_ids.npy`` next to the database;
      - ``MilvusStore``: a Milvus collection through ``pymilvus`` — a cluster URI
        (``http://host:19530``) for users who outgrow one machine, or a local file path, which
        ``milvus-lite`` serves in-process with the same client API.
Vectors are unit-length, so inner product is cosine similarity.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from oficina.errors import UserError
from oficina.workspace import atomic_write_bytes, open_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
  doc_id TEXT PRIMARY KEY, source TEXT NOT NULL, sha256 TEXT NOT NULL, meta TEXT NOT NULL,
  n_chars INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  doc_id TEXT NOT NULL REFERENCES docs(doc_id) ON DELETE CASCADE,
  source TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
  text TEXT NOT NULL, text_hash TEXT NOT NULL, vec BLOB
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE INDEX IF NOT EXISTS chunks_hash ON chunks(text_hash);
"""
# Chunk fields a filter can name directly; any other key is looked up in the document metadata.
CHUNK_FIELDS = ("doc_id", "source")


def connect(index_dir: Path) -> sqlite3.Connection:
    index_dir.mkdir(parents=True, exist_ok=True)
    # check_same_thread=False: a server opens an index once and searches it from worker threads.
    return open_wal(index_dir / "index.db", SCHEMA, check_same_thread=False)


def filter_ids(con: sqlite3.Connection, filters: dict | None) -> np.ndarray | None:
    """Chunk ids whose document matches every filter (value: one string or a list); None = all.

    ``{"doc_id": "pyref/yield"}``, ``{"source": ["a.md", "b.md"]}``, ``{"title": "yield"}``
    (keys other than doc_id/source match the document's metadata).
    """
    if not filters:
        return None
    where, args = [], []
    for key, value in filters.items():
        values = list(value) if isinstance(value, list | tuple | set) else [value]
        values = [str(v) for v in values]
        marks = ",".join("?" * len(values))
        if key in CHUNK_FIELDS:
            where.append(f"c.{key} IN ({marks})")
        else:
            if not key.replace("_", "").isalnum():
                raise UserError(f"bad filter key {key!r}: use letters, digits and _")
            where.append(f"CAST(json_extract(d.meta, '$.{key}') AS TEXT) IN ({marks})")
        args += values
    rows = con.execute(
        "SELECT c.id FROM chunks c JOIN docs d ON d.doc_id = c.doc_id WHERE " + " AND ".join(where),
        args,
    ).fetchall()
    return np.array([r[0] for r in rows], dtype=np.int64)


# ---------------------------------------------------------------------------- vector stores


class FlatStore:
    """Exact cosine search with faiss (``IndexFlatIP`` under an id map), saved as .npy files."""

    kind = "embedded"

    def __init__(self, index_dir: Path, dim: int):
        import faiss

        self._faiss = faiss
        self.dir = Path(index_dir)
        self.dim = dim
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        vec_f, id_f = self.dir / "vectors.npy", self.dir / "vector_ids.npy"
        if vec_f.is_file() and id_f.is_file():
            vecs = np.load(vec_f, allow_pickle=False)
            ids = np.load(id_f, allow_pickle=False)
            if len(ids):
                self.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), ids)

    def count(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(
                np.ascontiguousarray(vecs, dtype=np.float32), np.asarray(ids, dtype=np.int64)
            )

    def delete(self, ids: Iterable[int]) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        if len(ids):
            self.index.remove_ids(self._faiss.IDSelectorBatch(ids))

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[list[tuple[int, float]]]:
        if self.index.ntotal == 0 or k <= 0 or (allowed is not None and len(allowed) == 0):
            return [[] for _ in range(len(queries))]
        params = None
        if allowed is not None:
            params = self._faiss.SearchParameters(sel=self._faiss.IDSelectorBatch(allowed))
        scores, ids = self.index.search(
            np.ascontiguousarray(queries, dtype=np.float32),
            min(k, self.index.ntotal),
            params=params,
        )
        return [
            [(int(i), float(s)) for i, s in zip(row_i, row_s, strict=True) if i >= 0]
            for row_i, row_s in zip(ids, scores, strict=True)
        ]

    def clear(self) -> None:
        self.index.reset()
        for name in ("vectors.npy", "vector_ids.npy"):
            (self.dir / name).unlink(missing_ok=True)

    def save(self) -> None:
        n = self.index.ntotal
        ids = self._faiss.vector_to_array(self.index.id_map).astype(np.int64)
        vecs = self.index.index.reconstruct_n(0, n) if n else np.zeros((0, self.dim), np.float32)
        for name, arr in (("vectors.npy", vecs), ("vector_ids.npy", ids)):
            import io

            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            atomic_write_bytes(self.dir / name, buf.getvalue())

    def close(self) -> None:
        pass


class MilvusStore:
    """A Milvus collection (cosine via inner product on unit vectors) through ``pymilvus``."""

    kind = "milvus"

    def __init__(self, uri: str, dim: int, collection: str = "oficina_chunks"):
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise UserError(
                "the Milvus store needs pymilvus (and milvus-lite for a local file): "
                "pip install pymilvus milvus-lite"
            ) from None
        self.uri, self.dim, self.collection = uri, dim, collection
        try:
            self.client = MilvusClient(uri)
        except Exception as e:  # pymilvus raises many types; the user needs the one line
            raise UserError(f"cannot reach Milvus at {uri}: {e}") from None
        if not self.client.has_collection(collection):
            # milvus-lite answers one internal call pymilvus makes here with "not implemented"
            # and its in-process gRPC server logs a traceback; the collection is created fine.
            import logging

            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
            self.client.create_collection(
                collection, dimension=dim, metric_type="IP", auto_id=False, id_type="int"
            )

    def count(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def add(self, ids: np.ndarray, vecs: np.ndarray, batch: int = 2000) -> None:
        for s in range(0, len(ids), batch):
            self.client.insert(
                self.collection,
                [
                    {"id": int(i), "vector": v.tolist()}
                    for i, v in zip(ids[s : s + batch], vecs[s : s + batch], strict=True)
                ],
            )

    def delete(self, ids: Iterable[int]) -> None:
        ids = [int(i) for i in ids]
        for s in range(0, len(ids), 5000):
            self.client.delete(self.collection, ids=ids[s : s + 5000])

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[list[tuple[int, float]]]:
        if k <= 0 or (allowed is not None and len(allowed) == 0):
            return [[] for _ in range(len(queries))]
        flt = "" if allowed is None else f"id in {json.dumps([int(i) for i in allowed])}"
        res = self.client.search(
            self.collection,
            data=[q.tolist() for q in queries],
            limit=k,
            filter=flt,
            output_fields=["id"],
        )
        return [[(int(h["id"]), float(h["distance"])) for h in row] for row in res]

    def clear(self) -> None:
        self.client.drop_collection(self.collection)

    def save(self) -> None:
        self.client.flush(self.collection)

    def close(self) -> None:
        self.client.close()


def open_vector_store(index_dir: Path, meta: dict):
    if meta["store"] == "embedded":
        return FlatStore(index_dir, meta["dim"])
    uri = meta["milvus_uri"]
    if "://" not in uri and not Path(uri).is_absolute():
        uri = str((index_dir / uri).resolve())  # a milvus-lite file inside the index folder
    return MilvusStore(uri, meta["dim"], meta.get("collection", "oficina_chunks"))
