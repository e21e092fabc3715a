"""Quality heuristics in the style of Gopher (Rae et al., 2021) and C4 (Raffel et al., 2020).

Boilerplate lines (cookie banners, "all rights reserved"...) are cut first, C4-style; then the
document is dropped, with the first failing rule as the reason, when it has
  * too few / too many words, or a mean word length outside [min, max] (Gopher);
  * too many symbols (``#``, ``...``) per word, too many bullet or ellipsis lines;
  * too few words with a letter in them;
  * fewer than ``min_stop_words`` stop words of its language (real prose has them);
  * repeated lines, or repeated n-grams covering too much of the text (Gopher repetition);
  * "lorem ipsum", or a curly brace if ``drop_curly_brace`` (C4; off by default: it drops code).
Every threshold is a config field; ``null`` switches a rule off.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

import numpy as np
from pydantic import Field

from oficina.config import Section
from oficina.data.stages.base import MapStage, Outcome

STOP_WORDS = {
    "en": set(
        "the be to of and a in that have it for not on with he as you do at this but his by "
        "from they we say her she or an will my one all would there their what so up out if "
        "about who get which go me is are was were".split()
    ),
    "pt": set(
        "de a o que e do da em um para é com não uma os no se na por mais as dos como mas foi "
        "ao ele das tem à seu sua ou ser quando muito há nos já está eu também só pelo pela até "
        "isso ela entre era depois sem mesmo aos ter seus quem nas me esse eles".split()
    ),
    "es": set(
        "de la que el en y a los del se las por un para con no una su al lo como más pero sus "
        "le ya o este sí porque esta entre cuando muy sin sobre también me hasta hay donde".split()
    ),
}
ALL_STOP_WORDS = set().union(*STOP_WORDS.values())
DEFAULT_BOILERPLATE = [
    "cookie",
    "terms of use",
    "privacy policy",
    "all rights reserved",
    "enable javascript",
    "subscribe to our newsletter",
    "todos os direitos reservados",
    "política de privacidade",
    "aceitar cookies",
    "assine nossa newsletter",
]
_WORD = re.compile(r"\w+(?:['’-]\w+)*")
_NO_LETTER_TOKEN = re.compile(r"(?<!\S)(?:(?![^\W\d_])\S)+(?!\S)")
_BULLET = re.compile(r"^\s*(?:[-*•‣◦▪●]|\d+[.)])\s")


class QualityConfig(Section):
    type: Literal["quality"] = "quality"
    name: str | None = Field(None, description="name in the report (default: the type)")
    min_words: int | None = Field(50, description="Gopher: at least this many words")
    max_words: int | None = Field(100_000, description="Gopher: at most this many words")
    min_mean_word_length: float | None = Field(3.0, description="Gopher: mean word length ≥")
    max_mean_word_length: float | None = Field(10.0, description="Gopher: mean word length ≤")
    max_symbol_word_ratio: float | None = Field(0.1, description="Gopher: (# + ...) per word ≤")
    max_bullet_lines_ratio: float | None = Field(0.9, description="Gopher: bullet lines ≤")
    max_ellipsis_lines_ratio: float | None = Field(0.3, description="Gopher: lines ending in ... ≤")
    min_alpha_words_ratio: float | None = Field(0.8, description="Gopher: words with a letter ≥")
    min_stop_words: int | None = Field(2, description="Gopher: stop words of the language ≥")
    max_dup_line_fraction: float | None = Field(0.3, description="repeated lines / lines ≤")
    max_dup_line_char_fraction: float | None = Field(0.2, description="chars in repeated lines ≤")
    max_top_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16},
        description="Gopher: chars in the most frequent n-gram ≤ (per n)",
    )
    max_dup_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="Gopher: chars in repeated n-grams ≤ (per n)",
    )
    boilerplate_phrases: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BOILERPLATE),
        description="C4: cut lines containing any of these (case-insensitive)",
    )
    drop_lorem_ipsum: bool = Field(True, description="C4: drop documents with 'lorem ipsum'")
    drop_curly_brace: bool = Field(False, description="C4: drop documents with '{' (drops code)")


def words_of(text: str) -> list[str]:
    return _WORD.findall(text)


def ngram_stats(words: list[str], sizes: set[int]) -> dict[int, tuple[float, float]]:
    """Per n: (chars in the most frequent n-gram x its count, chars in repeated n-grams), as
    fractions of all word characters (Gopher's repetition measures).

    Vectorised: words become integer ids, n-grams a rolling 64-bit hash, duplicates come from
    ``np.unique``. "Repeated" covers every occurrence after an n-gram's first, each character
    counted once.
    """
    if not words or not sizes:
        return {}
    ids = np.unique(np.asarray(words), return_inverse=True)[1].astype(np.uint64).reshape(-1)
    lens = np.fromiter(map(len, words), np.int64, len(words))
    total = float(lens.sum()) or 1.0
    csum = np.concatenate([[0], np.cumsum(lens)])
    out: dict[int, tuple[float, float]] = {}
    h = np.zeros(len(words), dtype=np.uint64)
    built = 0  # h holds the rolling hash of n-grams of this size (grown one word at a time)
    with np.errstate(over="ignore"):
        for n in sorted(sizes):
            m = len(words) - n + 1
            if m < 2:
                out[n] = (0.0, 0.0)
                continue
            while built < n:
                h = h[: len(words) - built] * np.uint64(1_000_003) + ids[built:] + np.uint64(1)
                built += 1
            _, first, inv, counts = np.unique(
                h[:m], return_index=True, return_inverse=True, return_counts=True
            )
            top = int(np.argmax(counts))
            top_frac = 0.0
            if counts[top] > 1:
                start = first[top]
                top_frac = float(csum[start + n] - csum[start]) * int(counts[top]) / total
            dup = np.nonzero(first[inv.reshape(-1)] != np.arange(m))[0]
            if len(dup):
                size = len(words) + 1
                cover = np.bincount(dup, minlength=size) - np.bincount(dup + n, minlength=size)
                dup_frac = float(lens[np.cumsum(cover)[:-1] > 0].sum()) / total
            else:
                dup_frac = 0.0
            out[n] = (top_frac, dup_frac)
    return out


class Quality(MapStage):
    def __init__(self, cfg: QualityConfig):
        super().__init__(cfg)
        self.phrases = [p.lower() for p in cfg.boilerplate_phrases]

    def process(self, doc: dict) -> Outcome:
        mods = None
        if self.phrases:
            lines = doc["text"].split("\n")
            kept = [ln for ln in lines if not any(p in ln.lower() for p in self.phrases)]
            if len(kept) != len(lines):
                doc["text"] = "\n".join(kept).strip("\n")
                mods = {"boilerplate_lines": len(lines) - len(kept)}
        return self._check(doc["text"], doc.get("lang")), mods

    def _check(self, text: str, lang: str | None) -> str | None:
        c = self.cfg
        low = text.lower()
        if c.drop_lorem_ipsum and "lorem ipsum" in low:
            return "lorem_ipsum"
        if c.drop_curly_brace and "{" in text:
            return "curly_brace"
        words = words_of(low)  # lower-cased once: every rule below is case-blind
        n = len(words)
        if c.min_words is not None and n < c.min_words:
            return "too_few_words"
        if c.max_words is not None and n > c.max_words:
            return "too_many_words"
        if n == 0:
            return "too_few_words"
        mean_len = sum(map(len, words)) / n
        if c.min_mean_word_length is not None and mean_len < c.min_mean_word_length:
            return "short_mean_word_length"
        if c.max_mean_word_length is not None and mean_len > c.max_mean_word_length:
            return "long_mean_word_length"
        if c.max_symbol_word_ratio is not None:
            symbols = text.count("#") + text.count("...") + text.count("…")
            if symbols / n > c.max_symbol_word_ratio:
                return "symbol_ratio"
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if lines and c.max_bullet_lines_ratio is not None:
            if sum(bool(_BULLET.match(ln)) for ln in lines) / len(lines) > c.max_bullet_lines_ratio:
                return "bullet_lines"
        if lines and c.max_ellipsis_lines_ratio is not None:
            ell = sum(ln.rstrip().endswith(("...", "…")) for ln in lines) / len(lines)
            if ell > c.max_ellipsis_lines_ratio:
                return "ellipsis_lines"
        if c.min_alpha_words_ratio is not None:
            # Gopher counts whitespace-separated tokens that contain at least one letter.
            tokens = len(text.split())
            alpha = 1 - len(_NO_LETTER_TOKEN.findall(text)) / max(1, tokens)
            if alpha < c.min_alpha_words_ratio:
                return "few_alphabetic_words"
        if c.min_stop_words is not None:
            stops = STOP_WORDS.get(lang or "", ALL_STOP_WORDS)
            found = 0
            for w in words:
                if w in stops:
                    found += 1
                    if found >= c.min_stop_words:
                        break
            if found < c.min_stop_words:
                return "few_stop_words"
        if lines and (
            c.max_dup_line_fraction is not None or c.max_dup_line_char_fraction is not None
        ):
            counts = Counter(ln.strip() for ln in lines)
            dup_lines = sum(v - 1 for v in counts.values() if v > 1)
            if (
                c.max_dup_line_fraction is not None
                and dup_lines / len(lines) > c.max_dup_line_fraction
            ):
                return "repeated_lines"
            dup_chars = sum(len(k) * (v - 1) for k, v in counts.items() if v > 1)
            total = sum(len(ln.strip()) for ln in lines)
            if (
                c.max_dup_line_char_fraction is not None
                and total
                and dup_chars / total > c.max_dup_line_char_fraction
            ):
                return "repeated_line_chars"
        sizes = set(c.max_top_ngram_char_fraction) | set(c.max_dup_ngram_char_fraction)
        stats = ngram_stats(words, sizes)
        for k, limit in sorted(c.max_top_ngram_char_fraction.items()):
            if stats[k][0] > limit:
                return f"top_{k}gram"
        for k, limit in sorted(c.max_dup_ngram_char_fraction.items()):
            if stats[k][1] > limit:
                return f"dup_{k}gram"
        return None
