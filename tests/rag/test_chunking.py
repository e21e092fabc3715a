"""Chunking: offsets point into the original text, boundaries are sentences/paragraphs, overlap."""

from __future__ import annotations

import json

import pytest

from oficina.rag.chunking import chunk_text


def _doc() -> str:
    paras = []
    for p in range(12):
        sents = [
            f"Paragraph {p} sentence {s} says something about topic {p * 7 + s}." for s in range(5)
        ]
        paras.append(" ".join(sents))
    return "\n\n".join(paras)


def test_offsets_reproduce_chunk_text_and_cover_document():
    text = _doc()
    chunks = chunk_text(text, max_chars=300, overlap_chars=80)
    assert len(chunks) > 5
    covered = set()
    for start, end in chunks:
        piece = text[start:end]
        assert piece == piece.strip() and piece  # no leading/trailing whitespace
        assert end - start <= 300
        covered.update(range(start, end))
    # Every non-space character of the document is in some chunk.
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_chunks_end_on_sentence_boundaries_and_overlap():
    text = _doc()
    chunks = chunk_text(text, max_chars=300, overlap_chars=80)
    for start, end in chunks:
        assert text[end - 1] == "."  # whole sentences only
        assert start == 0 or text[start - 1] in " \n"
    overlaps = [
        a_end - b_start for (_, a_end), (b_start, _) in zip(chunks, chunks[1:], strict=False)
    ]
    assert all(o <= 80 for o in overlaps)
    assert sum(o > 0 for o in overlaps) >= len(overlaps) // 2  # neighbours do share text
    starts = [s for s, _ in chunks]
    assert starts == sorted(set(starts))  # always moving forward


def test_long_sentence_and_long_word_are_split():
    text = "word " * 400 + "x" * 1000
    chunks = chunk_text(text.strip(), max_chars=200, overlap_chars=0)
    assert all(e - s <= 200 for s, e in chunks)
    assert "".join(text.strip()[s:e] for s, e in chunks).replace(" ", "") == text.replace(" ", "")


def test_bad_sizes_rejected():
    with pytest.raises(ValueError):
        chunk_text("abc", max_chars=100, overlap_chars=100)


def test_demo_reference_offsets(repo_root):
    docs = [json.loads(line) for line in open(repo_root / "examples/demo/reference.jsonl")][:10]
    for d in docs:
        for s, e in chunk_text(d["text"], 800, 150):
            assert d["text"][s:e].strip() == d["text"][s:e] and e - s <= 800
