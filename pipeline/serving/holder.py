"""The one reference to the version that answers, and when each version answered.

A request reads `current` once and keeps what it got to the end, so a swap never changes a request's version
halfway; the swap is one reference assignment. The holder keeps no other strong reference to a version, so the
old one is freed when the last request that read it finishes."""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import asdict, dataclass

from pipeline.serving.version import ServingVersion

TIMELINE_LENGTH = 100  # spans kept for /version


@dataclass
class ServedSpan:
    """A version was current from `since` (taken just before the swap that put it in) to `until` (just after the
    swap that took it out; None while current): wall-clock seconds, as clients measure their requests."""

    version: str
    since: float
    until: float | None = None


class VersionHolder:
    def __init__(self) -> None:
        self._current: ServingVersion | None = None
        self._timeline: list[ServedSpan] = []
        self._book = threading.Lock()  # guards the timeline only; readers of `current` never wait

    @property
    def current(self) -> ServingVersion | None:
        return self._current

    def swap(self, new: ServingVersion) -> weakref.ref[ServingVersion] | None:
        """Make `new` current; returns a weak reference to the version it replaced (dead once released)."""
        with self._book:
            since = time.time()
            old = self._current
            self._current = new  # the swap
            until = time.time()
            if self._timeline and self._timeline[-1].until is None:
                self._timeline[-1].until = until
            self._timeline = [*self._timeline, ServedSpan(new.version, since)][-TIMELINE_LENGTH:]
        return weakref.ref(old) if old is not None else None

    def timeline(self) -> list[dict]:
        with self._book:
            return [asdict(s) for s in self._timeline]
