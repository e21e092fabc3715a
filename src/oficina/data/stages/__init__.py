"""Cleaning stages, run in the order the YAML lists them; each a typed config on ``type``.

stages:
  - {type: normalize}
  - {type: langid, languages: [pt, en]}
  - {type: quality, min_words: 20}
  - {type: spam}
  - {type: pii}
  - {type: exact_dedup}
  - {type: near_dedup, threshold: 0.8}
  - {type: decontam, eval_files: [examples/demo/task/test.jsonl]}
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from oficina.data.stages.base import DedupStage, MapStage
from oficina.data.stages.decontam import Decontam, DecontamConfig
from oficina.data.stages.dedup import ExactDedup, ExactDedupConfig, NearDedup, NearDedupConfig
from oficina.data.stages.langid import LangId, LangIdConfig
from oficina.data.stages.licence import Licence, LicenceConfig
from oficina.data.stages.normalize import Normalize, NormalizeConfig
from oficina.data.stages.pii import PII, PIIConfig
from oficina.data.stages.quality import Quality, QualityConfig
from oficina.data.stages.spam import Spam, SpamConfig

StageConfig = Annotated[
    NormalizeConfig
    | LangIdConfig
    | QualityConfig
    | SpamConfig
    | PIIConfig
    | ExactDedupConfig
    | NearDedupConfig
    | DecontamConfig
    | LicenceConfig,
    Field(discriminator="type"),
]

_IMPL = {
    "normalize": Normalize,
    "langid": LangId,
    "quality": Quality,
    "spam": Spam,
    "pii": PII,
    "exact_dedup": ExactDedup,
    "near_dedup": NearDedup,
    "decontam": Decontam,
    "licence": Licence,
}


def build(cfg) -> MapStage | DedupStage:
    return _IMPL[cfg.type](cfg)


__all__ = ["StageConfig", "build", "MapStage", "DedupStage"]
