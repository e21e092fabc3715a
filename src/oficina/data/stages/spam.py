"""Spam and machine-generated text heuristics.

Drops, with the first failing rule as the reason:
  * ``machine_generated`` — tell-tale phrases of chat-model output pasted as content
    ("as an AI language model", "como um modelo de linguagem", "regenerate response"...);
  * ``spam_phrases`` — at least ``min_spam_hits`` sales / clickbait phrases (EN and PT);
  * ``url_ratio`` — more links than ``max_url_ratio`` per word (link farms);
  * ``uppercase_ratio`` — shouting: too large a share of letters in capitals;
  * ``exclamations`` — too many ``!`` per word;
  * ``repeated_characters`` — a letter repeated ``max_char_run`` times ("loooooool");
  * ``keyword_stuffing`` — one content word making up too much of the text.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

from pydantic import Field

from oficina.config import Section
from oficina.data.stages.base import MapStage, Outcome
from oficina.data.stages.quality import ALL_STOP_WORDS, words_of

MACHINE_PHRASES = [
    "as an ai language model",
    "as a large language model",
    "i am an ai language model",
    "i cannot fulfill that request",
    "i'm sorry, but as an ai",
    "regenerate response",
    "my knowledge cutoff",
    "como um modelo de linguagem",
    "como uma inteligência artificial",
    "sou um modelo de linguagem",
    "como ia, não",
]
SPAM_PHRASES = [
    "click here",
    "buy now",
    "limited time offer",
    "act now",
    "100% free",
    "free money",
    "make money fast",
    "work from home",
    "viagra",
    "casino",
    "earn $",
    "risk-free",
    "clique aqui",
    "compre já",
    "compre agora",
    "oferta imperdível",
    "ganhe dinheiro",
    "dinheiro fácil",
    "promoção exclusiva",
    "frete grátis",
]
_URL = re.compile(r"https?://\S+|www\.\S+")


class SpamConfig(Section):
    type: Literal["spam"] = "spam"
    name: str | None = Field(None, description="name in the report (default: the type)")
    machine_phrases: list[str] = Field(
        default_factory=lambda: list(MACHINE_PHRASES), description="drop on any of these"
    )
    spam_phrases: list[str] = Field(
        default_factory=lambda: list(SPAM_PHRASES), description="sales / clickbait phrases"
    )
    min_spam_hits: int = Field(2, ge=1, description="drop at this many spam-phrase hits")
    max_url_ratio: float | None = Field(0.1, description="links per word ≤")
    max_uppercase_ratio: float | None = Field(0.4, description="capital letters / letters ≤")
    max_exclamation_ratio: float | None = Field(0.05, description="'!' per word ≤")
    max_char_run: int | None = Field(6, description="drop a letter repeated this many times")
    max_keyword_fraction: float | None = Field(
        0.25, description="the most frequent content word / content words ≤ (≥ 40 of them)"
    )


class Spam(MapStage):
    def __init__(self, cfg: SpamConfig):
        super().__init__(cfg)
        self.machine = [p.lower() for p in cfg.machine_phrases]
        self.spam = [p.lower() for p in cfg.spam_phrases]
        self.run = (
            re.compile(rf"([^\W\d_])\1{{{cfg.max_char_run - 1},}}") if cfg.max_char_run else None
        )

    def process(self, doc: dict) -> Outcome:
        return self.check(doc["text"]), None

    def check(self, text: str) -> str | None:
        c = self.cfg
        low = text.lower()
        if any(p in low for p in self.machine):
            return "machine_generated"
        if sum(low.count(p) for p in self.spam) >= c.min_spam_hits:
            return "spam_phrases"
        words = words_of(text)
        n = max(1, len(words))
        tokens = max(1, len(text.split()))  # a URL is one token here, not its pieces
        if c.max_url_ratio is not None and len(_URL.findall(text)) / tokens > c.max_url_ratio:
            return "url_ratio"
        if c.max_uppercase_ratio is not None:
            letters = sum(map(str.isalpha, text))  # map keeps the per-character loop in C
            if letters >= 50 and sum(map(str.isupper, text)) / letters > c.max_uppercase_ratio:
                return "uppercase_ratio"
        if c.max_exclamation_ratio is not None and text.count("!") / n > c.max_exclamation_ratio:
            return "exclamations"
        if self.run is not None and self.run.search(text):
            return "repeated_characters"
        if c.max_keyword_fraction is not None:
            content = [w for w in words_of(low) if len(w) > 2 and w not in ALL_STOP_WORDS]
            if len(content) >= 40:
                _, top = Counter(content).most_common(1)[0]
                if top / len(content) > c.max_keyword_fraction:
                    return "keyword_stuffing"
        return None
