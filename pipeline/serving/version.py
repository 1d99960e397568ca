"""A loaded, checked and warmed version: what one request searches from start to end."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pipeline.models.card import ModelCard
from pipeline.quality.search import Searcher
from pipeline.serving.batching import BatchedSearches


@dataclass(eq=False)  # compared by identity; weakly referenced to see when the last request let go of it
class ServingVersion:
    index: str
    version: str
    searcher: Searcher
    searches: BatchedSearches  # the searcher's searches, batched across requests (what requests call)
    model: ModelCard
    loaded_at: datetime
    load_seconds: float
    bytes: int  # its files' size: roughly what it holds in memory
    default_mode: str

    @property
    def modes(self) -> list[str]:
        return self.searcher.modes()

    def describe(self) -> dict:
        return {"index": self.index, "version": self.version, "loaded_at": self.loaded_at.isoformat(),
                "load_seconds": round(self.load_seconds, 3), "bytes": self.bytes, "modes": self.modes,
                "default_mode": self.default_mode,
                "model": {"name": self.model.name, "fingerprint": self.model.fingerprint, "dims": self.model.dims}}
