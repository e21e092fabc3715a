"""Licence filter: keep only documents whose source licence is on the allowed list."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from oficina.config import Section
from oficina.data.stages.base import MapStage, Outcome


class LicenceConfig(Section):
    type: Literal["licence"] = "licence"
    name: str | None = Field(None, description="name in the report (default: the type)")
    allow: list[str] = Field(description="licences that may be used for training (e.g. PSF-2.0)")


class Licence(MapStage):
    def process(self, doc: dict) -> Outcome:
        if doc.get("licence") not in self.cfg.allow:
            return "licence_not_allowed", None
        return None, None
