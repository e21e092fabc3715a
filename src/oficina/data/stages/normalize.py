"""Unicode NFC normalisation and whitespace / control-character clean-up.

NFC composes characters (``e`` + combining acute -> ``é``) without changing them, so accents
stay: the seeds are Portuguese. NFKC would also fold ``ﬁ`` -> ``fi`` and full-width letters,
which is sometimes wanted, so it is an option. Leading indentation is kept (code blocks stay
readable); runs of spaces inside a line, trailing spaces and long runs of blank lines go.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

from pydantic import Field

from oficina.config import Section
from oficina.data.stages.base import MapStage, Outcome

# C0/C1 controls except tab and newline, plus zero-width and bidi marks that hide in scraped text.
_CONTROL = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff\u202a-\u202e]"
)
_SPACES = {"\u00a0": " ", "\u2007": " ", "\u202f": " ", "\u3000": " ", "\t": "    "}
_INNER_RUN = re.compile(r"(?<=\S)[ ]{2,}(?=\S)")
_BLANKS = re.compile(r"\n{3,}")


class NormalizeConfig(Section):
    type: Literal["normalize"] = "normalize"
    name: str | None = Field(None, description="name in the report (default: the type)")
    form: Literal["NFC", "NFKC"] = Field("NFC", description="Unicode normal form")
    collapse_spaces: bool = Field(True, description="collapse runs of spaces inside lines")
    min_chars: int = Field(1, ge=0, description="drop documents shorter than this after clean-up")


def normalize_text(text: str, form: str = "NFC", collapse_spaces: bool = True) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize(form, text)
    text = _CONTROL.sub("", text)
    for a, b in _SPACES.items():
        if a in text:
            text = text.replace(a, b)
    lines = [ln.rstrip() for ln in text.split("\n")]
    if collapse_spaces:
        lines = [_INNER_RUN.sub(" ", ln) for ln in lines]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip("\n")


class Normalize(MapStage):
    def process(self, doc: dict) -> Outcome:
        new = normalize_text(doc["text"], self.cfg.form, self.cfg.collapse_spaces)
        changed = new != doc["text"]
        doc["text"] = new
        if len(new.strip()) < max(1, self.cfg.min_chars):
            return "too_short", None
        return None, ({"changed": 1} if changed else None)
