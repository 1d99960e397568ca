"""Concurrent requests share forward passes: the queries queued while one pass runs are encoded together in the
next, and each caller gets its own rows (pipeline/serving/version.py BatchedEncoder), with the real MiniLM."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipeline.errors import ModelError
from pipeline.serving.version import BatchedEncoder, _Pending

QUERIES = ["statins and heart disease", "vitamin D deficiency in children", "CRISPR off-target effects",
           "antibiotic resistance in hospitals", "sleep and memory consolidation", "microbiome and obesity",
           "p53 tumour suppression", "a much longer query about the role of inflammation in the progression of "
           "atherosclerosis in older adults with type 2 diabetes"]


def _concurrently(batched: BatchedEncoder, lock: threading.Lock, queries: list[str]) -> list:
    """Each query from its own thread, all queued while the model is busy (the lock held), then let go."""
    out: list = [None] * len(queries)

    def call(i: int) -> None:
        try:
            out[i] = batched.encode([queries[i]], "query")
        except Exception as exc:  # the test looks at what each caller got
            out[i] = exc

    with lock:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(queries))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(batched._queue) < len(queries) and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(60)
    return out


def test_queries_that_wait_together_share_one_pass_and_each_gets_its_own_vector(encoder):
    lock, passes = threading.Lock(), []
    batched = BatchedEncoder(encoder, lock, on_pass=passes.append)
    got = _concurrently(batched, lock, QUERIES)
    assert passes == [len(QUERIES)]  # one forward pass answered all eight requests
    alone = np.vstack([encoder.encode([q], "query") for q in QUERIES])
    # each its own row, in its own order; padding to the longest query moves a vector by rounding only
    assert np.abs(np.vstack(got) - alone).max() < 1e-5
    assert batched.encode([QUERIES[0]], "query").shape == (1, encoder.card.dims) and passes[-1] == 1  # alone: at once


@pytest.mark.parametrize("max_batch, sizes", [(3, [2, 3, 3]), (1, [1] * len(QUERIES))])
def test_a_pass_holds_at_most_max_batch_queries_and_every_caller_gets_its_own(encoder, max_batch, sizes):
    """The thread that gets the model encodes the oldest queries, which may not include its own: it goes on until
    its own are done (1: one query per pass, as a service without batching)."""
    lock, passes = threading.Lock(), []
    got = _concurrently(BatchedEncoder(encoder, lock, on_pass=passes.append, max_batch=max_batch), lock, QUERIES)
    assert sorted(passes) == sizes
    alone = np.vstack([encoder.encode([q], "query") for q in QUERIES])
    assert np.abs(np.vstack(got) - alone).max() < 1e-5


def test_a_caller_behind_older_queries_encodes_until_its_own_are_done(encoder):
    """The thread that gets the model encodes the oldest queries first; with max_batch 1 those are another caller's
    (queued earlier, still waiting for the model), and this caller goes on to its own instead of returning none."""
    passes: list[int] = []
    batched = BatchedEncoder(encoder, threading.Lock(), on_pass=passes.append, max_batch=1)
    earlier = _Pending([QUERIES[1]])
    batched._queue.append(earlier)
    mine = batched.encode([QUERIES[0]], "query")
    assert passes == [1, 1] and not batched._queue
    assert np.abs(mine - encoder.encode([QUERIES[0]], "query")).max() < 1e-5
    assert np.abs(earlier.vectors - encoder.encode([QUERIES[1]], "query")).max() < 1e-5  # the other's, done too


class _Refuses:
    """The real encoder, failing a pass that holds a given query (a model error mid-service)."""

    def __init__(self, inner, bad: str) -> None:
        self.inner, self.bad = inner, bad
        self.card, self.tokenizer, self.tokens_encoded = inner.card, inner.tokenizer, 0

    def encode(self, texts, kind="passage"):
        if self.bad in texts:
            raise ModelError(f"cannot encode {self.bad!r}")
        return self.inner.encode(texts, kind)


def test_a_failed_pass_fails_each_of_its_callers_and_the_next_pass_works(encoder):
    lock, bad = threading.Lock(), QUERIES[2]
    batched = BatchedEncoder(_Refuses(encoder, bad), lock)
    got = _concurrently(batched, lock, QUERIES)
    assert all(isinstance(g, ModelError) and bad in str(g) for g in got)  # they shared the pass that failed
    assert batched.encode([QUERIES[0]], "query").shape == (1, encoder.card.dims)  # the encoder is still usable
