"""Hybrid search: batched fusion gives what a plain per-query loop gives; the Searcher offers bm25 and hybrid modes
beside the dense ones; the weight tuner cross-validates."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from pipeline.errors import InputError, SnapshotError
from pipeline.index.faiss_ops import build_exact
from pipeline.index.variants import Variant
from pipeline.quality.fusion import CONVEX, RRF, Fusion, fuse, parse_hybrid
from pipeline.quality.search import Searcher, variant_of
from pipeline.quality.tuning import tune_weight
from tests.unit.test_bm25 import build as build_bm25


def random_ranking(rng, queries: int, width: int, docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query: distinct documents (rows = doc numbers here), best first, some queries cut short with -1."""
    rows = np.full((queries, width), -1)
    scores = np.full((queries, width), -np.inf)
    for i in range(queries):
        n = rng.integers(0, width + 1)
        rows[i, :n] = rng.choice(docs, n, replace=False)
        scores[i, :n] = np.sort(np.round(rng.standard_normal(n), 1))[::-1]  # rounded: ties
    return scores, rows


def reference(dense, lexical, k: int, how: str, fusion: Fusion) -> list[list[tuple[int, float]]]:
    """One query at a time, with dicts: min-max (or reciprocal ranks) per side, summed, best first, ties by doc."""
    out = []
    for (ds, dr), (ls, lr) in zip(zip(*dense, strict=True), zip(*lexical, strict=True), strict=True):
        total: dict[int, float] = {}
        for (s, r), share in (((ds, dr), 1 - fusion.weight), ((ls, lr), fusion.weight)):
            s, r = s[r >= 0], r[r >= 0]
            for rank, (doc, score) in enumerate(zip(r.tolist(), s.tolist(), strict=True), start=1):
                if how == RRF:
                    value = 1 / (fusion.rrf_k + rank)
                else:
                    lo, hi = s.min(), s.max()
                    value = share * ((score - lo) / (hi - lo) if hi > lo else 1.0)
                total[doc] = total.get(doc, 0.0) + value
        out.append(sorted(total.items(), key=lambda x: (-x[1], x[0]))[:k])
    return out


@pytest.mark.parametrize("how", [CONVEX, RRF])
@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
def test_batched_fusion_equals_the_per_query_loop(how, weight):
    rng = np.random.default_rng(5)
    dense, lexical = random_ranking(rng, 60, 12, 30), random_ranking(rng, 60, 12, 30)
    fusion = Fusion(weight=weight, rrf_k=60)
    scores, rows = fuse(dense, lexical, np.arange(30), 8, how, fusion)
    want = reference(dense, lexical, 8, how, fusion)
    for i, expected in enumerate(want):
        got = [(int(r), float(s)) for r, s in zip(rows[i], scores[i], strict=True) if r >= 0]
        assert [d for d, _ in got] == [d for d, _ in expected], i
        assert np.allclose([s for _, s in got], [s for _, s in expected], atol=1e-12)
        assert (rows[i, len(got):] == -1).all()


def test_the_fused_document_keeps_the_dense_sides_chunk():
    doc_codes = np.array([0, 0, 1, 1])  # rows 0, 1 belong to document 0; rows 2, 3 to document 1
    dense = (np.array([[0.9, 0.5]]), np.array([[1, 2]]))
    lexical = (np.array([[7.0, 3.0]]), np.array([[0, 3]]))
    scores, rows = fuse(dense, lexical, doc_codes, 2, CONVEX, Fusion(weight=0.5))
    assert rows.tolist() == [[1, 2]] and scores.tolist() == [[1.0, 0.0]]  # each side's best and worst
    assert parse_hybrid("hybrid:binary+rescore") == (CONVEX, "binary+rescore") and parse_hybrid("exact") is None
    assert parse_hybrid("hybrid-rrf:exact@64") == (RRF, "exact@64") and variant_of("hybrid:int8") == "bm25"


CORPUS = {  # doc -> chunks
    "d0": ["statins lower cholesterol", "heart disease and statins"],
    "d1": ["vitamin d deficiency in children"],
    "d2": ["stem cells repair the heart muscle"],
    "d3": ["cholesterol and the liver", "liver enzymes"],
    "d4": ["mice models of disease"],
}


@pytest.fixture(scope="module")
def searcher(tmp_path_factory) -> Searcher:
    """7 chunks of 5 documents: an exact index over random vectors, and bm25 over the chunk texts."""
    chunks = [(d, i, t) for d, texts in CORPUS.items() for i, t in enumerate(texts)]
    ids = pl.DataFrame({"doc_id": [c[0] for c in chunks], "title": [c[0].upper() for c in chunks],
                        "chunk_id": [f"{c[0]}#{c[1]}" for c in chunks], "start": [0] * 7, "end": [1] * 7})
    x = np.random.default_rng(3).standard_normal((7, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    lexical = build_bm25([c[2] for c in chunks], 1, tmp_path_factory.mktemp("bm25"))  # rows 0-6, as the ids
    query_vectors = {"statins heart": x[1], "vitamin children": x[2], "liver cholesterol": x[4]}
    encoder = SimpleNamespace(card=SimpleNamespace(dims=8, name="fake"),
                              encode=lambda texts, kind="query": np.stack([query_vectors[t] for t in texts]))
    return Searcher({"exact": Variant.load("exact", build_exact(x), {})}, ids, encoder, 2, None, lexical=lexical)


def test_bm25_and_hybrid_modes_search_by_text_and_collapse_to_documents(searcher):
    assert searcher.modes() == ["exact", "bm25", "hybrid:exact", "hybrid-rrf:exact"]
    [bm25] = searcher.search(["statins heart"], 3, "bm25")
    assert [h.doc_id for h in bm25] == ["d0", "d2"] and bm25[0].chunk_id == "d0#1"  # its best chunk, once
    for mode in ("hybrid:exact", "hybrid-rrf:exact"):
        hits = searcher.search(["statins heart", "liver cholesterol"], 5, mode)
        assert [h.doc_id for h in hits[0]][0] == "d0" and [h.doc_id for h in hits[1]][0] == "d3"
        assert all(len({h.doc_id for h in hs}) == len(hs) == 5 for hs in hits)  # dense fills up to k documents
    with pytest.raises(SnapshotError, match="analyse the query text"):
        searcher.search_vectors(np.zeros((1, 8), np.float32), 3, "hybrid:exact")
    with pytest.raises(SnapshotError, match="expected a dense mode after hybrid:"):
        searcher.search(["statins"], 3, "hybrid:bm25")
    with pytest.raises(SnapshotError, match=r"no search mode 'int8'"):
        searcher.search(["statins"], 3, "hybrid:int8")


def test_a_snapshot_without_bm25_refuses_lexical_modes(searcher):
    plain = Searcher(searcher.variants, pl.DataFrame({"doc_id": [c for c in CORPUS for _ in CORPUS[c]],
                                                       "title": ["t"] * 7, "chunk_id": [str(i) for i in range(7)],
                                                       "start": [0] * 7, "end": [1] * 7}), searcher.encoder, 2)
    assert plain.modes() == ["exact"]
    with pytest.raises(SnapshotError, match="has no bm25 variant"):
        plain.search(["statins"], 3, "hybrid:exact")


def test_evaluation_reports_every_mode_and_the_hybrid_latency_includes_both_sides(searcher, monkeypatch):
    import time

    search = type(searcher.lexical).search

    def slow(*args):  # a lexical side far slower than the dense one: its time must show in hybrid's
        time.sleep(0.03)
        return search(*args)

    monkeypatch.setattr(type(searcher.lexical), "search", slow)
    queries = {"q1": "statins heart", "q2": "vitamin children", "q3": "liver cholesterol"}
    qrels = {"q1": {"d0": 1}, "q2": {"d1": 1}, "q3": {"d3": 1}}
    report = searcher.evaluate(queries, qrels, 10)
    assert list(report) == searcher.modes() and report["bm25"]["ndcg@10"] == 1.0
    ms = {mode: report[mode]["ms_per_query"] for mode in ("exact", "bm25", "hybrid:exact")}
    # 30 ms a search over 3 queries: 10 ms a query that only the lexical side's time can give (the dense side is
    # well under 1 ms); each side searches to the fusion depth, so the exact sum of the modes' times is not its own
    assert ms["bm25"] >= 10 and ms["hybrid:exact"] >= 10, ms


def test_weight_tuning_is_cross_validated_and_changes_nothing(searcher):
    queries = {f"q{i}": q for i, q in enumerate(["statins heart", "vitamin children", "liver cholesterol"] * 4)}
    qrels = {q: {"d0": 1} if "statins" in text else {"d1": 1} if "vitamin" in text else {"d3": 1}
             for q, text in queries.items()}
    tuned = tune_weight(searcher, queries, qrels, "exact", "ndcg@10", folds=3, step=0.25)
    assert tuned.grid == [0.0, 0.25, 0.5, 0.75, 1.0] and len(tuned.folds) == 3 and tuned.queries == 12
    assert all(f.weight in tuned.grid for f in tuned.folds) and sum(f.queries for f in tuned.folds) == 12
    held_out = sum(f.held_out * f.queries for f in tuned.folds) / 12
    assert tuned.held_out == pytest.approx(held_out, abs=1e-4) and tuned.held_out <= tuned.in_sample + 1e-9
    assert tuned.curve["0.5"] == tuned.default and searcher.fusion.weight == 0.5  # reported, never applied
    with pytest.raises(InputError, match="at least 20"):
        tune_weight(searcher, queries, qrels, folds=20)
    coarse = tune_weight(searcher, queries, qrels, "exact", "ndcg@10", folds=3, step=0.4)  # 0.5 is off its steps
    assert coarse.grid == [0.0, 0.4, 0.5, 0.8] and coarse.default_weight == 0.5
    assert coarse.default == tuned.default  # the configured weight's own score, not its nearest grid point's
    for mode in ("bm25", "hybrid:exact"):
        with pytest.raises(InputError, match=f"mode '{mode}': expected the dense mode that hybrid:<mode> fuses"):
            tune_weight(searcher, queries, qrels, mode, folds=3)
