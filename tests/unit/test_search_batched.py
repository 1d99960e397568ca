"""Batched rescoring, binary re-ranking and chunk collapsing give what a plain per-query loop gives."""

from types import SimpleNamespace

import faiss
import numpy as np
import polars as pl
import pytest

from pipeline.index import ranking
from pipeline.index.faiss_ops import build_exact
from pipeline.index.variants import Variant
from pipeline.quality.search import Searcher

D, K = 64, 10


@pytest.fixture(scope="module")
def searcher() -> Searcher:
    """600 chunks of 150 documents (1 to 8 chunks each), some vectors duplicated so that scores tie."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((600, D)).astype(np.float32)
    x[rng.choice(600, 60, replace=False)] = x[rng.choice(600, 60, replace=False)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    docs = np.sort(rng.integers(0, 150, 600))
    ids = pl.DataFrame({"doc_id": [f"d{d}" for d in docs], "title": [f"T{d}" for d in docs],
                        "chunk_id": [f"c{i}" for i in range(600)], "start": [0] * 600, "end": [1] * 600})
    ivf = faiss.index_factory(D, "IVF64,PQ8x4", faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    ivf.add(x)
    ivf.nprobe = 1  # one list of ~10 chunks: fewer than fetched, so FAISS pads with -1
    binary = faiss.IndexBinaryFlat(D)
    binary.add(np.packbits(x > 0, axis=1))
    variants = {"exact": Variant.load("exact", build_exact(x), {}), "ivfpq": Variant.load("ivfpq", ivf, {}),
                "binary": Variant.load("binary", binary, {})}
    encoder = SimpleNamespace(card=SimpleNamespace(dims=D, name="fake"))
    chunks = int(np.bincount(docs).max())
    assert chunks > 1
    return Searcher(variants, ids, encoder, chunks, x.astype(np.float16), rescore_factor=3)


def per_query(s: Searcher, q: np.ndarray, mode: str) -> list[list[tuple[str, str, float]]]:
    """The reference: each query's candidates scored one at a time, then the first chunk of each document."""
    name, _, suffix = mode.partition("+")
    v = s.variants[name]
    widen = s.rescore_factor if suffix == "rescore" or (v.spec.kind.binary and not suffix) else 1
    fetch = min(v.index.ntotal, K * s.fetch_factor * widen)
    if v.spec.kind.binary:
        dist, rows = v.index.search(np.packbits(q > 0, axis=1), fetch)
        scores = (1 - 2 * dist / D).astype(np.float32)
    else:
        scores, rows = v.index.search(q, fetch)
    out = []
    for i in range(len(q)):
        r, sc = rows[i][rows[i] >= 0], scores[i][rows[i] >= 0]
        if suffix == "rescore":
            sc = s.store[r].astype(np.float32) @ q[i]
        elif v.spec.kind.binary and not suffix:
            sc = (np.where(np.unpackbits(v.state[r], axis=1), 1.0, -1.0) @ q[i]).astype(np.float32)
        rescored = suffix == "rescore" or (v.spec.kind.binary and not suffix)
        order = np.argsort(-sc, kind="stable") if rescored else np.arange(len(r))
        best: dict[str, tuple[str, str, float]] = {}
        for j in np.arange(len(r))[order]:
            doc_id, _, chunk_id, _, _ = s.rows[r[j]]
            if doc_id not in best and len(best) < K:
                best[doc_id] = (doc_id, chunk_id, float(sc[j]))
        out.append(list(best.values()))
    return out


@pytest.mark.parametrize("mode", ["exact", "exact+rescore", "ivfpq", "ivfpq+rescore", "binary", "binary+hamming",
                                  "binary+rescore"])
def test_batched_search_equals_the_per_query_loop(searcher, mode, monkeypatch):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((70, D)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    got = searcher.search_vectors(q, K, mode)
    ref = per_query(searcher, q, mode)
    assert [[(h.doc_id, h.chunk_id) for h in hs] for hs in got] == [[(d, c) for d, c, _ in r] for r in ref]
    atol = 1e-5 if mode == "binary" else 0  # the reference sums the sign-bit products in another order
    for hs, r in zip(got, ref, strict=True):
        assert np.allclose([h.score for h in hs], [s for _, _, s in r], rtol=0, atol=atol)
    if mode.startswith("ivfpq"):
        assert min(map(len, got)) < K  # some queries' probed list held fewer than K documents
    else:
        assert {len(hs) for hs in got} == {K}
    monkeypatch.setattr(ranking, "RERANK_BLOCK_BYTES", 1)  # one query per block: the same results
    assert searcher.search_vectors(q, K, mode) == got


def test_rerank_keeps_the_best_with_ties_in_candidate_order_and_padding_last():
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 50, (9, 40))
    rows[2, 30:] = -1
    table = np.round(rng.standard_normal(50), 1).astype(np.float32)  # few distinct values: many ties
    full_scores, full_rows = ranking.rerank(rows, lambda sl, r: table[r], 8)
    for i in range(len(rows)):
        ok = rows[i] >= 0
        order = np.argsort(-table[rows[i][ok]], kind="stable")
        assert np.array_equal(full_rows[i][: ok.sum()], rows[i][ok][order])
        assert (full_rows[i][ok.sum():] == -1).all() and np.isneginf(full_scores[i][ok.sum():]).all()
    for keep in (1, 7, 35):
        scores, kept = ranking.rerank(rows, lambda sl, r: table[r], 8, keep)
        assert np.array_equal(kept, full_rows[:, :keep]) and np.array_equal(scores, full_scores[:, :keep])
