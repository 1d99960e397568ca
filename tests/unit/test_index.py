import faiss
import numpy as np
import pytest

from pipeline.config import IvfConfig
from pipeline.errors import IndexBuildError
from pipeline.index.faiss_ops import build_exact, build_ivfpq, from_bytes, to_bytes
from pipeline.index.plan import plan_ivfpq, plan_rescore_factor


@pytest.mark.parametrize(
    ("n", "nlist", "nbits", "nprobe"),
    [(2, 1, 1, 1), (200, 5, 4, 5), (500, 12, 5, 12), (5183, 132, 8, 66), (1_000_000, 4096, 8, 64),
     (100_000_000, 5128, 8, 80)],
)
def test_plan_clamps_for_small_and_large_n(n, nlist, nbits, nprobe):
    plan = plan_ivfpq(n, 384, IvfConfig())
    assert (plan.nlist, plan.nbits, plan.nprobe) == (nlist, nbits, nprobe)
    assert plan.pq_m == 48 and 384 % plan.pq_m == 0 and plan.factory.endswith("np")
    assert plan.nlist * 39 <= max(plan.train_points, 39) and 2**plan.nbits * 10 <= max(plan.train_points, 20)
    assert plan.train_points == min(n, 200_000)  # FAISS gets >= 39 points per list; the sample stays in budget


@pytest.mark.parametrize("dims", [256, 384, 768])
@pytest.mark.parametrize("n", [1_000, 2_047, 10_000, 99_999, 100_000, 1_000_000, 7_800_000, 10_000_000,
                               100_000_000])
@pytest.mark.parametrize("budget", [50_000, 200_000, 1_000_000])
def test_training_sample_covers_every_list_within_the_budget(n, dims, budget):
    plan = plan_ivfpq(n, dims, IvfConfig(max_train_points=budget))
    assert plan.train_points >= 39 * plan.nlist or plan.train_points == n  # no FAISS "too few points" warning
    assert plan.train_points == min(n, budget)  # the sample is the budget (points x dims x 4 bytes) at most


def test_an_explicit_nlist_beyond_the_training_budget_is_refused_when_the_config_loads():
    from pipeline.config_loader import parse_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"index.ivf.*nlist \(16384\) needs 638,976 training points.*200,000"):
        parse_config({"index_name": "t", "corpus": {"source": "c.jsonl"}, "index": {"ivf": {"nlist": 16_384}}})
    plan = plan_ivfpq(10_000_000, 384, IvfConfig(nlist=16_384, max_train_points=640_000))
    assert plan.train_points == 640_000 and plan.nlist == 16_384


def test_a_smaller_training_budget_caps_the_lists():
    plan = plan_ivfpq(1_000_000, 384, IvfConfig(max_train_points=50_000))
    assert plan.train_points == 50_000 and plan.nlist == 1282 and plan.nlist * 39 <= 50_000


def test_plan_respects_explicit_values_and_rejects_impossible_ones():
    plan = plan_ivfpq(10_000, 768, IvfConfig(nlist=64, pq_m=96, nbits=6, nprobe=4))
    assert plan.factory == "IVF64,PQ96x6np" and plan.nprobe == 4 and plan.code_bytes == 72
    assert plan_ivfpq(10_000, 256, IvfConfig()).pq_m == 32
    with pytest.raises(IndexBuildError, match=r"pq_m \(50\) must divide the vector dims \(384\)"):
        plan_ivfpq(1000, 384, IvfConfig(pq_m=50))
    with pytest.raises(IndexBuildError, match="at least 2 vectors"):
        plan_ivfpq(1, 384, IvfConfig())


def clustered(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    # n/10 tight clusters of ~10 points: a point's 10 nearest neighbours are mostly its cluster mates
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n // 10, d))
    x = (centers[rng.integers(0, n // 10, n)] + 0.15 * rng.standard_normal((n, d))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ivfpq_finds_most_exact_neighbours_and_round_trips():
    x = clustered(4000)
    exact, ivf = build_exact(x), build_ivfpq(x, plan_ivfpq(len(x), 64, IvfConfig()), seed=0)
    _, truth = exact.search(x[:200], 10)
    _, approx = from_bytes(to_bytes(ivf)).search(x[:200], 10)
    recall = np.mean([len(set(a) & set(t)) / 10 for a, t in zip(approx, truth, strict=True)])
    assert recall > 0.6  # an 8-byte code for 64 dims is coarse, but far above chance (10/4000)
    assert faiss.extract_index_ivf(from_bytes(to_bytes(ivf))).nprobe == plan_ivfpq(4000, 64, IvfConfig()).nprobe


def test_same_vectors_and_seed_give_identical_index_bytes():
    x = clustered(1500)
    plan = plan_ivfpq(len(x), 64, IvfConfig())
    assert to_bytes(build_ivfpq(x, plan, seed=3)) == to_bytes(build_ivfpq(x, plan, seed=3))


def test_bad_vectors_rejected():
    with pytest.raises(IndexBuildError, match="NaN"):
        build_exact(np.full((3, 4), np.nan, dtype=np.float32))
    with pytest.raises(IndexBuildError, match="float32"):
        build_exact(np.zeros((3, 4), dtype=np.float64))


def test_gpu_training_branch_uses_the_assigner_and_changes_nothing_else(monkeypatch):
    """The GPU branch of train_ivfpq, run on CPU: a CPU flat index stands in for the GPU one, so the
    coarse k-means only moves to another (identical) assigner and the bytes must not change."""
    from pipeline.index.faiss_ops import train_ivfpq

    x = clustered(3000)
    plan = plan_ivfpq(len(x), 64, IvfConfig())
    cpu = to_bytes(build_ivfpq(x, plan, seed=0))
    assigners = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: assigners.append(index) or index)
    trained = train_ivfpq(x, plan, seed=0)
    assert len(assigners) == 1 and assigners[0].ntotal == plan.nlist  # k-means assigned through it
    assert faiss.extract_index_ivf(trained).clustering_index is None  # no pointer left to a freed index
    trained.add(x)
    assert to_bytes(trained) == cpu


def test_gpu_training_asked_for_without_a_gpu_is_refused_and_cpu_training_can_be_forced(monkeypatch):
    from pipeline.index.faiss_ops import train_ivfpq

    x = clustered(3000)
    plan = plan_ivfpq(len(x), 64, IvfConfig())
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    with pytest.raises(IndexBuildError, match="faiss sees no GPU"):
        train_ivfpq(x, plan, seed=0, use_gpu=True)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: pytest.fail("moved to a GPU"))
    assert train_ivfpq(x, plan, seed=0, use_gpu=False).is_trained


@pytest.mark.parametrize(("n", "factor"), [(500, 10), (1_000_000, 10), (1_000_001, 20), (4_000_000, 20),
                                           (10_000_000, 40), (100_000_000, 100)])
def test_rescoring_depth_grows_with_the_square_root_of_the_corpus_past_1m(n, factor):
    # 10M: k x 10 candidates gave Recall@10 0.9025 against 0.9689 at 1M; k x 40 gave 0.9805 (docs/BENCHMARKS.md)
    assert plan_rescore_factor(n) == factor


def _topics(centers: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (centers[rng.integers(0, len(centers), n)] + 0.45 * rng.standard_normal((n, centers.shape[1])))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall_at_10(index, x: np.ndarray) -> float:
    _, truth = build_exact(x).search(x[:300], 10)
    _, found = index.search(x[:300], 10)
    return float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(found, truth, strict=True)]))


def test_live_training_is_reused_while_it_fits_and_retrained_once_the_corpus_moved_to_new_topics():
    from pipeline.config import IndexConfig
    from pipeline.index.build_variants import build_variant, train_variants
    from pipeline.index.training import Training
    from pipeline.index.variants import VariantSpec

    rng = np.random.default_rng(0)
    # topics that weigh other dimensions: codebooks trained on the old ones have few codes where the new ones vary
    weights = np.where(np.arange(64) < 32, 1.0, 0.2)
    old_topics, new_topics = rng.standard_normal((400, 64)) * weights, rng.standard_normal((400, 64)) * weights[::-1]
    live = _topics(old_topics, 4000, seed=1)
    cfg = IndexConfig(variants=["ivfpq"])
    [trained] = train_variants(cfg, len(live), 64, live, seed=0)
    assert trained.params["reconstruction_error"] > 0  # what later builds compare their fit with
    training = Training({"ivfpq": (trained.empty, {**trained.params, "trained_in": "v1"})}, why="same model")
    spec = VariantSpec.parse("ivfpq")

    # A night that rewrote a tenth of the documents on the same topics: the codebooks still fit, nothing is trained
    edited = np.concatenate([live[400:], _topics(old_topics, 400, seed=2)])
    _, params = build_variant(spec, edited, cfg, seed=0, training=training)
    assert params["trained_in"] == "v1" and params["training"].startswith("reused from version v1 (reconstruction")
    assert params["reconstruction_error_now"] <= 1.15 * params["reconstruction_error"]
    # a kept training searches as this build plans: an nprobe set since then applies
    index, params = build_variant(spec, edited, IndexConfig(variants=["ivfpq"], ivf={"nprobe": 7}), seed=0,
                                  training=training)
    assert params["trained_in"] == "v1" and params["nprobe"] == faiss.extract_index_ivf(index).nprobe == 7

    # The corpus moved to new topics: the old lists and codes lose neighbours that a fresh training finds
    moved = _topics(new_topics, 4000, seed=3)
    reused, params = build_variant(spec, moved, IndexConfig(variants=["ivfpq"], ivf={"max_reuse_error_ratio": 1e9}),
                                   seed=0, training=training)
    assert params["trained_in"] == "v1"  # a limit set out of reach keeps the old training, as before
    retrained, params = build_variant(spec, moved, cfg, seed=0, training=training)
    assert "trained_in" not in params
    assert "they fit version v1's training" in params["training"] and "max_reuse_error_ratio 1.15" in params["training"]
    assert _recall_at_10(retrained, moved) > _recall_at_10(reused, moved) + 0.1

    # A training recorded by an older embedpipe has no error to compare with: trained again, saying so
    older = {k: v for k, v in training.variants["ivfpq"][1].items() if k != "reconstruction_error"}
    _, params = build_variant(spec, edited, cfg, seed=0, training=Training({"ivfpq": (trained.empty, older)}))
    assert "trained_in" not in params and "recorded no reconstruction error" in params["training"]


def test_int8_ranges_are_kept_while_they_fit_and_trained_again_once_the_vectors_leave_them():
    """int8's training is its per-dimension ranges (in the manifest): kept from live while this build's vectors fit
    them as well as its own did (then an incremental build copies the kept chunks' codes), trained again once the
    vectors spread beyond them, where the kept ranges would clip every new vector."""
    from pipeline.config import IndexConfig
    from pipeline.index.build_variants import build_variant, train_variants
    from pipeline.index.training import Training
    from pipeline.index.variants import Int8, VariantSpec

    rng = np.random.default_rng(0)
    topics = rng.standard_normal((400, 64))
    live = _topics(topics, 4000, seed=1)
    cfg = IndexConfig(variants=["int8"])
    [trained] = train_variants(cfg, len(live), 64, live, seed=0)
    assert Int8.trained_of(trained.params) == trained.empty  # what a later build keeps, from the manifest alone
    training = Training({"int8": (Int8.trained_of(trained.params), {**trained.params, "trained_in": "v1"})},
                        why="same model")
    spec = VariantSpec.parse("int8")

    edited = np.concatenate([live[400:], _topics(topics, 400, seed=2)])  # a tenth rewritten, the same topics
    index, params = build_variant(spec, edited, cfg, seed=0, training=training)
    assert params["trained_in"] == "v1" and params["int8_ranges"] == trained.params["int8_ranges"]
    assert params["reconstruction_error_now"] <= 1.15 * params["reconstruction_error"]

    wider = edited * np.where(np.arange(64) < 8, 3.0, 1.0).astype(np.float32)  # 8 dims spread 3x beyond the ranges
    wider /= np.linalg.norm(wider, axis=1, keepdims=True)
    _, params = build_variant(spec, wider, cfg, seed=0, training=training)
    assert "trained_in" not in params and "they fit version v1's training" in params["training"]
    assert params["int8_ranges"] != trained.params["int8_ranges"]


def test_binary_ivf_centroids_are_kept_while_the_codes_stay_near_them_and_trained_again_once_they_moved():
    """binary-ivf's training places sign codes in lists; kept from live while this build's codes lie as near its
    centroids (Hamming) as the ones it was trained on, trained again once the corpus moved to new topics."""
    from pipeline.config import IndexConfig
    from pipeline.index.build_variants import build_variant, train_variants
    from pipeline.index.training import Training
    from pipeline.index.variants import VariantSpec

    rng = np.random.default_rng(0)
    weights = np.where(np.arange(64) < 32, 1.0, 0.2)
    old_topics, new_topics = rng.standard_normal((400, 64)) * weights, rng.standard_normal((400, 64)) * weights[::-1]
    live = _topics(old_topics, 4000, seed=1)
    cfg = IndexConfig(variants=["binary-ivf"], ivf={"nprobe": 5})
    [trained] = train_variants(cfg, len(live), 64, live, seed=0)
    assert 0 < trained.params["reconstruction_error"] < 0.5  # nearer its centroids than to random codes
    training = Training({"binary-ivf": (trained.empty, {**trained.params, "trained_in": "v1"})}, why="same model")
    spec = VariantSpec.parse("binary-ivf")

    edited = np.concatenate([live[400:], _topics(old_topics, 400, seed=2)])  # a tenth rewritten, the same topics
    index, params = build_variant(spec, edited, cfg, seed=0, training=training)
    assert params["trained_in"] == "v1" and params["training"].startswith(
        "reused from version v1 (Hamming distance to its centroids 1.0")
    assert params["reconstruction_error_now"] <= 1.04 * params["reconstruction_error"] and index.nprobe == 5
    fresh, _ = build_variant(spec, edited, cfg, seed=0)
    assert faiss.serialize_index_binary(index).tobytes() != faiss.serialize_index_binary(fresh).tobytes()

    _, params = build_variant(spec, _topics(new_topics, 4000, seed=3), cfg, seed=0, training=training)
    assert "trained_in" not in params and "max_reuse_hamming_ratio 1.04" in params["training"]
    assert "worse than the vectors it was trained on (Hamming distance to its centroids" in params["training"]


@pytest.mark.parametrize("n", [10, 20_000, 39_999, 40_000, 59_999, 200_000, 1_000_003])
def test_a_kept_trainings_fit_measured_on_its_fit_rows_alone_is_the_one_over_the_whole_sample(n):
    """An incremental build reads only fit_rows of the training sample to check a kept training: the rows
    reconstruction_error picks from them are the ones it picks from the whole sample, so the figure is the same;
    and they are the sample's first rows, so the first shards alone hold them."""
    from pipeline.index.faiss_ops import FIT_ROWS, fit_rows

    sample = np.sort(np.random.default_rng(0).choice(2 * n, size=n, replace=False))
    assert np.array_equal(fit_rows(fit_rows(sample)), fit_rows(sample))
    assert np.array_equal(fit_rows(sample), sample[:FIT_ROWS])


def test_nan_or_infinite_vectors_are_refused_by_the_sharded_path_too():
    """FAISS takes them silently: an IVF index leaves a NaN row out of its lists (then the index's count disagrees
    with the id table's, found only at evaluation), a flat one ranks an infinite row first for many queries."""
    from pipeline.config import IndexConfig
    from pipeline.index.build_variants import train_variants

    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    [exact, ivfpq] = train_variants(IndexConfig(variants=["exact", "ivfpq"]), len(x), 16, x, seed=0)
    bad = x.copy()
    bad[7, 3], bad[9, 0] = np.nan, np.inf
    for trained in (exact, ivfpq):
        with pytest.raises(IndexBuildError, match=r"2 of 600 vectors hold NaN or infinity \(first: row 1007\)"):
            trained.fill(bad, 1000)
        assert trained.fill(x, 1000).ntotal == 600
        with pytest.raises(IndexBuildError, match=r"\(first: row 3007\)"):  # ids, not consecutive rows
            trained.fill(bad, np.arange(600, dtype=np.int64) + 3000)
    with pytest.raises(IndexBuildError, match=r"1 of 600 vectors hold NaN or infinity \(first: row 9\)"):
        train_variants(IndexConfig(variants=["ivfpq"]), len(x), 16, np.where(np.arange(600)[:, None] == 9, np.inf, x)
                       .astype(np.float32), seed=0)


def test_an_explicit_nbits_needs_its_training_vectors_and_zero_vectors_fit_without_nan():
    with pytest.raises(IndexBuildError, match=r"index\.ivf\.nbits \(8\) needs 256 training vectors; this build has "
                                              r"100: expected nbits <= 6"):
        plan_ivfpq(100, 384, IvfConfig(nbits=8))
    assert plan_ivfpq(100, 384, IvfConfig(nbits=6)).nbits == 6
    from pipeline.index.faiss_ops import reconstruction_error

    rng = np.random.default_rng(0)
    index = build_ivfpq(rng.standard_normal((2000, 16)).astype(np.float32), plan_ivfpq(2000, 16, IvfConfig()), seed=0)
    # all-zero fit rows: a figure (0 or 1), not NaN, which a later build would read as "no fit" every time
    assert reconstruction_error(index, np.zeros((50, 16), np.float32)) in (0.0, 1.0)


def test_flat_int8_trains_on_any_corpus_an_ivf_plan_would_refuse():
    """int8 trains its ranges, not lists: a one-chunk corpus, or an index.ivf.nlist meant for the IVF variants of a
    larger one, must not refuse it with an error about IVF."""
    from pipeline.config import IndexConfig
    from pipeline.errors import IndexBuildError
    from pipeline.index.build_variants import build_variants

    rng = np.random.default_rng(0)
    for n, ivf in ((1, {}), (50, {"nlist": 64})):
        x = rng.normal(size=(n, 32)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        indexes, params = build_variants(IndexConfig(variants=["exact", "int8"], ivf=ivf), x, 0)
        assert indexes["int8"].ntotal == n and params["int8"]["train_points"] == n
        _, rows = indexes["int8"].search(x[:1], 1)
        assert rows[0][0] == 0
    with pytest.raises(IndexBuildError, match=r"index\.ivf\.nlist \(64\) exceeds the 50 training vectors"):
        build_variants(IndexConfig(variants=["exact", "ivfpq"], ivf={"nlist": 64}), x, 0)
