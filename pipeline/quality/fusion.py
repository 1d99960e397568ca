"""Hybrid search: a dense ranking and a BM25 ranking of the same query fused into one, per query, in batches.

Both inputs are already collapsed to documents (one row per document, best first, -1 after). Two fusions:

    convex (`hybrid:<dense mode>`, the default)   w * minmax(bm25) + (1 - w) * minmax(dense)
    RRF    (`hybrid-rrf:<dense mode>`)            1 / (k + rank_bm25) + 1 / (k + rank_dense)

minmax maps each query's list to [0, 1] (its best 1, its worst 0; a list of one document, or of equal scores,
gives 1). A document only one side found gets nothing from the other. Convex fusion of normalised scores beats
RRF on SciFact, as Bruch et al. ("An Analysis of Fusion Functions for Hybrid Retrieval", arXiv 2210.11934) found
elsewhere: docs/BENCHMARKS.md. The fused document's chunk is the dense side's when it found the document, else
the BM25 side's; ties in the fused score keep document order (by doc id).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.config import FusionConfig

CONVEX, RRF = "hybrid", "hybrid-rrf"  # mode prefixes: "hybrid:exact", "hybrid-rrf:int8+rescore"
Ranked = tuple[np.ndarray, np.ndarray]  # (scores, rows) per query: documents best first, rows -1 after


@dataclass(frozen=True)
class Fusion:
    weight: float = 0.5  # BM25's share in convex fusion
    rrf_k: int = 60
    depth: int = 100  # documents taken from each side (at least the k asked for)

    @classmethod
    def of(cls, cfg: FusionConfig) -> Fusion:
        return cls(cfg.weight, cfg.rrf_k, cfg.depth)

    @classmethod
    def from_dict(cls, recorded: dict | None) -> Fusion:
        recorded = recorded or {}
        return cls(**{k: recorded[k] for k in ("weight", "rrf_k", "depth") if k in recorded})

    def to_dict(self) -> dict:
        """The manifest's "fusion" entry."""
        return {**asdict(self), "weight_of": "bm25", "normalisation": "min-max per query",
                "modes": {f"{CONVEX}:<dense mode>": "convex", f"{RRF}:<dense mode>": "reciprocal rank"}}


def parse_hybrid(mode: str) -> tuple[str, str] | None:
    """(fusion, dense mode) of a hybrid mode ("hybrid:exact" -> ("hybrid", "exact")), None for any other mode."""
    prefix, sep, dense = mode.partition(":")
    return (prefix, dense) if sep and prefix in (CONVEX, RRF) else None


def _minmax(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    s = np.where(valid, scores, np.nan).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: a side that found nothing for a query
        lo, hi = np.nanmin(s, axis=1, keepdims=True), np.nanmax(s, axis=1, keepdims=True)
    span = hi - lo
    norm = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1), 1.0)
    return np.where(valid, norm, 0.0)


def _reciprocal_ranks(valid: np.ndarray, k: int) -> np.ndarray:
    ranks = np.arange(1, valid.shape[1] + 1, dtype=np.float64)
    return np.where(valid, 1.0 / (k + ranks), 0.0)


def fuse(dense: Ranked, lexical: Ranked, doc_codes: np.ndarray, k: int, how: str, fusion: Fusion) -> Ranked:
    """The best k documents of each query by fused score: (scores float64, rows), rows -1 after."""
    (ds, dr), (ls, lr) = dense, lexical
    dv, lv = dr >= 0, lr >= 0
    if how == CONVEX:
        parts = ((1 - fusion.weight) * _minmax(ds, dv), fusion.weight * _minmax(ls, lv))
    elif how == RRF:
        parts = (_reciprocal_ranks(dv, fusion.rrf_k), _reciprocal_ranks(lv, fusion.rrf_k))
    else:
        raise ValueError(f"fusion {how!r}: expected {CONVEX!r} or {RRF!r}")
    rows = np.hstack([dr, lr])
    absent = np.iinfo(np.int64).max  # sorts after every document
    codes = np.where(rows >= 0, doc_codes[np.maximum(rows, 0)], absent)
    # Each document's entries side by side (the dense one first: a stable sort of dense-then-lexical columns)
    order = np.argsort(codes, axis=1, kind="stable")
    codes, rows = np.take_along_axis(codes, order, 1), np.take_along_axis(rows, order, 1)
    contrib = np.take_along_axis(np.hstack(parts), order, 1)
    pair = codes[:, 1:] == codes[:, :-1]  # a document both sides found: its two entries are adjacent
    total = contrib.copy()
    total[:, :-1] += np.where(pair, contrib[:, 1:], 0.0)
    first = np.ones(codes.shape, dtype=bool)
    first[:, 1:] = ~pair
    total = np.where(first & (codes != absent), total, -np.inf)
    pick = np.argsort(-total, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(total, pick, 1)
    return scores, np.where(np.isfinite(scores), np.take_along_axis(rows, pick, 1), -1)
