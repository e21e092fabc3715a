"""Language identification with py3langid (its naive-Bayes model ships inside the package).

Sets ``doc["lang"]`` and ``doc["lang_score"]`` (a normalised probability) and drops documents
whose language is not allowed or whose score is too low. Only the first ``max_chars`` are
classified: enough for a confident answer, and the cost stays flat on long documents.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field

from oficina.config import Section
from oficina.data.stages.base import MapStage, Outcome


class LangIdConfig(Section):
    type: Literal["langid"] = "langid"
    name: str | None = Field(None, description="name in the report (default: the type)")
    languages: list[str] = Field(
        default_factory=list, description="ISO 639-1 codes to keep (empty: keep every language)"
    )
    min_score: float = Field(0.5, ge=0, le=1, description="drop documents below this confidence")
    max_chars: int = Field(1000, ge=50, description="classify only this many leading characters")


@lru_cache(maxsize=1)
def identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect(text: str, max_chars: int = 1000) -> tuple[str, float]:
    lang, score = identifier().classify(text[:max_chars])
    return str(lang), float(score)


class LangId(MapStage):
    def process(self, doc: dict) -> Outcome:
        lang, score = detect(doc["text"], self.cfg.max_chars)
        doc["lang"], doc["lang_score"] = lang, round(score, 4)
        if self.cfg.languages and lang not in self.cfg.languages:
            return "language_not_allowed", None
        if score < self.cfg.min_score:
            return "low_confidence", None
        return None, None
