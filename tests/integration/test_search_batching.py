"""Concurrent requests share searches: the requests queued while one search runs are answered together by the next
(one forward pass, one FAISS call per mode and k), and each gets its own hits (pipeline/serving/batching.py), on a
published version of 60 SciFact abstracts with the real MiniLM."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.errors import ModelError
from pipeline.serving.batching import BatchedSearches, _Pending
from pipeline.serving.loading import load_version
from pipeline.storage.backend import Storage
from tests.serving import INDEX, publish_version

QUERIES = ["statins and heart disease", "vitamin D deficiency in children", "CRISPR off-target effects",
           "antibiotic resistance in hospitals", "sleep and memory consolidation", "microbiome and obesity",
           "p53 tumour suppression", "a much longer query about the role of inflammation in the progression of "
           "atherosclerosis in older adults with type 2 diabetes"]
REQUESTS = [(q, k, mode) for q, (k, mode) in zip(QUERIES, [(5, "exact"), (10, "exact"), (5, "binary+rescore"),
                                                           (5, "exact"), (10, "exact"), (5, "binary+rescore"),
                                                           (3, "binary"), (5, "exact")], strict=True)]


@pytest.fixture(scope="module")
def searcher(tmp_path_factory, encoder, serving_corpus):
    storage = Storage(str(tmp_path_factory.mktemp("batching")))
    publish_version(storage, "v1", encoder, *serving_corpus)
    return load_version(storage, INDEX, "v1", threading.Lock()).searcher


def _concurrently(searches: BatchedSearches, requests: list[tuple[str, int, str]]) -> list:
    """Each request from its own thread, all queued while a search runs (the lock held), then let go."""
    out: list = [None] * len(requests)

    def call(i: int) -> None:
        query, k, mode = requests[i]
        try:
            out[i] = searches.search([query], k, mode)[0]
        except Exception as exc:  # the test looks at what each caller got
            out[i] = exc

    with searches.lock:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(searches._queue) < len(requests) and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(60)
    return out


def _same(got, alone) -> bool:
    """The same documents in the same order, scores equal to float rounding (a shared pass pads queries)."""
    return [h.doc_id for h in got] == [h.doc_id for h in alone] and \
        all(abs(a.score - b.score) < 1e-4 for a, b in zip(got, alone, strict=True))


@pytest.mark.parametrize("max_batch, passes", [(64, [8]), (3, [2, 3, 3]), (1, [1] * 8)])
def test_waiting_requests_share_a_pass_and_each_gets_its_own_hits(searcher, max_batch, passes):
    """All eight queued: one forward pass answers them (three modes and k's: a FAISS call per mode and k), or
    passes of at most max_batch queries; the thread that gets the lock answers the oldest requests, which may not
    include its own, and goes on until its own are answered."""
    sizes: list[int] = []
    got = _concurrently(BatchedSearches(searcher, threading.Lock(), sizes.append, max_batch), REQUESTS)
    assert sorted(sizes) == passes
    for hits, (query, k, mode) in zip(got, REQUESTS, strict=True):
        assert len(hits) == k and _same(hits, searcher.search([query], k, mode)[0]), (query, k, mode)


def test_a_caller_behind_older_requests_searches_until_its_own_are_answered(searcher):
    sizes: list[int] = []
    searches = BatchedSearches(searcher, threading.Lock(), sizes.append, max_batch=1)
    earlier = _Pending([QUERIES[1]], 5, "exact")  # queued before this caller, still waiting for the lock
    searches._queue.append(earlier)
    mine = searches.search([QUERIES[0]], 5, "exact")[0]
    assert sizes == [1, 1] and not searches._queue
    assert _same(mine, searcher.search([QUERIES[0]], 5, "exact")[0])
    assert _same(earlier.hits[0], searcher.search([QUERIES[1]], 5, "exact")[0])  # the other's, answered too


def test_requests_past_their_deadline_time_out_and_are_not_searched(searcher):
    """Under overload the service answers a request with a timeout: its search must not run all the same (each
    would delay the requests after it). One waits for the lock past its deadline; one queued request's deadline has
    passed when a pass takes it: neither is encoded or searched."""
    sizes: list[int] = []
    searches = BatchedSearches(searcher, threading.Lock(), sizes.append)
    expired = _Pending([QUERIES[1]], 5, "exact", deadline=time.monotonic() - 1)
    searches._queue.append(expired)
    out: dict[str, object] = {}

    def call(name: str, deadline: float | None) -> None:
        try:
            out[name] = searches.search([QUERIES[0]], 5, "exact", deadline)[0]
        except TimeoutError as exc:
            out[name] = exc

    with searches.lock:  # a long search holds the lock
        waiting = threading.Thread(target=call, args=("waiting", time.monotonic() + 0.3))
        waiting.start()
        waiting.join(30)
        assert isinstance(out["waiting"], TimeoutError) and sizes == []  # it stopped waiting at its deadline
    call("on time", None)
    assert sizes == [1] and _same(out["on time"], searcher.search([QUERIES[0]], 5, "exact")[0])
    assert isinstance(expired.error, TimeoutError) and not searches._queue


def test_a_pass_failing_outside_its_searches_fails_its_callers_instead_of_leaving_them_waiting(searcher):
    def broken_metrics(_queries: int) -> None:
        raise RuntimeError("the metrics callback failed")

    got = _concurrently(BatchedSearches(searcher, threading.Lock(), broken_metrics), REQUESTS[:3])
    assert all(isinstance(g, RuntimeError) and "metrics callback" in str(g) for g in got), got


def test_one_failing_mode_fails_its_own_requests_only(searcher):
    """A mode that fails (here one this version does not have) fails the requests that asked for it; the others in
    the same batch are answered."""
    requests = [(QUERIES[0], 5, "exact"), (QUERIES[1], 5, "ivfpq-missing"), (QUERIES[2], 5, "exact")]
    got = _concurrently(BatchedSearches(searcher, threading.Lock()), requests)
    assert "no search mode 'ivfpq-missing'" in str(got[1])
    assert _same(got[0], searcher.search([QUERIES[0]], 5, "exact")[0]) and len(got[2]) == 5


class _Refuses:
    """The real encoder, failing a pass that holds a given query (a model error mid-service)."""

    def __init__(self, inner, bad: str) -> None:
        self.inner, self.bad = inner, bad
        self.card, self.tokenizer, self.tokens_encoded = inner.card, inner.tokenizer, 0

    def encode(self, texts, kind="passage"):
        if self.bad in texts:
            raise ModelError(f"cannot encode {self.bad!r}")
        return self.inner.encode(texts, kind)


def test_a_failed_pass_fails_each_of_its_callers_and_the_next_pass_works(searcher, monkeypatch):
    bad = QUERIES[2]
    monkeypatch.setattr(searcher, "encoder", _Refuses(searcher.encoder, bad))
    searches = BatchedSearches(searcher, threading.Lock())
    got = _concurrently(searches, REQUESTS)
    assert all(isinstance(g, ModelError) and bad in str(g) for g in got)  # they shared the pass that failed
    assert len(searches.search([QUERIES[0]], 5, "exact")[0]) == 5  # the next pass works
