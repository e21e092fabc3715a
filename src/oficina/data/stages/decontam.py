"""Decontamination: no evaluation item may leak into training data.

Every evaluation file (JSONL/CSV/Parquet/txt, the fields named in ``fields``) is cut into word
``ngram``-grams (lower-cased, punctuation dropped; 13 as in GPT-3's contamination study). A
document sharing at least ``min_matches`` of them with any item is dropped (``action: drop``),
or has the overlapping spans cut out (``action: cut``: the rest of the document is kept, unless
fewer than ``ngram`` words remain).
Items shorter than ``ngram`` words are matched as a whole word sequence.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

import xxhash
from pydantic import Field

from oficina.config import Section
from oficina.data.stages.base import MapStage, Outcome
from oficina.data.stages.normalize import normalize_text
from oficina.errors import UserError

_WORD = re.compile(r"\w+")


class DecontamConfig(Section):
    type: Literal["decontam"] = "decontam"
    name: str | None = Field(None, description="name in the report (default: the type)")
    eval_files: list[str] = Field(description="evaluation files whose items must not leak")
    fields: list[str] = Field(
        default_factory=lambda: ["text"], description="fields of the eval records to protect"
    )
    ngram: int = Field(13, ge=3, le=50, description="overlap n-gram size, in words")
    min_matches: int = Field(
        1, ge=1, description="shared n-grams that make a document contaminated"
    )
    action: Literal["drop", "cut"] = Field("drop", description="drop the document or cut the spans")


def _gram_hash(words: list[str]) -> int:
    return xxhash.xxh64_intdigest(" ".join(words).encode("utf-8"))


@lru_cache(maxsize=4)
def eval_ngrams(
    files: tuple[str, ...], fields: tuple[str, ...], n: int
) -> tuple[frozenset, frozenset]:
    """(hashes of n-grams, hashes of whole short items) of every evaluation item."""
    from oficina.data.readers import iter_texts

    grams: set[int] = set()
    short: set[tuple[int, int]] = set()
    for f in files:
        found = False
        for field in fields:
            for text in iter_texts([f], text_field=field):
                found = True
                words = _WORD.findall(text.lower())
                if len(words) < n:
                    if words:
                        short.add((len(words), _gram_hash(words)))
                    continue
                for i in range(len(words) - n + 1):
                    grams.add(_gram_hash(words[i : i + n]))
        if not found:
            raise UserError(f"evaluation file {f} has no items with fields {list(fields)}")
    return frozenset(grams), frozenset(short)


class Decontam(MapStage):
    def __init__(self, cfg: DecontamConfig):
        super().__init__(cfg)
        self.grams, short = eval_ngrams(tuple(cfg.eval_files), tuple(cfg.fields), cfg.ngram)
        self.short_lengths = sorted({k for k, _ in short})
        self.short = {h for _, h in short}

    def _hits(self, text: str) -> list[tuple[int, int]]:
        """Word-index spans [start, end) of the document that match an evaluation item."""
        spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        words = [text[a:b].lower() for a, b in spans]
        n = self.cfg.ngram
        hits = [
            (i, i + n)
            for i in range(len(words) - n + 1)
            if _gram_hash(words[i : i + n]) in self.grams
        ]
        for k in self.short_lengths:
            hits += [
                (i, i + k)
                for i in range(len(words) - k + 1)
                if _gram_hash(words[i : i + k]) in self.short
            ]
        return [(spans[a][0], spans[b - 1][1]) for a, b in hits]

    def process(self, doc: dict) -> Outcome:
        hits = self._hits(doc["text"])
        if len(hits) < self.cfg.min_matches:
            return None, None
        if self.cfg.action == "drop":
            return "contaminated", None
        # Merge overlapping character spans, then cut them out.
        hits.sort()
        merged = [list(hits[0])]
        for a, b in hits[1:]:
            if a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        text, out, pos = doc["text"], [], 0
        for a, b in merged:
            out.append(text[pos:a])
            pos = b
        out.append(text[pos:])
        # Tidy the seams (no double spaces or blank runs), so a rerun's normalize changes nothing.
        doc["text"] = normalize_text("".join(out))
        if len(_WORD.findall(doc["text"])) < self.cfg.ngram:  # only crumbs left around the cuts
            return "contaminated", None
        return None, {"spans_cut": len(merged)}
