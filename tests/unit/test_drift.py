"""Drift statistics, blue/green comparison, monitoring thresholds and their renderers (numpy only, seeded)."""

import io
import json
import struct

import numpy as np
import pytest

from pipeline.quality.drift import (
    Geometry,
    VectorMoments,
    check_thresholds,
    compare,
    relevance_gap,
    score_stats,
    snapshot_stats,
    topk_overlap,
    vector_stats,
)
from pipeline.quality.metrics import evaluate_run, top_k
from pipeline.reports.markdown import drift_markdown
from pipeline.reports.plots import blue_green_png, quality_vs_bytes_png

ROWS, DIMS, QUERIES = 1500, 64, 80


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def search(docs: np.ndarray, queries: np.ndarray, k: int = 100) -> dict[str, dict[str, float]]:
    scores = queries @ docs.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return {f"q{i}": {f"d{j}": float(scores[i, j]) for j in row} for i, row in enumerate(top)}


@pytest.fixture(scope="module")
def corpus():
    """Clustered docs around a shared direction (anisotropic, like real embeddings); query i is a noisy
    copy of doc i, which is its one relevant doc."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(12, DIMS))
    docs = unit(0.8 * rng.normal(size=DIMS) + centres[rng.integers(0, 12, ROWS)] + 0.6 * rng.normal(size=(ROWS, DIMS)))
    queries = unit(docs[:QUERIES] + 0.1 * rng.normal(size=(QUERIES, DIMS)))
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(QUERIES)}
    return docs, queries, qrels, rng


def stats(docs, run, qrels, model="minilm", corpus="c1", version=None):
    return snapshot_stats(docs, run, model=model, version=version, corpus=corpus, metrics=evaluate_run(qrels, run),
                          qrels=qrels)


def leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def test_every_numeric_figure_of_a_summary_can_be_watched_by_name(corpus):
    """The config's list of drift statistics (publish.gate.max_drift, monitor.max_drift) is the summary's figures."""
    from pipeline.config import DRIFT_STATISTICS

    docs, queries, qrels, _ = corpus
    summary = stats(docs, search(docs, queries), qrels)
    numeric = {k for k, v in leaves({s: summary[s] for s in ("scores", "relevance", "vectors")}).items()
               if isinstance(v, int | float) and not k.startswith("scores.histograms")}
    assert sorted(DRIFT_STATISTICS) == sorted(numeric)


def test_identical_snapshots_have_zero_deltas_and_full_overlap(corpus):
    docs, queries, qrels, _ = corpus
    run = search(docs, queries)
    blue, green = stats(docs, run, qrels), stats(docs.copy(), dict(run), qrels)
    result = compare(blue, green, runs=(run, run))
    deltas = leaves(result["delta"])
    assert {"vectors.centroid_norm", "scores.top1.mean", "metrics.ndcg@10", "relevance.best_margin.mean"} <= set(deltas)
    assert all(v == 0 for v in deltas.values())
    assert result["topk_overlap"] | {"k": 0, "queries": 0} == {"k": 0, "queries": 0, "mean": 1.0, "p10": 1.0,
                                                               "p50": 1.0, "p90": 1.0, "identical": 1.0,
                                                               "same_top1": 1.0}
    assert result["notes"] == []
    assert json.loads(json.dumps(result)) == result  # plain JSON, fit for a manifest


def test_rotation_keeps_the_geometry_and_noise_spreads_it(corpus):
    docs, queries, qrels, rng = corpus
    rotation = np.linalg.qr(rng.normal(size=(DIMS, DIMS)))[0]
    base, rotated = vector_stats(docs), vector_stats(docs @ rotation)
    for key in ("centroid_norm", "total_variance", "isotropy"):
        assert rotated[key] == pytest.approx(base[key], abs=1e-5)  # a new basis, same geometry
    assert rotated["pairwise_cosine"]["mean"] == pytest.approx(base["pairwise_cosine"]["mean"], abs=1e-5)

    noised = unit(docs + 0.05 * rng.normal(size=docs.shape))
    blue_run, green_run = search(docs, queries), search(noised, queries)
    result = compare(stats(docs, blue_run, qrels), stats(noised, green_run, qrels), runs=(blue_run, green_run))
    d = result["delta"]
    assert d["vectors"]["centroid_norm"] < 0 and d["vectors"]["pairwise_cosine"]["mean"] < 0
    assert d["vectors"]["isotropy"] > 0
    assert d["scores"]["top1"]["mean"] < 0  # the queries' own docs moved away from them
    assert d["relevance"]["best_margin"]["mean"] < 0 and d["metrics"]["ndcg@10"] < 0
    assert 0.0 < result["topk_overlap"]["mean"] < 1.0
    assert result["topk_overlap"]["same_top1"] > result["topk_overlap"]["identical"]
    more_noise = unit(docs + 0.2 * rng.normal(size=docs.shape))
    tops = (top_k(run, 10) for run in (blue_run, search(more_noise, queries)))
    assert topk_overlap(*([list(docs) for docs in top.values()] for top in tops)) < result["topk_overlap"]["mean"]


def test_snapshots_of_different_dims_compare_by_their_summaries(corpus):
    docs, queries, qrels, rng = corpus
    projection = rng.normal(size=(DIMS, 48))  # a "static" 48-d model of the same docs
    small_docs, small_queries = unit(docs @ projection), unit(queries @ projection)
    blue_run, green_run = search(docs, queries), search(small_docs, small_queries)
    blue = stats(docs, blue_run, qrels, version="v1")
    green = stats(small_docs, green_run, qrels, model="static-48", version="v2")
    result = compare(blue, green, runs=(blue_run, green_run))
    assert result["green"]["vectors"]["dims"] == 48 and result["delta"]["vectors"]["dims"] == -16
    assert any("dims differ (64 vs 48)" in note for note in result["notes"])
    assert any("different models" in note for note in result["notes"])
    assert 0.0 < result["topk_overlap"]["mean"] <= 1.0

    other_corpus = compare(blue, {**green, "corpus": "c2"}, runs=(blue_run, green_run))
    assert "topk_overlap" not in other_corpus  # ids of different corpora mean different docs
    assert any("overlap skipped: different corpora" in note for note in other_corpus["notes"])


def test_isotropy_reads_the_same_across_dims_and_sample_sizes():
    rng = np.random.default_rng(3)
    for dims in (32, 256):
        even = unit(rng.normal(size=(3000, dims)))
        assert vector_stats(even, sample=500)["isotropy"] > 0.95  # uncorrected, 256-d at 500 rows reads ~0.66
        low_rank = unit(rng.normal(size=(3000, 4)) @ rng.normal(size=(4, dims)) + 0.05 * rng.normal(size=(3000, dims)))
        assert vector_stats(low_rank)["isotropy"] < 4 / dims * 1.5


def test_vector_stats_are_seeded():
    x = unit(np.random.default_rng(0).normal(size=(600, 16)) + 0.5)
    assert vector_stats(x, sample=200, seed=1) == vector_stats(x, sample=200, seed=1)
    assert vector_stats(x, sample=200, seed=1)["pairwise_cosine"] != \
        vector_stats(x, sample=200, seed=2)["pairwise_cosine"]  # the seed picks the sample
    full = vector_stats(x, sample=10_000)
    assert full["sample"] == 600 and full["mean_norm"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 rows"):
        vector_stats(x[:1])


def test_figures_summed_part_by_part_stand_in_for_a_pass_and_only_sampled_rows_are_read():
    """The index stage sums each shard's vectors (VectorMoments) and evaluation adds them up: the summary is the
    one a pass over every row gives, and the rows outside the sample are never read (NaN there changes nothing)."""
    x = unit(np.random.default_rng(4).normal(size=(5000, 24)) + 0.3)
    parts = [VectorMoments.of(x[a:b]) for a, b in ((0, 1200), (1200, 1201), (1201, 5000))]
    summed = (parts[0] + parts[1] + parts[2]).geometry()
    assert summed == VectorMoments.of(x).geometry()
    assert vector_stats(x, sample=300, geometry=summed) == vector_stats(x, sample=300)
    sampled = np.sort(np.random.default_rng(0).choice(len(x), size=300, replace=False))  # vector_stats's draw
    unread = np.full_like(x, np.nan)
    unread[sampled] = x[sampled]
    assert vector_stats(unread, sample=300, geometry=summed) == vector_stats(x, sample=300)
    assert np.isnan(vector_stats(unread, sample=300)["mean_norm"])  # without the sums, every row is read
    with pytest.raises(ValueError, match=r"summed over 5000 x 24 vectors given for 4999 x 24"):
        vector_stats(x[1:], geometry=summed)


def test_a_recorded_summary_gives_back_its_figures_over_every_row():
    x = unit(np.random.default_rng(5).normal(size=(400, 8)))
    recorded = json.loads(json.dumps(vector_stats(x)))  # as a manifest keeps it
    geometry = Geometry.of_summary(recorded)
    assert geometry == VectorMoments.of(x).geometry() and vector_stats(x, geometry=geometry) == recorded
    assert Geometry.of_summary({k: v for k, v in recorded.items() if k != "total_variance"}) is None  # an older one
    assert Geometry.of_summary(None) is None


def test_score_stats_read_top1_and_rank10_and_ignore_padding():
    scores = np.tile(np.linspace(0.9, 0.0, 10), (3, 1))  # ranks 1..10: 0.9, 0.8, ..., 0.0
    scores[1] += 0.05
    scores[2] = scores[2][::-1]  # any order in: sorted best first
    scores = np.hstack([scores, np.full((3, 1), -3.4e38)])  # FAISS pads missing results with -FLT_MAX
    out = score_stats(scores)
    assert out["top1"]["mean"] == pytest.approx((0.9 + 0.95 + 0.9) / 3)
    assert out["at10"]["p50"] == pytest.approx(0.0) and out["at10"]["p90"] == pytest.approx(0.04)
    assert out["top1_minus_at10"]["mean"] == pytest.approx(0.9)
    assert sum(out["histograms"]["top1"]) == 3

    short = score_stats(np.array([[0.7, 0.6, np.nan], [0.5, np.nan, np.nan]]))
    assert short["top1"]["mean"] == pytest.approx(0.6) and "at10" not in short


def test_topk_overlap_counts_shared_results():
    assert topk_overlap([["a", "b", "c"], ["x", "y", "z"]], [["c", "b", "a"], ["x", "q", "r"]], k=3) == \
        pytest.approx((1 + 1 / 3) / 2)
    assert topk_overlap([[1, 2, -1]], [[2, 1, -1]], k=3) == 1.0  # a short list (tiny corpus) can be identical
    assert topk_overlap([list("abcdef")], [list("abcxyz")], k=3) == 1.0  # only the top k count
    with pytest.raises(ValueError, match="same queries"):
        topk_overlap([["a"]], [["a"], ["b"]])


def test_relevance_gap_explains_a_ranking_failure():
    qrels = {"q1": {"r1": 1, "n0": 0}, "q2": {"r2": 2}, "q3": {"r3": 1}}
    good = {"q1": {"r1": 0.9, "n1": 0.5, "n2": 0.4}, "q2": {"r2": 0.8, "n1": 0.6}, "q3": {"n1": 0.7}}
    bad = {"q1": {"r1": 0.6, "n1": 0.7, "n2": 0.4}, "q2": {"r2": 0.8, "n1": 0.6}, "q3": {"n1": 0.7}}
    g, b = relevance_gap(good, qrels), relevance_gap(bad, qrels)
    assert g["queries"] == 2 and g["relevant_not_retrieved"] == 1  # q3 never retrieved its relevant doc
    assert g["relevant_first"] == 1.0 and b["relevant_first"] == 0.5
    assert g["best_margin"]["mean"] == pytest.approx((0.4 + 0.2) / 2)
    assert b["best_margin"]["mean"] == pytest.approx((-0.1 + 0.2) / 2)
    assert b["gap"]["mean"] < g["gap"]["mean"]


def test_thresholds_flag_a_drop_and_pass_a_stable_snapshot():
    baseline = {"recall@10": 0.78, "ndcg@10": 0.64508, "scores": {"top1": {"mean": 0.71}}}
    allowed = {"recall@10": 0.05, "ndcg@10": 0.02, "scores.top1.mean": 0.1}
    assert check_thresholds({"recall@10": 0.77, "ndcg@10": 0.65, "scores": {"top1": {"mean": 0.7}}},
                            baseline, allowed) == []
    assert check_thresholds({"recall@10": 0.73, "ndcg@10": 0.62508, "scores": {"top1": {"mean": 0.61}}},
                            baseline, allowed) == []  # exactly the allowed drop passes (no float noise)
    assert check_thresholds({"recall@10": 0.61, "ndcg@10": 0.64, "scores": {"top1": {"mean": 0.5}}},
                            baseline, allowed) == [
        "recall@10 dropped from 0.78 to 0.61 (-0.17 > allowed 0.05)",
        "scores.top1.mean dropped from 0.71 to 0.5 (-0.21 > allowed 0.1)",
    ]
    assert check_thresholds({"ndcg@10": 0.7}, {"ndcg@10": 0.6}, {"ndcg@10": 0.0, "mrr@10": 0.01}) == [
        "mrr@10 has no baseline value to compare with"]
    assert check_thresholds({}, {"ndcg@10": 0.6}, {"ndcg@10": 0.01}) == [
        "ndcg@10 is missing from the current metrics (baseline 0.6)"]
    with pytest.raises(ValueError, match=">= 0"):
        check_thresholds({}, {}, {"ndcg@10": -0.1})


def test_markdown_tables_blue_green_and_delta(corpus):
    docs, queries, qrels, rng = corpus
    noised = unit(docs + 0.05 * rng.normal(size=docs.shape))
    blue_run, green_run = search(docs, queries), search(noised, queries)
    blue = stats(docs, blue_run, qrels, version="20260101T000000Z-aaaaaa")
    green = stats(noised, green_run, qrels, model="bge-small", version="20260102T000000Z-bbbbbb")
    text = drift_markdown(compare(blue, green, runs=(blue_run, green_run)))
    assert text.startswith("# Drift: blue `minilm` (20260101T000000Z-aaaaaa) vs green `bge-small`")
    b, g = blue["metrics"]["ndcg@10"], green["metrics"]["ndcg@10"]
    assert f"| ndcg@10 | {b:.4g} | {g:.4g} | {g - b:+.4g} |" in text
    assert "| dims | 64 | 64 | +0 |" in text and "Top-10 overlap over 80 golden queries" in text
    assert "histograms" not in text and "different models" in text


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def pixels_of(data: bytes, rgb: tuple[int, int, int]) -> int:
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return int((image == rgb).all(axis=2).sum())


def test_quality_vs_bytes_png_draws_every_mode():
    import matplotlib.pyplot as plt

    index = {"metric": "inner_product", "variants": {
        "exact": {"kind": "exact", "bytes_per_vector": 1536, "quality": {"exact": {"ndcg@10": 0.645}}},
        "binary": {"kind": "binary", "bytes_per_vector": 48, "quality": {
            "binary": {"ndcg@10": 0.623}, "binary+hamming": {"ndcg@10": 0.586}, "binary+rescore": {"ndcg@10": 0.645}}},
        "int8": {"kind": "int8", "bytes_per_vector": 384, "quality": {}},  # not evaluated: skipped
    }}
    data = quality_vs_bytes_png(index, title="MiniLM on SciFact")
    width, height = png_size(data)
    assert width >= 600 and height >= 400
    assert pixels_of(data, (23, 190, 207)) > 50 and pixels_of(data, (127, 127, 127)) > 20  # binary, exact points
    # the "index" section or its "variants" mapping, rendered deterministically
    assert quality_vs_bytes_png(index["variants"], title="MiniLM on SciFact") == data
    with pytest.raises(ValueError, match="no variant"):
        quality_vs_bytes_png({"variants": {"int8": index["variants"]["int8"]}})
    assert plt.get_fignums() == []


def test_blue_green_png_draws_both_snapshots(corpus):
    import matplotlib.pyplot as plt

    docs, queries, qrels, rng = corpus
    projection = rng.normal(size=(DIMS, 48))
    small = unit(docs @ projection)
    blue = stats(docs, search(docs, queries), qrels)
    green = stats(small, search(small, unit(queries @ projection)), qrels, model="static-48")
    data = blue_green_png(blue, green)
    width, height = png_size(data)
    assert width > height >= 400
    assert pixels_of(data, (31, 119, 180)) > 500 and pixels_of(data, (44, 160, 44)) > 500  # tab:blue, tab:green bars
    sparse = blue_green_png({"model": "a"}, {"model": "b"})  # nothing measured yet still renders
    assert png_size(sparse)[0] == width
    assert plt.get_fignums() == []


def test_quality_vs_bytes_png_places_bm25_per_chunk_and_hybrid_at_dense_plus_bm25_bytes():
    from pipeline.reports.plots import _point

    variants = {"exact": {"kind": "exact", "bytes_per_vector": 1536, "quality": {"exact": {"ndcg@10": 0.645}}},
                "binary": {"kind": "binary", "bytes_per_vector": 48, "quality": {}},
                "bm25": {"kind": "bm25", "bytes_per_vector": 140, "quality": {
                    "bm25": {"ndcg@10": 0.679}, "hybrid:exact": {"ndcg@10": 0.733},
                    "hybrid:binary+rescore": {"ndcg@10": 0.732}, "hybrid-rrf:exact": {"ndcg@10": 0.714}}}}
    v = variants["bm25"]
    assert _point("bm25", "bm25", v, variants) == (140, "bm25", "D")
    assert _point("hybrid:exact", "bm25", v, variants) == (1676, "exact", "*")
    assert _point("hybrid:binary+rescore", "bm25", v, variants) == (188, "binary", "*")
    assert _point("hybrid-rrf:exact", "bm25", v, variants) == (1676, "exact", "P")
    data = quality_vs_bytes_png(variants, title="hybrid")
    assert pixels_of(data, (44, 160, 44)) > 20  # tab:green: the bm25 point


def test_migration_markdown_sets_blue_and_green_side_by_side_on_hybrid_too():
    from pipeline.config import GateConfig
    from pipeline.jobs.migration import hybrid_mode
    from pipeline.reports.markdown import migration_markdown

    def side(version: str, exact: float, hybrid: float) -> dict:
        return {"version": version, "model": "m", "dims": 384,
                "modes": {"exact": {"ndcg@10": exact}, "bm25": {"ndcg@10": 0.6}, "hybrid:exact": {"ndcg@10": hybrid}}}

    blue, green = side("b1", 0.60, 0.70), side("g1", 0.64, 0.72)
    measured = [type("M", (), {"modes": s["modes"]})() for s in (blue, green)]
    assert hybrid_mode(GateConfig(), *measured) == "hybrid:exact"
    assert hybrid_mode(GateConfig(mode="hybrid:exact"), *measured) is None  # the gate's own table shows it
    report = {"index_name": "i", "alias": "live", "blue": blue, "green": green, "hybrid_mode": "hybrid:exact",
              "promotion": {"promoted": True}, "gate": GateConfig().model_dump(),
              "golden_set": {"queries": "q", "judged_queries": 3},
              "drift": {"blue": {}, "green": {}, "delta": {}, "notes": []}}
    md = migration_markdown(report)
    assert "## Golden-set metrics, mode `exact`" in md and "## Golden-set metrics, mode `hybrid:exact`" in md
    assert "| ndcg@10 | 0.7000 | 0.7200 | +0.0200 |" in md


def test_a_snapshot_without_vectors_to_read_back_is_summarised_by_its_scores(corpus):
    """An IVF-PQ or binary index alone keeps no vectors to read back (and a one-chunk corpus has no pairs): the
    monitor and a migration still measure it, its summary without the vectors section, which a drift check of one
    of those statistics then reports missing."""
    from pipeline.snapshots.gate import check_drift

    docs, queries, qrels, _ = corpus
    run = search(docs, queries)
    for vectors in (None, docs[:1]):
        summary = snapshot_stats(vectors, run, model="minilm", qrels=qrels)
        assert "vectors" not in summary and summary["scores"]["top1"]["mean"] > 0 and summary["relevance"]
    [check] = check_drift(stats(docs, run, qrels), snapshot_stats(None, run, model="minilm", qrels=qrels),
                          {"vectors.isotropy": 0.05})
    assert not check.ok and check.current is None
