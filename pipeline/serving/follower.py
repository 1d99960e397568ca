"""Follow an alias: poll it with a conditional read, load the version it moves to in the background, swap it in,
and wait for the old one to be released. A version that fails a check is refused (logged and reported) and the
current one keeps serving; it is not tried again until the alias moves, unless what failed was the storage (a
timeout, a full cache disk) or something unexpected (memory): such a version is tried again after 2, 4, 8... poll
intervals, up to RETRY_MAX_S apart. Rollbacks are alias moves like any other.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from pipeline.errors import EmbedpipeError, VersionRefused
from pipeline.serving.holder import VersionHolder
from pipeline.serving.memory import return_freed_memory
from pipeline.serving.version import ServingVersion
from pipeline.storage import layout
from pipeline.storage.backend import Storage

log = logging.getLogger("pipeline.serving")

Loader = Callable[[str], ServingVersion]  # version -> a checked, warmed version, or VersionRefused
TRANSIENT_CHECKS = ("storage", "load")  # refusals that say nothing about the version itself: tried again
RETRY_MAX_S = 300.0


class FollowEvents:
    """What the follower reports beside its log lines; the HTTP service counts these as metrics."""

    def polled(self, changed: bool) -> None: ...
    def poll_failed(self) -> None: ...
    def swapped(self, old: str | None, new: str, load_seconds: float) -> None: ...
    def refused(self, version: str, check: str) -> None: ...
    def released(self, version: str, after_seconds: float) -> None: ...


@dataclass(frozen=True)
class Refusal:
    version: str
    check: str
    reason: str
    at: str


@dataclass(frozen=True)
class _Retry:
    version: str
    attempts: int  # loads failed so far
    at: float  # time.monotonic() of the next


@dataclass
class _Pending:
    """A swapped-out version not yet freed: requests that started on it may still be running."""

    ref: weakref.ref
    version: str
    swapped_at: float
    warned: bool = False


class AliasFollower:
    def __init__(self, storage: Storage, index: str, alias: str, holder: VersionHolder, loader: Loader,
                 events: FollowEvents | None = None, poll_interval_s: float = 2.0,
                 release_warn_s: float = 60.0) -> None:
        self.storage, self.index, self.alias, self.holder, self.loader = storage, index, alias, holder, loader
        self.key = layout.alias_key(index, alias)
        self.events = events or FollowEvents()
        self.poll_interval_s, self.release_warn_s = poll_interval_s, release_warn_s
        self.alias_version: str | None = None  # where the alias pointed at the last read
        self.loading: str | None = None
        self.last_refusal: Refusal | None = None
        self.last_poll_at: str | None = None
        self._tag: str | None = None
        self._pending: list[_Pending] = []
        self._poll_failing = False
        self._retry: _Retry | None = None
        self._last_gc = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the loop ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"follow {self.index}/{self.alias}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the follower must outlive any one bad poll; the service keeps serving
                log.exception("following %s/%s: unexpected error; polling again in %.1f s", self.index, self.alias,
                              self.poll_interval_s)
            self._stop.wait(self.poll_interval_s)

    # --- one poll -----------------------------------------------------------------------------------------------

    def poll_once(self) -> bool:
        """Read the alias if it changed, and follow it; True when a version was swapped in."""
        self.check_releases()
        try:
            read = self.storage.read_versioned_if_changed(self.key, self._tag)
        except EmbedpipeError as exc:
            self.events.poll_failed()
            if not self._poll_failing:  # one line per outage, not one per poll
                log.warning("cannot read alias %s/%s (%s); %s", self.index, self.alias, exc, self._still())
            self._poll_failing = True
            return False
        if self._poll_failing:
            log.info("alias %s/%s readable again", self.index, self.alias)
        self._poll_failing = False
        self.last_poll_at = datetime.now(UTC).isoformat()
        self.events.polled(read.changed)
        if not read.changed:
            retry = self._retry
            if retry and time.monotonic() >= retry.at and retry.version == self.alias_version != self._serving():
                return self._follow(retry.version)
            return False
        self._tag, self._retry = read.tag, None
        if read.data is None:
            log.warning("alias %s/%s is not set; %s", self.index, self.alias, self._still())
            self.alias_version = None
            return False
        try:
            self.alias_version = _version_of(read.data)
        except (ValueError, KeyError, TypeError):
            log.error("alias %s/%s holds no version (unreadable record); %s", self.index, self.alias, self._still())
            return False
        if self.alias_version == self._serving():
            return False  # moved away and back between two polls
        return self._follow(self.alias_version)

    def _serving(self) -> str | None:
        current = self.holder.current  # a name only: the follower must not keep the version alive
        return current.version if current is not None else None

    def _still(self) -> str:
        serving = self._serving()
        return f"still serving {serving}" if serving else "nothing to serve yet (not ready)"

    def _follow(self, version: str) -> bool:
        serving = self._serving()
        log.info("alias %s/%s points at %s; loading it in the background (%s)", self.index, self.alias, version,
                 f"serving {serving} meanwhile" if serving else "nothing served yet")
        self.loading = version
        try:
            loaded = self.loader(version)
        except VersionRefused as exc:
            self._refuse(version, exc.check, str(exc))
            return False
        except EmbedpipeError as exc:
            self._refuse(version, "load", str(exc))
            return False
        except Exception as exc:  # a bug or a resource limit (MemoryError): refused all the same, traceback logged
            log.debug("loading %s failed", version, exc_info=True)
            self._refuse(version, "load", f"unexpected {type(exc).__name__} while loading")
            return False
        finally:
            self.loading = None
        self._retry = None
        if self._moved_on(version):
            log.info("alias %s/%s moved on while %s loaded; not serving it", self.index, self.alias, version)
            return False
        old = self._serving()
        released = self.holder.swap(loaded)
        load_seconds = loaded.load_seconds
        del loaded
        log.info("serving %s/%s version %s (loaded, checked and warmed in %.2f s%s)", self.index, self.alias,
                 version, load_seconds, f"; was {old}" if old else "")
        self.events.swapped(old, version, load_seconds)
        if released is not None and old is not None:
            self._pending.append(_Pending(released, old, time.monotonic()))
            self.wait_for_releases(timeout_s=min(self.poll_interval_s, 5.0))
        return True

    def _moved_on(self, version: str) -> bool:
        """Whether the alias points elsewhere now (the next poll follows it); it was read before a load of seconds."""
        try:
            read = self.storage.read_versioned_if_changed(self.key, self._tag)
        except EmbedpipeError:
            return False  # it pointed here a moment ago
        try:
            return read.changed and (read.data is None or _version_of(read.data) != version)
        except (ValueError, KeyError, TypeError):
            return True

    def _refuse(self, version: str, check: str, reason: str) -> None:
        self.last_refusal = Refusal(version, check, reason, datetime.now(UTC).isoformat())
        self.events.refused(version, check)
        again = ""
        if check in TRANSIENT_CHECKS:
            attempts = self._retry.attempts + 1 if self._retry and self._retry.version == version else 1
            wait = min(self.poll_interval_s * 2 ** attempts, RETRY_MAX_S)
            self._retry, again = _Retry(version, attempts, time.monotonic() + wait), f"; trying it again in {wait:g} s"
        log.error("alias %s/%s: %s; %s%s", self.index, self.alias, reason, self._still(), again)

    # --- releasing old versions ------------------------------------------------------------------------------------

    def check_releases(self) -> None:
        """Report the swapped-out versions that are freed now, and give their memory back."""
        if not self._pending:
            return
        now = time.monotonic()
        freed = [p for p in self._pending if p.ref() is None]
        if not freed and now - self._last_gc > 1.0 and any(now - p.swapped_at > 1.0 for p in self._pending):
            # A reference cycle (an exception's traceback, say) may hold one. A full collection walks every object
            # not frozen (~130 ms with torch's modules unfrozen, as in a test's service), hence at most once a second.
            self._last_gc = now
            gc.collect()
            freed = [p for p in self._pending if p.ref() is None]
        if freed:
            self._pending = [p for p in self._pending if p.ref() is not None]
            return_freed_memory()
        for p in freed:
            after = time.monotonic() - p.swapped_at
            log.info("released %s/%s version %s %.2f s after the swap", self.index, self.alias, p.version, after)
            self.events.released(p.version, after)
        for p in self._pending:
            if not p.warned and time.monotonic() - p.swapped_at > self.release_warn_s:
                p.warned = True
                log.warning("version %s is still referenced %.0f s after it was swapped out", p.version,
                            time.monotonic() - p.swapped_at)

    def wait_for_releases(self, timeout_s: float) -> bool:
        """Wait until every swapped-out version is freed (requests in flight finish first); True if they were."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_releases()
            if not self._pending or time.monotonic() >= deadline:
                return not self._pending
            time.sleep(0.01)

    def status(self) -> dict:
        return {"alias": self.alias, "alias_version": self.alias_version, "loading": self.loading,
                "last_poll_at": self.last_poll_at, "poll_interval_s": self.poll_interval_s,
                "releasing": [p.version for p in self._pending],
                "retrying": {"version": self._retry.version, "attempts": self._retry.attempts,
                             "in_s": round(max(0.0, self._retry.at - time.monotonic()), 1)} if self._retry else None,
                "last_refusal": asdict(self.last_refusal) if self.last_refusal else None}


def _version_of(data: bytes) -> str:
    return json.loads(data)["version"]
