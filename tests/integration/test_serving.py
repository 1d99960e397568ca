"""Following an alias without HTTP (pipeline/serving/): the conditional read, loading and checking a version,
the swap, the release of the old version, refusals, and one search's limits. Both storage backends."""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from functools import partial

import pytest

from pipeline.errors import InputError, StorageError, VersionRefused
from pipeline.serving.follower import AliasFollower, FollowEvents
from pipeline.serving.holder import VersionHolder
from pipeline.serving.loading import load_version
from pipeline.serving.query import Limits, answer
from pipeline.snapshots.aliases import promote, rollback
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from tests.serving import INDEX, corrupt, publish_version


class Recorded(FollowEvents):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def swapped(self, old, new, load_seconds) -> None:
        self.events.append(("swapped", old, new))

    def refused(self, version, check) -> None:
        self.events.append(("refused", version, check))

    def released(self, version, after_seconds) -> None:
        self.events.append(("released", version))


class CountingLoader:
    def __init__(self, storage: Storage) -> None:
        self.load = partial(load_version, storage, INDEX, search_lock=threading.Lock())
        self.calls: list[str] = []

    def __call__(self, version: str):
        self.calls.append(version)
        return self.load(version)


def follower_for(storage: Storage) -> tuple[AliasFollower, VersionHolder, Recorded, CountingLoader]:
    holder, events, loader = VersionHolder(), Recorded(), CountingLoader(storage)
    return AliasFollower(storage, INDEX, "live", holder, loader, events, poll_interval_s=0.05), holder, events, loader


def test_the_conditional_read_transfers_nothing_until_the_alias_moves(storage_root):
    s = Storage(storage_root)
    key = layout.alias_key(INDEX, "live")
    assert not s.read_versioned_if_changed(key, None).changed  # never set
    tag = s.compare_and_swap(key, b'{"version": "a"}', None)
    first = s.read_versioned_if_changed(key, None)
    assert first.changed and first.data == b'{"version": "a"}' and first.tag == tag
    assert s.read_versioned_if_changed(key, tag) == type(first)(changed=False)  # S3: 304, no body
    s.compare_and_swap(key, b'{"version": "b"}', tag)
    moved = s.read_versioned_if_changed(key, tag)
    assert moved.changed and moved.data == b'{"version": "b"}' and moved.tag != tag


def test_follows_promotion_and_rollback_and_releases_the_old_version(storage_root, encoder, serving_corpus):
    s = Storage(storage_root)
    for v in ("v1", "v2"):
        publish_version(s, v, encoder, *serving_corpus)
    promote(s, INDEX, "live", "v1", None)
    follower, holder, events, loader = follower_for(s)
    assert holder.current is None and follower.poll_once() and holder.current.version == "v1"
    assert not follower.poll_once() and loader.calls == ["v1"]  # unchanged alias: nothing loaded again

    in_flight = holder.current  # a request that started on v1
    first = weakref.ref(in_flight)
    promote(s, INDEX, "live", "v2", "v1")
    assert follower.poll_once() and holder.current.version == "v2"
    assert answer(in_flight, "vitamin D and bone density", 3).version == "v1"  # it finishes on the old version
    assert ("released", "v1") not in events.events and follower.status()["releasing"] == ["v1"]
    del in_flight
    assert follower.wait_for_releases(timeout_s=5) and first() is None
    assert ("released", "v1") in events.events

    rollback(s, INDEX, "live", "v2")  # a rollback is an alias move like any other
    assert follower.poll_once() and holder.current.version == "v1"
    assert follower.wait_for_releases(timeout_s=5)
    gc.collect()
    assert [e for e in events.events if e[0] == "swapped"] == [("swapped", None, "v1"), ("swapped", "v1", "v2"),
                                                               ("swapped", "v2", "v1")]
    assert [span["version"] for span in holder.timeline()] == ["v1", "v2", "v1"]
    spans = holder.timeline()
    assert all(a["until"] is not None and a["since"] <= a["until"] <= b["since"] + 1e-3
               for a, b in zip(spans, spans[1:], strict=False))


def test_a_corrupted_version_is_refused_once_and_the_old_one_keeps_serving(storage_root, encoder, serving_corpus):
    s = Storage(storage_root)
    for v in ("v1", "bad"):
        publish_version(s, v, encoder, *serving_corpus)
    corrupt(s, "bad")
    promote(s, INDEX, "live", "v1", None)
    follower, holder, events, loader = follower_for(s)
    follower.poll_once()
    promote(s, INDEX, "live", "bad", "v1")
    assert not follower.poll_once() and holder.current.version == "v1"
    assert events.events[-1] == ("refused", "bad", "checksum")
    refusal = follower.status()["last_refusal"]
    assert refusal["version"] == "bad" and "index/exact.faiss fails its checksum" in refusal["reason"]
    follower.poll_once()
    assert loader.calls == ["v1", "bad"]  # not tried again until the alias moves
    rollback(s, INDEX, "live", "bad")
    follower.poll_once()
    assert holder.current.version == "v1" and loader.calls == ["v1", "bad"]  # back where it serves: no reload


def test_a_version_refused_for_a_storage_failure_is_tried_again_later(tmp_path, encoder, serving_corpus,
                                                                      monkeypatch):
    """A load that failed on the storage (a timeout, a full cache disk) says nothing about the version: it is tried
    again after 2, then 4 poll intervals (a corrupt version is not: the test above), and then served."""
    clock = [1000.0]
    monkeypatch.setattr("pipeline.serving.follower.time.monotonic", lambda: clock[0])
    s = Storage(str(tmp_path))
    publish_version(s, "v1", encoder, *serving_corpus)
    promote(s, INDEX, "live", "v1", None)
    holder, events, real = VersionHolder(), Recorded(), CountingLoader(s)

    def flaky(version: str):
        if len(real.calls) < 2:
            real.calls.append(version)
            raise VersionRefused(f"{INDEX} version {version} refused (storage): storage error: ReadTimeoutError",
                                 "storage")
        return real(version)

    follower = AliasFollower(s, INDEX, "live", holder, flaky, events, poll_interval_s=1.0)
    assert not follower.poll_once() and follower.status()["retrying"] == {"version": "v1", "attempts": 1, "in_s": 2}
    for wait, calls in [(1.9, 1), (0.1, 2), (3.9, 2)]:  # tried again 2 s after the first failure, 4 s after the next
        clock[0] += wait
        assert not follower.poll_once() and len(real.calls) == calls and holder.current is None
    clock[0] += 0.1
    assert follower.poll_once() and holder.current.version == "v1" and real.calls == ["v1"] * 3
    assert events.events[:2] == [("refused", "v1", "storage")] * 2 and follower.status()["retrying"] is None


def test_versions_whose_model_does_not_check_out_are_refused(tmp_path, encoder, serving_corpus):
    s = Storage(str(tmp_path))
    card = encoder.card.to_dict()
    publish_version(s, "other-weights", encoder, *serving_corpus,
                    model=card | {"weights_sha256": "0" * 64})
    publish_version(s, "tampered-card", encoder, *serving_corpus, model=card | {"fingerprint": "0" * 16})
    load = partial(load_version, s, INDEX, search_lock=threading.Lock())
    with pytest.raises(VersionRefused, match="weights sha256 .* differ") as refused:
        load("other-weights")
    assert refused.value.check == "model"
    with pytest.raises(VersionRefused, match="fingerprint is .* the manifest records 0000") as refused:
        load("tampered-card")
    assert refused.value.check == "model"
    vectors, ids = serving_corpus
    publish_version(s, "64-dims", encoder, vectors[:, :64].copy(), ids)  # indexes of another model's dims
    with pytest.raises(VersionRefused, match=r"\(index\).*64-dim vectors but model all-MiniLM-L6-v2 gives 384") as r:
        load("64-dims")
    assert r.value.check == "index"
    with pytest.raises(VersionRefused, match=r"\(snapshot\).*no committed snapshot") as refused:
        load("never-published")  # or garbage-collected since the alias pointed at it
    assert refused.value.check == "snapshot"


def test_a_version_the_alias_left_while_it_loaded_is_not_swapped_in(tmp_path, encoder, serving_corpus):
    s = Storage(str(tmp_path))
    for v in ("v1", "v2", "v3"):
        publish_version(s, v, encoder, *serving_corpus)
    promote(s, INDEX, "live", "v1", None)
    follower, holder, events, loader = follower_for(s)
    follower.poll_once()
    promote(s, INDEX, "live", "v2", "v1")
    load = follower.loader

    def moving_loader(version: str):
        loaded = load(version)
        if version == "v2":
            promote(s, INDEX, "live", "v3", "v2")  # the alias moves on during the load
        return loaded

    follower.loader = moving_loader
    assert not follower.poll_once() and holder.current.version == "v1"
    assert follower.poll_once() and holder.current.version == "v3"
    assert loader.calls == ["v1", "v2", "v3"]


def test_the_follower_thread_swaps_in_the_background(tmp_path, encoder, serving_corpus):
    s = Storage(str(tmp_path))
    for v in ("v1", "v2"):
        publish_version(s, v, encoder, *serving_corpus)
    promote(s, INDEX, "live", "v1", None)
    follower, holder, events, _ = follower_for(s)
    follower.start()
    try:
        _wait(lambda: holder.current is not None and holder.current.version == "v1")
        promote(s, INDEX, "live", "v2", "v1")
        _wait(lambda: holder.current.version == "v2" and ("released", "v1") in events.events)
    finally:
        follower.stop()


def _wait(condition, timeout_s: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_one_search_checks_its_limits_and_reports_truncation(tmp_path, encoder, serving_corpus):
    s = Storage(str(tmp_path))
    publish_version(s, "v1", encoder, *serving_corpus)
    served = load_version(s, INDEX, "v1", threading.Lock())
    limits = Limits(max_k=20, max_query_chars=3000)
    got = answer(served, "vitamin D deficiency", 5, "binary+rescore", limits)
    assert got.version == "v1" and got.mode == "binary+rescore" and len(got.hits) == 5
    assert got.to_dict()["hits"][0]["rank"] == 1 and got.truncated_to_tokens is None
    assert answer(served, "x", 1, None, limits).mode == "exact"  # the default mode
    long = answer(served, "interleukin-6 " * 200, 3, None, limits)  # 2,800 characters, 1,000+ tokens
    assert long.truncated_to_tokens == 256 and "the model reads the first 256" in long.to_dict()["note"]
    for query, k, mode, message in (("   ", 5, None, "is empty"), ("a", 21, None, "k=21: expected 1 to 20"),
                                    ("a", 0, None, "k=0"), ("a" * 3001, 5, None, "3,001 characters"),
                                    ("a", 5, "ivfpq", "no search mode 'ivfpq'.*available: binary")):
        with pytest.raises(InputError, match=message):
            answer(served, query, k, mode, limits)


class Unreachable(Storage):
    """The real backend, made to fail its alias reads while `down` is set (an object store outage)."""

    down = False

    def read_versioned_if_changed(self, key, tag):
        if self.down:
            raise StorageError(f"storage root {self.url}: cannot connect to the storage endpoint")
        return super().read_versioned_if_changed(key, tag)


def test_an_unreadable_alias_keeps_the_current_version_serving(tmp_path, encoder, serving_corpus, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.serving")
    s = Unreachable(str(tmp_path))
    for v in ("v1", "v2"):
        publish_version(s, v, encoder, *serving_corpus)
    promote(s, INDEX, "live", "v1", None)
    failures = []
    events = Recorded()
    events.poll_failed = lambda: failures.append(1)
    holder = VersionHolder()
    follower = AliasFollower(s, INDEX, "live", holder, CountingLoader(s), events, poll_interval_s=0.05)
    follower.poll_once()
    s.down = True
    promote(Storage(s.url), INDEX, "live", "v2", "v1")
    assert not follower.poll_once() and not follower.poll_once() and holder.current.version == "v1"
    assert len(failures) == 2 and caplog.text.count("cannot read alias idx/live") == 1  # one line per outage
    s.down = False
    assert follower.poll_once() and holder.current.version == "v2" and "readable again" in caplog.text
