"""Fixtures for the training tests: packed shards written by hand in the documented format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def write_shards(out: Path, tokenizer_dir: Path, seq_len: int = 32, n_docs: int = 12) -> Path:
    """Tokenize reference topics with the tiny tokenizer and pack them as oficina-pack-v1."""
    from pydoc_data.topics import topics

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    docs = [topics[k] for k in sorted(topics)[:n_docs]]
    ids: list[int] = []
    for d in docs:
        ids += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    arr = np.asarray(ids, dtype=np.uint16)
    cut = int(len(arr) * 0.9)
    out.mkdir(parents=True, exist_ok=True)
    arr[:cut].tofile(out / "train.bin")
    arr[cut:].tofile(out / "val.bin")
    meta = {
        "format": "oficina-pack-v1",
        "dtype": "uint16",
        "seq_len": seq_len,
        "vocab_size": len(tok),
        "eos_id": tok.eos_token_id,
        "tokenizer": str(Path(tokenizer_dir).resolve()),
        "train_tokens": int(cut),
        "val_tokens": int(len(arr) - cut),
        "sources": ["pydoc_data.topics"],
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="session")
def shards(tiny_lm, tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"), tiny_lm)


def root_conftest():
    """The tiny-model makers (tests/helpers.py; once loaded from tests/conftest.py by path)."""
    import helpers

    return helpers


@pytest.fixture(scope="session")
def other_lm(tmp_path_factory) -> Path:
    """A second tiny model: same tokenizer and shape as tiny_lm, different random weights."""
    root = root_conftest()
    seed = root.random_model_seed() + 1  # never tiny_lm's seed
    return root.make_tiny_lm(tmp_path_factory.mktemp("other-lm"), seed=seed)


@pytest.fixture(scope="session")
def make_shards():
    """write_shards itself, for tests that need their own (smaller, longer...) shards."""
    return write_shards


@pytest.fixture(scope="session")
def small_vocab_lm(tmp_path_factory) -> Path:
    """A tiny model with a different (400-token) tokenizer: a student KD cannot match."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("small-vocab-lm")
    tok = root_conftest().make_tiny_tokenizer(out, vocab_size=400)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out
