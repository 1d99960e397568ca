"""Drift statistics of a snapshot, a blue/green comparison of two, and threshold checks for monitoring.

Blue (live) and green (candidate) may come from different models with different dims, so nothing here
compares vectors across snapshots: each snapshot is summarised on its own (geometry of its vectors, the
score distribution of its golden queries, the relevant/non-relevant score gap), and the summaries are
compared. The one cross-snapshot figure is the overlap of the top-k result lists, which needs ids that
mean the same in both (doc ids, or chunk ids when the chunking is unchanged) and the same corpus.

Every figure is seeded, rounded and a plain float, so a summary can go into a manifest as JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from pipeline.quality.metrics import Qrels, Run, top_k
from pipeline.snapshots.gate import stat_at

DIGITS = 6  # enough for per-dimension variances of ~1e-3; hides BLAS noise across machines
HIST_BINS, HIST_RANGE = 100, (-1.0, 1.0)  # fixed bins: histograms of two snapshots or two days line up
_BLOCK = 2_048  # rows per block when summing: its temporaries (2 MB at 256 dims) stay in cache
_FAISS_MISSING = -1e30  # FAISS pads missing results with -FLT_MAX (inner product)


def _r(x: float) -> float:
    return round(float(x), DIGITS) + 0.0  # + 0.0 turns -0.0 into 0.0


def _dist(values: np.ndarray) -> dict[str, float]:
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"mean": _r(values.mean()), "p10": _r(p10), "p50": _r(p50), "p90": _r(p90)}


READBACK_VARIANTS = ("exact", "fp16", "int8")  # full-dimension float variants whose vectors read back
STORE = "rescore"  # vectors_source's name for the fp16 rescoring store


def vectors_source(has_store: bool, variants: Sequence[str]) -> str | None:
    """Which of a snapshot's files its drift statistics read its vectors from: the fp16 rescoring store (STORE),
    else the first full-dimension float variant it has (exact, fp16, int8: lossy for the quantised ones); None
    when it has neither."""
    return STORE if has_store else next((v for v in READBACK_VARIANTS if v in variants), None)


@dataclass(frozen=True)
class Geometry:
    """The figures of `vector_stats` that need every row (the others use a sample)."""

    rows: int
    dims: int
    mean_norm: float
    centroid_norm: float
    mean_dim_variance: float
    total_variance: float

    @classmethod
    def of_summary(cls, vectors: Mapping | None) -> Geometry | None:
        """The figures a snapshot_stats summary recorded ("vectors" of a manifest's drift section), None when it
        has not all of them: a version's vectors never change, so they hold for any later measuring of it."""
        try:
            return cls(**{f.name: vectors[f.name] for f in fields(cls)}) if vectors else None
        except KeyError:
            return None


@dataclass(frozen=True)
class VectorMoments:
    """The sums over rows that Geometry is made of: summed where the vectors are (each shard in the index
    stage) and added up, so evaluating a version reads only its sampled rows."""

    rows: int
    total: np.ndarray  # per dim, float64
    squares: np.ndarray  # per dim, float64
    norms: float  # sum of the rows' L2 norms

    @classmethod
    def of(cls, vectors: np.ndarray) -> VectorMoments:
        x = np.asarray(vectors)
        total, squares, norms = np.zeros(x.shape[1]), np.zeros(x.shape[1]), 0.0
        for start in range(0, len(x), _BLOCK):
            # squared in float32 (exact for fp16 values), summed in float64: faster than float64 blocks (3.2x for
            # float32 rows, 1.8x for fp16 ones)
            block = np.asarray(x[start:start + _BLOCK], dtype=np.float32)
            square = np.square(block)
            total += block.sum(axis=0, dtype=np.float64)
            squares += square.sum(axis=0, dtype=np.float64)
            norms += float(np.sqrt(square.sum(axis=1, dtype=np.float64)).sum())
        return cls(len(x), total, squares, norms)

    def __add__(self, other: VectorMoments) -> VectorMoments:
        return VectorMoments(self.rows + other.rows, self.total + other.total, self.squares + other.squares,
                             self.norms + other.norms)

    def geometry(self) -> Geometry:
        n = self.rows
        mean = self.total / n
        variance = np.maximum(self.squares / n - mean * mean, 0.0)
        return Geometry(n, len(self.total), _r(self.norms / n), _r(np.linalg.norm(mean)), _r(variance.mean()),
                        _r(variance.sum()))


def vector_stats(vectors: np.ndarray, sample: int = 1000, seed: int = 0, geometry: Geometry | None = None) -> dict:
    """Geometry of one snapshot's vectors (rows L2-normalised): how concentrated they are around a common
    direction (centroid norm, mean pairwise cosine) and how evenly they use their dims (variance, isotropy).

    Centroid, norms and variances use every row (or `geometry`, those figures summed elsewhere: then only the
    sampled rows of `vectors` are read); pairwise cosines and isotropy use `sample` rows drawn with `seed` (all
    rows when fewer). Isotropy: see `_isotropy`."""
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"vectors must be a 2-d array with at least 2 rows, got shape {x.shape}")
    if sample < 2:
        raise ValueError(f"sample must be at least 2 rows (pairs are compared), got {sample}")
    n, dims = x.shape
    if geometry is None:
        geometry = VectorMoments.of(x).geometry()
    elif (geometry.rows, geometry.dims) != (n, dims):
        raise ValueError(f"figures summed over {geometry.rows} x {geometry.dims} vectors given for {n} x {dims}")

    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    s = x[rows].astype(np.float64)
    s /= np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)
    m = len(s)
    cosines = (s @ s.T)[np.triu_indices(m, k=1)]  # each unordered pair once, no self-pairs
    whole = asdict(geometry)
    return {"rows": n, "dims": dims, "sample": m, **{k: whole[k] for k in whole if k not in ("rows", "dims")},
            "pairwise_cosine": _dist(cosines), "isotropy": _r(_isotropy(s))}


def _isotropy(rows: np.ndarray) -> float:
    """Participation ratio of the covariance eigenvalues over dims, (sum l)^2 / (dims * sum l^2): 1 when
    every direction carries the same variance, 1/dims when one direction carries it all.

    Needs only tr(S) and tr(S^2), so no eigendecomposition. A sample's covariance spreads its spectrum
    (1,000 rows of a perfectly isotropic 384-d cloud read ~0.72), more so the more dims, which would
    make models of different dims look different; Srivastava's (2005) unbiased estimators of tr(Sigma^2)
    and tr(Sigma)^2 remove most of that bias, so the figure is comparable across dims."""
    m, dims = rows.shape
    centred = rows - rows.mean(axis=0)
    gram = centred.T @ centred if dims <= m else centred @ centred.T  # same non-zero spectrum, smaller one
    n = m - 1
    tr_s, tr_s2 = float(np.trace(gram)) / n, float((gram * gram).sum()) / n**2
    if tr_s2 <= 0:
        return 0.0
    if n > 1:
        tr_sigma2 = n * n / ((n - 1) * (n + 2)) * (tr_s2 - tr_s * tr_s / n)
        if tr_sigma2 > 0:
            return min(1.0, (tr_s * tr_s - 2 * tr_sigma2 / n) / tr_sigma2 / dims)
    return tr_s * tr_s / tr_s2 / dims  # too few rows to correct: the plain sample figure


def scores_from_run(run: Run) -> np.ndarray:
    """[queries, depth] scores, best first, NaN-padded; queries in sorted id order."""
    qids = sorted(run)
    depth = max((len(run[q]) for q in qids), default=0)
    out = np.full((len(qids), depth), np.nan)
    for i, q in enumerate(qids):
        out[i, : len(run[q])] = sorted(run[q].values(), reverse=True)
    return out


def score_stats(scores: np.ndarray) -> dict:
    """Distribution over queries of the top-1 score, the score at rank 10 and their difference, plus
    fixed-bin histograms of both. `scores` is [queries, k]; NaN and FAISS's padding count as missing, so a
    query with fewer than 10 results has no rank-10 score (and no "at10" key exists when none has one)."""
    s = np.array(scores, dtype=np.float64, ndmin=2)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"scores must be a [queries, k] array with at least one query, got shape {s.shape}")
    s[~np.isfinite(s) | (s < _FAISS_MISSING)] = np.nan
    s = -np.sort(-s, axis=1)  # best first whatever the input order; NaN sorts last
    out: dict = {"queries": s.shape[0], "k": s.shape[1]}
    hist = {"bins": HIST_BINS, "range": list(HIST_RANGE)}
    for name, rank in (("top1", 1), ("at10", 10)):
        col = s[:, rank - 1] if s.shape[1] >= rank else np.empty(0)
        col = col[~np.isnan(col)]
        if len(col):
            out[name] = _dist(col)
            hist[name] = np.histogram(np.clip(col, *HIST_RANGE), HIST_BINS, HIST_RANGE)[0].tolist()
    if s.shape[1] >= 10:
        spread = (s[:, 0] - s[:, 9])[~np.isnan(s[:, 9])]
        if len(spread):
            out["top1_minus_at10"] = _dist(spread)
    out["histograms"] = hist
    return out


def relevance_gap(run: Run, qrels: Qrels) -> dict:
    """How well the scores separate relevant from non-relevant retrieved docs, over judged queries that
    retrieved both: mean scores of each, their per-query gap, the margin of the best relevant doc over
    the best non-relevant one, and the share of queries where a relevant doc ranks first. A shrinking
    margin is what lies behind a drop in nDCG/MRR; queries that retrieved no relevant doc are counted."""
    rel_means, non_means, gaps, margins, missing = [], [], [], [], 0
    for q, judged in sorted(qrels.items()):
        relevant = {d for d, g in judged.items() if g > 0}
        if not relevant:
            continue
        docs = run.get(q, {})
        rel = [s for d, s in docs.items() if d in relevant]
        non = [s for d, s in docs.items() if d not in relevant]
        if not rel:
            missing += 1
            continue
        if not non:
            continue
        rel_means.append(np.mean(rel))
        non_means.append(np.mean(non))
        gaps.append(rel_means[-1] - non_means[-1])
        margins.append(max(rel) - max(non))
    out: dict = {"queries": len(gaps), "relevant_not_retrieved": missing}
    if gaps:
        margins_a = np.array(margins)
        out |= {"relevant_mean": _r(np.mean(rel_means)), "nonrelevant_mean": _r(np.mean(non_means)),
                "gap": _dist(np.array(gaps)), "best_margin": _dist(margins_a),
                "relevant_first": _r((margins_a > 0).mean())}
    return out


def _valid(ids: Sequence, k: int) -> list:
    return [i for i in ids if i is not None and not (isinstance(i, int | np.integer) and i < 0)][:k]


def _overlaps(a_ids: Sequence[Sequence], b_ids: Sequence[Sequence], k: int) -> np.ndarray:
    if len(a_ids) != len(b_ids):
        raise ValueError(f"top-k lists for {len(a_ids)} and {len(b_ids)} queries; expected the same queries")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    out = []
    for a, b in zip(a_ids, b_ids, strict=True):
        a, b = set(_valid(a, k)), set(_valid(b, k))
        if a or b:
            out.append(len(a & b) / max(len(a), len(b)))  # short lists (tiny corpus) still reach 1.0
    if not out:
        raise ValueError("no query has any result to compare")
    return np.array(out)


def topk_overlap(a_ids: Sequence[Sequence], b_ids: Sequence[Sequence], k: int = 10) -> float:
    """Mean over queries of |top-k(a) & top-k(b)| / k: 1.0 when both return the same results (in any
    order). Lists are best first, one per query in the same query order; -1 or None entries are padding."""
    return _r(_overlaps(a_ids, b_ids, k).mean())


def snapshot_stats(vectors: np.ndarray | None, run: Run, *, model: str, version: str | None = None,
                   corpus: str | None = None, metrics: Mapping[str, float] | None = None,
                   qrels: Qrels | None = None, sample: int = 1000, seed: int = 0,
                   geometry: Geometry | None = None) -> dict:
    """One snapshot's summary: `vectors` are its indexed vectors, `run` its golden queries' results
    (query id -> doc id -> score, e.g. from Searcher hits), `metrics` its golden-set metrics (a mode's
    entry in the manifest's evaluation), `corpus` the manifest's corpus fingerprint (guards top-k overlap),
    `geometry` the vectors' figures over every row when they were summed elsewhere (vector_stats). Without vectors
    to read back (None: an IVF-PQ or binary index alone), or with fewer than 2 (pairs are compared), the summary
    has no "vectors" section (a check of one of its statistics says it is missing)."""
    out: dict = {"model": model}
    out |= {"version": version} if version else {}
    out |= {"corpus": corpus} if corpus else {}
    if metrics:
        out["metrics"] = {m: _r(v) for m, v in metrics.items() if is_number(v)}
    out["scores"] = score_stats(scores_from_run(run))
    if qrels is not None:
        out["relevance"] = relevance_gap(run, qrels)
    if vectors is not None and len(vectors) >= 2:
        out["vectors"] = vector_stats(vectors, sample, seed, geometry)
    return out


def is_number(v: object) -> bool:
    return isinstance(v, int | float | np.number) and not isinstance(v, bool) and math.isfinite(float(v))


def _deltas(blue: Mapping, green: Mapping) -> dict:
    """green - blue for every numeric leaf both have (histograms and labels are not deltas)."""
    out = {}
    for key in blue.keys() & green.keys():
        b, g = blue[key], green[key]
        if key == "histograms":
            continue
        if isinstance(b, Mapping) and isinstance(g, Mapping):
            if sub := _deltas(b, g):
                out[key] = sub
        elif is_number(b) and is_number(g):
            out[key] = g - b if isinstance(b, int) and isinstance(g, int) else _r(g - b)
    return dict(sorted(out.items()))


def compare(blue: Mapping, green: Mapping, runs: tuple[Run, Run] | None = None, k: int = 10) -> dict:
    """Blue and green summaries side by side with their deltas (green - blue). With `runs` (blue's and
    green's golden runs, ids meaning the same in both), the top-k overlap per query too: skipped, with a
    note, when the summaries record different corpus fingerprints."""
    out: dict = {"blue": dict(blue), "green": dict(green), "delta": _deltas(blue, green), "notes": []}
    bd, gd = (s.get("vectors", {}).get("dims") for s in (blue, green))
    if bd and gd and bd != gd:
        out["notes"].append(f"dims differ ({bd} vs {gd}): mean per-dimension variance scales with 1/dims; compare "
                            "total variance, centroid norm, pairwise cosine and isotropy instead")
    if blue.get("model") != green.get("model"):
        out["notes"].append("different models score on different scales: compare top1 - at10 and the relevance "
                            "margin rather than raw score levels")
    if runs is not None:
        bc, gc = blue.get("corpus"), green.get("corpus")
        if bc and gc and bc != gc:
            out["notes"].append(f"top-{k} overlap skipped: different corpora ({bc[:12]} vs {gc[:12]})")
        else:
            b_top, g_top = ({q: list(docs) for q, docs in top_k(run, k).items()} for run in runs)
            qids = sorted(b_top.keys() & g_top.keys())
            if not qids:
                raise ValueError("the blue and green runs share no query id")
            per_query = _overlaps([b_top[q] for q in qids], [g_top[q] for q in qids], k)
            same_first = np.mean([b_top[q][:1] == g_top[q][:1] for q in qids])
            out["topk_overlap"] = {"k": k, "queries": len(qids), **_dist(per_query),
                                   "identical": _r((per_query == 1.0).mean()), "same_top1": _r(same_first)}
    return out


def _fmt(x: float) -> str:
    s = f"{x:.4f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def check_thresholds(current_metrics: Mapping, baseline_metrics: Mapping, max_drop: Mapping[str, float]) -> list[str]:
    """Violations, as sentences, of `max_drop` (metric -> largest allowed fall below the baseline). Metric
    names are evaluate_run's ("ndcg@10", "recall@10", ...) or dotted paths into snapshot_stats summaries
    ("scores.top1.mean"). A metric missing on either side is a violation: a silent pass would hide it."""
    problems = []
    for name, allowed in max_drop.items():
        if allowed < 0:
            raise ValueError(f"max_drop for {name} must be >= 0, got {allowed}")
        now, base = stat_at(current_metrics, name), stat_at(baseline_metrics, name)
        if base is None:
            problems.append(f"{name} has no baseline value to compare with")
        elif now is None:
            problems.append(f"{name} is missing from the current metrics (baseline {_fmt(base)})")
        elif round(base - now, 9) > allowed:  # rounded: 0.78 - 0.73 must not exceed an allowed 0.05
            problems.append(f"{name} dropped from {_fmt(base)} to {_fmt(now)} "
                            f"({_fmt(now - base)} > allowed {_fmt(allowed)})")
    return problems
