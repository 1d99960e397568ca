"""A loaded, checked and warmed version: what one request searches from start to end."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np

from pipeline.models.card import ModelCard
from pipeline.models.encoder import Encoder
from pipeline.quality.search import Searcher


class SerializedEncoder:
    """An encoder that runs one call at a time: on a few cores two forward passes at once are no faster than one
    after the other. One lock per service, shared by every version it loads (versions of one model share the
    model). Its tokenizer needs no lock (pipeline/models/tokenizer.py never changes the tokenizer's state)."""

    def __init__(self, inner: Encoder, lock: threading.Lock) -> None:
        self.inner, self.lock = inner, lock
        self.card: ModelCard = inner.card
        self.tokenizer = inner.tokenizer

    @property
    def tokens_encoded(self) -> int:
        return self.inner.tokens_encoded

    def encode(self, texts: list[str], kind: Literal["query", "passage"] = "passage") -> np.ndarray:
        with self.lock:
            return self.inner.encode(texts, kind)


@dataclass(eq=False)  # compared by identity; weakly referenced to see when the last request let go of it
class ServingVersion:
    index: str
    version: str
    searcher: Searcher
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
