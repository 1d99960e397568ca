"""Choosing the hybrid fusion weight without fooling yourself: sweep the weight over a grid on a golden set,
choosing it by k-fold cross-validation over the queries, so the score reported for the choice comes from queries
that did not choose it.

Each fold's weight is the best on the other folds' queries (ties: the one nearest the default, then the lower);
the held-out score is the mean, over every query, of the metric at the weight chosen without it. The weight to
use is the best on all queries; its in-sample score is optimistic, the held-out score is what to expect. Nothing
changes by itself: the configured weight (index.fusion.weight) stays until a user sets the chosen one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import numpy as np

from pipeline.config import BM25
from pipeline.errors import InputError
from pipeline.quality.fusion import CONVEX, fuse, parse_hybrid
from pipeline.quality.metrics import METRICS, Qrels, per_query
from pipeline.quality.search import Searcher


@dataclass(frozen=True)
class Fold:
    queries: int
    weight: float  # the best on the other folds
    train: float  # its mean metric on the other folds
    held_out: float  # its mean metric on this fold's queries


@dataclass(frozen=True)
class WeightTuning:
    dense_mode: str  # hybrid:<dense_mode> was tuned
    metric: str
    queries: int
    grid: list[float]
    folds: list[Fold]
    held_out: float  # cross-validated: every query scored at a weight chosen without it
    weight: float  # the best on every query: what to set
    in_sample: float  # its mean on every query (optimistic)
    default_weight: float
    default: float  # the default weight's mean on every query (not tuned, so not optimistic)
    curve: dict[str, float]  # weight -> mean metric on every query

    def to_dict(self) -> dict:
        return asdict(self)


def _best(means: np.ndarray, grid: np.ndarray, default: float) -> int:
    top = np.flatnonzero(means >= means.max() - 1e-12)
    return int(min(top, key=lambda i: (abs(grid[i] - default), grid[i])))


def tune_weight(searcher: Searcher, queries: Mapping[str, str], qrels: Qrels, dense_mode: str = "exact",
                metric: str = "ndcg@10", folds: int = 5, step: float = 0.05, seed: int = 0, k: int = 100
                ) -> WeightTuning:
    """Cross-validated choice of the bm25 weight of `hybrid:<dense_mode>` (convex fusion) on a golden set."""
    if metric not in METRICS:
        raise InputError(f"metric {metric!r}: expected one of {list(METRICS)}")
    if not 0 < step <= 1:
        raise InputError(f"step {step}: expected a grid step in (0, 1]")
    if dense_mode == BM25 or parse_hybrid(dense_mode):
        raise InputError(f"mode {dense_mode!r}: expected the dense mode that hybrid:<mode> fuses with bm25 (exact, "
                         "ivfpq+rescore, ...)")
    qids = [q for q, judged in qrels.items() if q in queries and any(v > 0 for v in judged.values())]
    if len(qids) < max(folds, 2):
        raise InputError(f"{len(qids)} judged queries for {folds}-fold cross-validation: expected at least {folds}")
    default = searcher.fusion.weight  # on the grid whatever the step, so "the default gives" is its own score
    grid = np.union1d(np.round(np.arange(0, 1 + step / 2, step), 6), [default])
    depth = max(k, searcher.fusion.depth)
    sides = searcher.rankings([queries[q] for q in qids], depth, [dense_mode, BM25])
    per_weight = np.empty((len(grid), len(qids)))
    for i, w in enumerate(grid):
        fused = fuse(sides[dense_mode], sides[BM25], searcher.doc_codes, k, CONVEX, replace(searcher.fusion, weight=w))
        scored = per_query({q: qrels[q] for q in qids}, searcher.run_of(qids, fused), metric)
        per_weight[i] = [scored[q] for q in qids]
    fold_of = np.empty(len(qids), dtype=int)
    fold_of[np.random.default_rng(seed).permutation(len(qids))] = np.arange(len(qids)) % folds
    chosen, out = np.empty(len(qids), dtype=int), []
    for f in range(folds):
        train, test = fold_of != f, fold_of == f
        best = _best(per_weight[:, train].mean(1), grid, default)
        chosen[test] = best
        out.append(Fold(int(test.sum()), float(grid[best]), round(float(per_weight[best, train].mean()), 5),
                        round(float(per_weight[best, test].mean()), 5)))
    means = per_weight.mean(1)
    best = _best(means, grid, default)
    at_default = int(np.searchsorted(grid, default))
    return WeightTuning(dense_mode, metric, len(qids), grid.tolist(), out,
                        round(float(per_weight[chosen, np.arange(len(qids))].mean()), 5), float(grid[best]),
                        round(float(means[best]), 5), default,
                        round(float(means[at_default]), 5), {f"{w:g}": round(float(m), 5)
                                                                   for w, m in zip(grid, means, strict=True)})
