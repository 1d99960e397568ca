"""Searches shared by a service's request threads, batched (group commit).

One search runs at a time per service (on a few cores two forward passes at once are no faster than one after the
other, and FAISS already spreads one search over the cores). The requests that arrive while one runs wait, and
whichever of them gets the service's lock next runs them all (up to `max_batch` queries): their queries through
one forward pass, then one FAISS search per (mode, k) among them, and hands each request its own hits. A lone
request waits for nothing; under load one pass answers several requests. Batching pads queries to the longest in
the pass, which moves a vector by float rounding only. The lock is the service's, shared by every version it loads
(versions of one model share the model); each version has its own queue.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Callable

from pipeline.config import BM25
from pipeline.quality.search import Hit, Searcher


class _Pending:
    """One caller's queries, waiting for the pass that answers them."""

    def __init__(self, texts: list[str], k: int, mode: str) -> None:
        self.texts, self.k, self.mode = texts, k, mode
        self.hits: list[list[Hit]] | None = None
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.hits is not None or self.error is not None


class BatchedSearches:
    def __init__(self, searcher: Searcher, lock: threading.Lock, on_pass: Callable[[int], None] | None = None,
                 max_batch: int = 64) -> None:
        self.searcher, self.lock, self.max_batch = searcher, lock, max_batch
        self.on_pass = on_pass  # told how many queries each forward pass encoded (the service's metrics)
        self._queue: deque[_Pending] = deque()

    def search(self, texts: list[str], k: int, mode: str) -> list[list[Hit]]:
        """Searcher.search, sharing a forward pass and FAISS calls with the requests waiting beside this one."""
        mine = _Pending(texts, k, mode)
        self._queue.append(mine)  # deque appends and pops are atomic
        with self.lock:
            while not mine.done:  # no pass took it yet: this thread runs the next one
                self._run(self._take())  # (the oldest first: with a small max_batch, maybe not its own)
        if mine.error is not None:
            raise mine.error
        return mine.hits

    def _take(self) -> list[_Pending]:
        batch, size = [], 0
        while self._queue and (not batch or size + len(self._queue[0].texts) <= self.max_batch):
            batch.append(pending := self._queue.popleft())
            size += len(pending.texts)
        return batch

    def _run(self, batch: list[_Pending]) -> None:
        texts = [t for pending in batch for t in pending.texts]
        try:  # bm25 alone needs no vectors
            vectors = self.searcher.encode(texts) if any(p.mode != BM25 for p in batch) else None
        except BaseException as exc:  # each caller raises it in its own thread
            for pending in batch:
                pending.error = exc
            return
        if vectors is not None and self.on_pass:
            self.on_pass(len(texts))
        groups: dict[tuple[str, int], list[tuple[_Pending, list[int]]]] = defaultdict(list)
        start = 0
        for pending in batch:
            groups[pending.mode, pending.k].append((pending, list(range(start, start + len(pending.texts)))))
            start += len(pending.texts)
        for (mode, k), members in groups.items():
            rows = [r for _, own in members for r in own]
            try:
                hits = self.searcher.search([texts[r] for r in rows], k, mode,
                                            vectors=None if vectors is None else vectors[rows])
            except BaseException as exc:
                for pending, _ in members:
                    pending.error = exc
                continue
            at = 0
            for pending, own in members:
                pending.hits, at = hits[at:at + len(own)], at + len(own)
