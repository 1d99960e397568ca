"""int8 / binary / Matryoshka representations, rescoring, and snapshots carrying several variants."""

import dataclasses
import io

import numpy as np
import polars as pl
import pytest

from pipeline.config import IndexConfig
from pipeline.config_loader import parse_config
from pipeline.errors import IndexBuildError, SnapshotError
from pipeline.index.build_variants import build_variant, build_variants
from pipeline.index.faiss_ops import to_bytes
from pipeline.index.representations import Int8Ranges, asymmetric_binary_scores, matryoshka
from pipeline.index.variants import Variant, VariantSpec
from pipeline.jobs.build import describe_variants
from pipeline.quality.search import Searcher
from pipeline.snapshots.publishing import publish
from pipeline.snapshots.snapshot import Snapshot
from pipeline.storage.backend import Storage
from pipeline.storage.tables import parquet_bytes

DIMS = 384
ALL = ["exact", "fp16", "ivfpq", "int8", "int8-ivf", "binary", "binary-ivf", "exact@64", "binary@128"]


def corpus(n: int = 3000, seed: int = 0) -> np.ndarray:
    """Unit vectors in n/10 tight clusters: each point's nearest neighbours are mostly its cluster mates."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n // 10, DIMS))
    x = (centers[rng.integers(0, n // 10, n)] + 0.35 * rng.standard_normal((n, DIMS))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors():
    return corpus()


@dataclasses.dataclass(frozen=True)
class Built:
    indexes: dict[str, object]
    params: dict  # the manifest's "index" section
    fp16: np.ndarray | None


@pytest.fixture(scope="module")
def built(vectors):
    cfg = parse_config({"index_name": "t", "corpus": {"source": "x"}, "index": {"variants": ALL}})
    indexes, variants = build_variants(cfg.index, vectors, seed=0)
    params = {"metric": "inner_product", "variants": variants,
              "rescore": {"file": "vectors.f16.npy", "dtype": "float16", "factor": 10}}
    return Built(indexes, params, vectors.astype(np.float16))


def snapshot_files(built: Built, ids: pl.DataFrame) -> dict[str, bytes]:
    files = {"ids.parquet": parquet_bytes(ids), "vectors.f16.npy": npy_bytes(built.fp16)}
    return files | {built.params["variants"][n]["file"]: to_bytes(ix) for n, ix in built.indexes.items()}


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def ids_for(n: int) -> pl.DataFrame:
    return pl.DataFrame({"doc_id": [f"d{i}" for i in range(n)], "title": [f"T{i}" for i in range(n)],
                         "chunk_id": [f"d{i}#0" for i in range(n)], "start": [0] * n, "end": [1] * n})


def test_int8_round_trip_is_within_one_step_of_each_dim(vectors, built):
    ranges = Int8Ranges.from_dict(built.params["variants"]["int8"]["int8_ranges"], "test")
    inside = np.clip(vectors, ranges.vmin, ranges.vmin + ranges.vdiff)  # values outside the sample's range clip
    error = np.abs(ranges.round_trip(inside) - inside)
    assert (error <= ranges.vdiff / 255 + 1e-6).all()
    assert np.allclose(ranges.vmin, vectors.min(axis=0), atol=0.05)  # per-dim min over the seeded sample


def test_binary_index_holds_numpy_packbits_of_the_signs(vectors, built):
    codes = Variant.load("binary", built.indexes["binary"], built.params["variants"]["binary"]).state
    assert np.array_equal(codes, np.packbits(vectors > 0, axis=1)) and codes.shape == (len(vectors), DIMS // 8)
    q = vectors[0]
    scores = asymmetric_binary_scores(q[None], codes[None, :50])[0]
    assert np.allclose(scores, np.where(vectors[:50] > 0, 1, -1) @ q, atol=1e-4)


def test_matryoshka_prefixes_are_unit_norm_prefix_directions(vectors):
    for dims in (64, 128, 256):
        p = matryoshka(vectors, dims)
        assert p.shape == (len(vectors), dims) and np.allclose(np.linalg.norm(p, axis=1), 1, atol=1e-5)
        assert np.allclose(p * np.linalg.norm(vectors[:, :dims], axis=1, keepdims=True), vectors[:, :dims], atol=1e-5)
    with pytest.raises(IndexBuildError, match="prefix of 512 dims asked of 384-dim"):
        matryoshka(vectors, 512)


def test_queries_are_quantised_with_the_recorded_ranges(vectors, built):
    params = built.params["variants"]["int8"]
    variant = Variant.load("int8", built.indexes["int8"], params)
    shifted = Int8Ranges(variant.state.vmin + 0.02, variant.state.vdiff)  # an int8 variant's state: its ranges
    q = vectors[:5]
    same, _ = variant.candidates(q, 10)
    other, _ = dataclasses.replace(variant, state=shifted).candidates(q, 10)
    assert not np.allclose(same, other)  # the ranges are applied to queries, not just to the index
    with pytest.raises(SnapshotError, match="int8 ranges are missing"):
        Variant.load("int8", built.indexes["int8"], {k: v for k, v in params.items() if k != "int8_ranges"})
    tampered = {**params, "int8_ranges": shifted.to_dict()}
    with pytest.raises(SnapshotError, match="ranges differ from the index's own"):
        Variant.load("int8", built.indexes["int8"], tampered)


def recall_at_10(searcher: Searcher, queries: np.ndarray, mode: str) -> float:
    truth = searcher.search_vectors(queries, 10, "exact")
    got = searcher.search_vectors(queries, 10, mode)
    for hits in got:
        assert len(hits) == 10  # never fewer than k results
    overlap = [len({h.doc_id for h in a} & {h.doc_id for h in b}) / 10 for a, b in zip(got, truth, strict=True)]
    return float(np.mean(overlap))


def test_rescoring_returns_k_results_and_improves_recall(vectors, built, encoder):
    searcher = Searcher.build(built.indexes, built.params, ids_for(len(vectors)), encoder, 1, built.fp16)
    rng = np.random.default_rng(1)  # unseen queries near the corpus' clusters
    queries = vectors[rng.choice(len(vectors), 300, replace=False)] + 0.1 * rng.standard_normal((300, DIMS))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    for variant in ("ivfpq", "int8", "binary", "binary-ivf", "exact@64", "binary@128"):
        plain = recall_at_10(searcher, queries, variant)
        rescored = recall_at_10(searcher, queries, f"{variant}+rescore")
        assert rescored > plain, (variant, plain, rescored)
        if variant in ("ivfpq", "int8", "binary"):  # flat candidates (or 1/8-probed IVF) re-scored in full
            assert rescored > 0.95, (variant, rescored)
    # scoring the float query against the sign bits beats symmetric Hamming
    assert recall_at_10(searcher, queries, "binary") > recall_at_10(searcher, queries, "binary+hamming")


def test_a_snapshot_with_every_variant_loads_and_searches_each(tmp_path, vectors, built, encoder):
    ids = ids_for(len(vectors))
    files = snapshot_files(built, ids)
    index = describe_variants(built.params, {name: {"bytes": len(data)} for name, data in files.items()},
                              {"modes": {"int8": {"ndcg@10": 0.5}}})
    manifest = {"index": index, "counts": {"max_chunks_per_doc": 1},
                "model": encoder.card.to_dict() | {"fingerprint": encoder.card.fingerprint}}
    snap = Snapshot.open(publish(Storage(str(tmp_path)), "t", "v1", files, manifest))
    assert sorted(snap.variants) == sorted(ALL) and snap.variant_params("int8")["quality"] == {"int8": {"ndcg@10": 0.5}}
    sizes = {v: snap.variant_params(v)["bytes_per_vector"] for v in ALL}
    assert sizes["exact"] == 4 * DIMS and sizes["fp16"] == 2 * DIMS and sizes["int8"] == DIMS
    assert sizes["binary"] == DIMS // 8
    assert sizes["exact@64"] == 256 and sizes["binary@128"] == 16
    searcher = Searcher.from_snapshot(snap, encoder)
    for mode in searcher.modes():
        hits = searcher.search_vectors(vectors[:3], 5, mode)
        assert [len(h) for h in hits] == [5, 5, 5], mode
        assert hits[0][0].doc_id == "d0", mode  # a stored vector finds itself first


def test_mismatched_dims_and_missing_variants_are_clear_errors(vectors, built, encoder):
    with pytest.raises(IndexBuildError, match="'exact@512' asks for a 512-dim prefix of the model's 384-dim vectors"):
        build_variant(VariantSpec.parse("exact@512"), vectors, IndexConfig(), seed=0)
    with pytest.raises(IndexBuildError, match="expected one of"):
        VariantSpec.parse("pq")
    # checked against the model's dims before anything is read, not by FAISS after every document is embedded
    from pipeline.index.build_variants import check_variant_dims

    with pytest.raises(IndexBuildError, match=r"'binary@12' packs 12 dims' signs 8 to a byte: expected dims that are "
                                              r"a multiple of 8"):
        check_variant_dims(IndexConfig(variants=["exact", "binary@12"]), 384, "m")
    with pytest.raises(IndexBuildError, match=r"index\.ivf\.pq_m \(8\) must divide 'ivfpq@12''s 12 dims"):
        check_variant_dims(IndexConfig(variants=["ivfpq@12"], ivf={"pq_m": 8}), 384, "m")
    check_variant_dims(IndexConfig(variants=["binary@64", "ivfpq@64"], ivf={"pq_m": 8}), 384, "m")
    searcher = Searcher.build(built.indexes, built.params, ids_for(len(vectors)), encoder, 1, None)
    with pytest.raises(SnapshotError, match=r"no search mode 'int4'; available: \["):
        searcher.search_vectors(vectors[:1], 5, "int4")
    with pytest.raises(SnapshotError, match="stores no fp16 vectors"):
        searcher.search_vectors(vectors[:1], 5, "int8+rescore")
    with pytest.raises(SnapshotError, match="binary variants only"):
        searcher.search_vectors(vectors[:1], 5, "int8+hamming")
    half = Built({"exact": built.indexes["exact"]}, built.params, None)
    with pytest.raises(SnapshotError, match="id table has 10"):
        Searcher.build(half.indexes, half.params, ids_for(10), encoder, 1, None)
