"""A loaded, checked and warmed version: what one request searches from start to end."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np

from pipeline.models.card import ModelCard
from pipeline.models.encoder import Encoder
from pipeline.quality.search import Searcher


class _Pending:
    """One caller's texts, waiting for the pass that encodes them."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.vectors: np.ndarray | None = None
        self.error: BaseException | None = None


class BatchedEncoder:
    """An encoder shared by a service's request threads. It runs one forward pass at a time (on a few cores two
    passes at once are no faster than one after the other), and the queries that arrive while one runs are encoded
    together in the next: whichever waiting caller gets the model takes every query queued by then (up to
    `max_batch`) and hands each caller its rows (group commit). A lone request waits for nothing; under load one
    pass answers several requests (batching pads queries to the longest in the pass, which moves a vector by float
    rounding only). One model lock per service, shared by every version it loads (versions of one model share
    the model); a queue per version. Its tokenizer needs no lock (pipeline/models/tokenizer.py never changes the
    tokenizer's state)."""

    def __init__(self, inner: Encoder, lock: threading.Lock, on_pass: Callable[[int], None] | None = None,
                 max_batch: int = 64) -> None:
        self.inner, self.lock, self.max_batch = inner, lock, max_batch
        self.on_pass = on_pass  # told the number of queries each pass encoded (the service's metrics)
        self.card: ModelCard = inner.card
        self.tokenizer = inner.tokenizer
        self._queue: deque[_Pending] = deque()

    @property
    def tokens_encoded(self) -> int:
        return self.inner.tokens_encoded

    def encode(self, texts: list[str], kind: Literal["query", "passage"] = "passage") -> np.ndarray:
        if kind != "query" or not texts:
            with self.lock:
                return self.inner.encode(texts, kind)
        mine = _Pending(texts)
        self._queue.append(mine)  # deque appends and pops are atomic
        with self.lock:
            while mine.vectors is None and mine.error is None:  # no pass took it yet: this thread runs the next one
                self._encode(self._take())  # (the oldest queries first: with a small max_batch, maybe not its own)
        if mine.error is not None:
            raise mine.error
        return mine.vectors

    def _take(self) -> list[_Pending]:
        batch, size = [], 0
        while self._queue and (not batch or size + len(self._queue[0].texts) <= self.max_batch):
            batch.append(pending := self._queue.popleft())
            size += len(pending.texts)
        return batch

    def _encode(self, batch: list[_Pending]) -> None:
        texts = [t for pending in batch for t in pending.texts]
        try:
            vectors = self.inner.encode(texts, "query")
        except BaseException as exc:  # each caller raises it in its own thread
            for pending in batch:
                pending.error = exc
            return
        if self.on_pass:
            self.on_pass(len(texts))
        start = 0
        for pending in batch:
            pending.vectors, start = vectors[start:start + len(pending.texts)], start + len(pending.texts)


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
