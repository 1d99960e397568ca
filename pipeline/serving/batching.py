"""Searches shared by a service's request threads, batched (group commit).

One search runs at a time per service (on a few cores two forward passes at once are no faster than one after the
other, and FAISS already spreads one search over the cores). The requests that arrive while one runs wait, and
whichever of them gets the service's lock next runs them all (up to `max_batch` queries): their queries through
one forward pass, then one FAISS search per (mode, k) among them, and hands each request its own hits. A lone
request waits for nothing; under load one pass answers several requests. Batching pads queries to the longest in
the pass, which moves a vector by float rounding only. The lock is the service's, shared by every version it loads
(versions of one model share the model); each version has its own queue. A request given a deadline stops waiting
for the lock at that time, and a pass skips the requests whose deadline has passed: under overload the requests a
service already answered with a timeout are not searched all the same, each delaying the next.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

from pipeline.config import BM25
from pipeline.quality.search import Hit, Searcher


class _Pending:
    """One caller's queries, waiting for the pass that answers them."""

    def __init__(self, texts: list[str], k: int, mode: str, deadline: float | None = None) -> None:
        self.texts, self.k, self.mode, self.deadline = texts, k, mode, deadline
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

    def search(self, texts: list[str], k: int, mode: str, deadline: float | None = None) -> list[list[Hit]]:
        """Searcher.search, sharing a forward pass and FAISS calls with the requests waiting beside this one.
        `deadline` (time.monotonic()): past it, TimeoutError, and no pass searches these texts any more."""
        mine = _Pending(texts, k, mode, deadline)
        self._queue.append(mine)  # deque appends and pops are atomic
        wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if self.lock.acquire(timeout=wait):
            try:
                while not mine.done:  # no pass took it yet: this thread runs the next one
                    self._run(self._take())  # (the oldest first: with a small max_batch, maybe not its own)
            finally:
                self.lock.release()
        elif not mine.done:  # a pass that takes it from the queue now skips it
            mine.error = TimeoutError("the search waited past its deadline")
        if mine.error is not None:
            raise mine.error
        return mine.hits

    def _take(self) -> list[_Pending]:
        """The oldest waiting requests, up to max_batch queries; those past their deadline are dropped."""
        batch, size, now = [], 0, time.monotonic()
        while self._queue and (not batch or size + len(self._queue[0].texts) <= self.max_batch):
            pending = self._queue.popleft()
            if pending.deadline is not None and pending.deadline <= now and not pending.done:
                pending.error = TimeoutError("the search waited past its deadline")
            if not pending.done:
                batch.append(pending)
                size += len(pending.texts)
        return batch

    def _run(self, batch: list[_Pending]) -> None:
        try:
            self._answer(batch)
        except BaseException as exc:  # each caller raises it in its own thread; none is left waiting
            for pending in batch:
                if not pending.done:
                    pending.error = exc

    def _answer(self, batch: list[_Pending]) -> None:
        texts = [t for pending in batch for t in pending.texts]
        # bm25 alone needs no vectors
        vectors = self.searcher.encode(texts) if any(p.mode != BM25 for p in batch) else None
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
