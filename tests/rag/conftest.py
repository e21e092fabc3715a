"""Fixtures for the RAG tests: a tiny corpus and a fast deterministic embedder.

``HashEmbedder`` is a real (if weak) encoder — hashed bag of lower-cased words, L2-normalised —
so dense retrieval gives meaningful, reproducible rankings in milliseconds. It counts what it
embeds, which the incremental re-indexing tests rely on. Tests of the real MiniLM are marked
``integration``.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest


class HashEmbedder:
    name = "hash-bow-256"
    dim = 256
    model_hash = "hash-bow-256-v1"
    batch_size = 16

    def __init__(self):
        self.calls = 0
        self.texts_encoded = 0
        self.seen: list[str] = []

    def encode(self, texts, normalize: bool = True) -> np.ndarray:
        texts = list(texts)
        self.calls += 1
        self.texts_encoded += len(texts)
        self.seen += texts
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]{3,}", t.lower()):
                h = int(hashlib.md5(w.rstrip("s").encode()).hexdigest()[:8], 16)
                out[i, h % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)

    def count_tokens(self, text: str) -> int:
        return len(text.split())


CORPUS = {
    "cooking/bread.md": (
        "Baking bread at home.\n\nMix flour, water, salt and yeast into a dough. Knead the dough "
        "for ten minutes until it is smooth. Let it rise for two hours in a warm place.\n\n"
        "Bake the loaf in a hot oven at 230 degrees for about forty minutes, until the crust "
        "is brown and the bottom sounds hollow."
    ),
    "cooking/soup.md": (
        "A simple vegetable soup.\n\nChop onions, carrots and celery. Fry them gently in olive "
        "oil, add stock and simmer for thirty minutes. Season with salt and pepper."
    ),
    "garden/tomatoes.txt": (
        "Growing tomatoes.\n\nTomatoes need full sun and regular watering. Plant seedlings "
        "after the last frost, stake the stems, and pinch out side shoots. Harvest the fruit "
        "when it is red and slightly soft."
    ),
    "garden/roses.txt": (
        "Pruning roses.\n\nPrune roses in late winter. Cut dead wood first, then thin the "
        "centre so air can flow. Feed the plants with compost in spring."
    ),
}


@pytest.fixture
def hash_embedder():
    return HashEmbedder()


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "docs"
    for rel, text in CORPUS.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def tiny_lm_long(tiny_lm, tmp_path_factory):
    """The shared tiny model with a 2048-token context: its 512-token BPE spends many tokens on
    English, and a grounded prompt (system + passages + question) needs more than 512."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("tiny-lm-long") / "model"
    shutil.copytree(tiny_lm, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["max_position_embeddings"] = 2048
    (out / "config.json").write_text(json.dumps(cfg))
    return out
