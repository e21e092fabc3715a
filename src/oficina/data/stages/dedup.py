"""Exact and near-duplicate removal; the first document of a cluster is the one kept.

* ``exact_dedup``: a 128-bit xxh3 hash of the normalised text (case-folded, NFKC, punctuation
  and whitespace removed), so copies that differ only in spacing or case count as one.
* ``near_dedup``: MinHash (datasketch, ``num_perm`` permutations over word ``ngram``-shingles)
  and LSH banding. LSH is tuned to a lower threshold than asked (``threshold - 0.1``) to lose
  no true pair, then each candidate is confirmed by the MinHash estimate of Jaccard
  ``≥ threshold``: recall stays high at Jaccard 0.9 and pairs at 0.5 are practically never merged.

Both compute their key (hash, signature) purely from the text — that runs on any worker — and
decide in document order against everything kept so far, including earlier shards: that part is
sequential and cheap. Each finished shard saves what it added (hashes, signatures), so a resumed
run replays them and decides exactly as an uninterrupted one would.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Literal

import numpy as np
import xxhash
from pydantic import Field

from oficina.config import Section
from oficina.data.stages.base import DedupStage

_NON_WORD = re.compile(r"[\W_]+")
_WORD = re.compile(r"\w+")


class ExactDedupConfig(Section):
    type: Literal["exact_dedup"] = "exact_dedup"
    name: str | None = Field(None, description="name in the report (default: the type)")


class NearDedupConfig(Section):
    type: Literal["near_dedup"] = "near_dedup"
    name: str | None = Field(None, description="name in the report (default: the type)")
    threshold: float = Field(0.8, gt=0.1, le=1, description="Jaccard at which two are duplicates")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    ngram: int = Field(5, ge=1, le=20, description="word n-gram shingle size")
    seed: int = Field(1, description="MinHash seed (same seed -> same signatures everywhere)")


def exact_key(text: str) -> bytes:
    norm = _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return xxhash.xxh3_128_digest(norm.encode("utf-8"))


def shingles(text: str, n: int = 5) -> set[bytes]:
    """Word n-grams of the case-folded text: the sets whose Jaccard near-dedup estimates."""
    words = _WORD.findall(text.casefold())
    if len(words) < n:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int):
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed).permutations


def signature(text: str, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> np.ndarray:
    from datasketch import MinHash

    m = MinHash(
        num_perm=num_perm,
        seed=seed,
        hashfunc=xxhash.xxh32_intdigest,
        permutations=_permutations(num_perm, seed),
        scheme="affine32",
    )
    m.update_batch(list(shingles(text, ngram)))
    return np.asarray(m.hashvalues, dtype=np.uint64)


class ExactDedup(DedupStage):
    def __init__(self, cfg: ExactDedupConfig):
        super().__init__(cfg)
        self.seen: dict[bytes, str] = {}  # hash -> id of the kept document
        self.added: list[tuple[bytes, str]] = []

    def key(self, text: str) -> bytes:
        return exact_key(text)

    def decide(self, doc: dict, key: bytes) -> str | None:
        if key in self.seen:
            doc["_duplicate_of"] = self.seen[key]
            return "exact_duplicate"
        self.seen[key] = doc["id"]
        self.added.append((key, doc["id"]))
        return None

    def take_shard_state(self) -> dict[str, np.ndarray]:
        hashes = np.array([h for h, _ in self.added], dtype="S16").reshape(-1)
        ids = np.array([i for _, i in self.added], dtype=str).reshape(-1)
        self.added = []
        return {"hashes": hashes, "ids": ids}

    def load_shard_state(self, arrays: dict[str, np.ndarray]) -> None:
        for h, i in zip(arrays["hashes"], arrays["ids"], strict=True):
            # numpy strips trailing NUL bytes from S16 values: pad them back.
            self.seen[bytes(h).ljust(16, b"\0")] = str(i)


class NearDedup(DedupStage):
    def __init__(self, cfg: NearDedupConfig):
        super().__init__(cfg)
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=max(0.1, cfg.threshold - 0.1), num_perm=cfg.num_perm)
        self.sigs: list[np.ndarray] = []
        self.ids: list[str] = []
        self.added_from = 0

    def key(self, text: str) -> np.ndarray:
        return signature(text, self.cfg.num_perm, self.cfg.ngram, self.cfg.seed)

    def _minhash(self, sig: np.ndarray):
        from datasketch import MinHash

        return MinHash(
            hashvalues=sig,
            permutations=_permutations(self.cfg.num_perm, self.cfg.seed),
            seed=self.cfg.seed,
            scheme="affine32",
        )

    def _insert(self, doc_id: str, sig: np.ndarray) -> None:
        idx = len(self.sigs)
        self.sigs.append(sig)
        self.ids.append(doc_id)
        self.lsh.insert(idx, self._minhash(sig), check_duplication=False)

    def decide(self, doc: dict, key: np.ndarray) -> str | None:
        best, best_j = None, 0.0
        for idx in self.lsh.query(self._minhash(key)):
            j = float(np.mean(self.sigs[idx] == key))
            if j > best_j:
                best, best_j = idx, j
        if best is not None and best_j >= self.cfg.threshold:
            doc["_duplicate_of"] = self.ids[best]
            return "near_duplicate"
        self._insert(doc["id"], key)
        return None

    def take_shard_state(self) -> dict[str, np.ndarray]:
        new = self.sigs[self.added_from :]
        ids = self.ids[self.added_from :]
        self.added_from = len(self.sigs)
        sigs = np.stack(new) if new else np.zeros((0, self.cfg.num_perm), dtype=np.uint64)
        return {"signatures": sigs, "ids": np.array(ids, dtype=str).reshape(-1)}

    def load_shard_state(self, arrays: dict[str, np.ndarray]) -> None:
        for doc_id, sig in zip(arrays["ids"], arrays["signatures"], strict=True):
            self._insert(str(doc_id), np.asarray(sig, dtype=np.uint64))
        self.added_from = len(self.sigs)
