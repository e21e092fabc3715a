"""The two kinds of stage every cleaning step is one of.

* A ``MapStage`` looks at one document at a time: it may rewrite ``doc["text"]`` (normalise,
  redact) and returns why the document is removed, or None to keep it. Pure per document, so it
  runs anywhere: in this process, or on Ray workers.
* A ``DedupStage`` needs to remember what it has kept. It splits into a pure ``key(text)`` (a
  hash or a MinHash signature: the costly part, computed anywhere) and a sequential
  ``decide(doc, key)`` that checks and updates the kept set in document order. Its per-shard
  additions are saved with each finished shard, so a resumed run rebuilds exactly the same
  state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

# (removal reason or None, modification counts or None)
Outcome = tuple[str | None, dict[str, int] | None]


class MapStage(ABC):
    kind = "map"

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.name: str = cfg.name or cfg.type

    @abstractmethod
    def process(self, doc: dict) -> Outcome:
        """Keep (possibly rewritten) or drop one document, with the reason."""


class DedupStage(ABC):
    kind = "dedup"

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.name: str = cfg.name or cfg.type

    @abstractmethod
    def key(self, text: str) -> Any:
        """What identifies a document for this stage (a hash, a MinHash signature)."""

    @abstractmethod
    def decide(self, doc: dict, key: Any) -> str | None:
        """None to keep the document, else the reason it duplicates an earlier one."""

    @abstractmethod
    def take_shard_state(self) -> dict[str, np.ndarray]:
        """What this stage added since the last call (saved with the finished shard)."""

    @abstractmethod
    def load_shard_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Replay a finished shard's additions (on resume)."""
