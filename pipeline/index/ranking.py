"""Re-ranking candidate rows by an exact score, a block of queries at a time (binary candidates by the float
query, any candidates by the stored fp16 vectors)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RERANK_BLOCK_BYTES = 8 << 20  # what one block of queries gathers to re-rank (fastest at 1-8 MiB: caches)


def rerank(rows: np.ndarray, score: Callable[[slice, np.ndarray], np.ndarray], bytes_per_candidate: int,
           keep: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate rows (queries x candidates) with `score(query_slice, rows)`, a block of queries at a time
    (blocks sized so a block's gathered data stays under RERANK_BLOCK_BYTES); each query's best `keep` (default
    all), best first, ties in candidate order; -1 rows stay last."""
    valid = rows >= 0
    safe = np.where(valid, rows, 0)  # scored like row 0, then set to -inf
    block = max(1, RERANK_BLOCK_BYTES // max(1, rows.shape[1] * bytes_per_candidate))
    scores = np.empty(rows.shape, dtype=np.float32)
    for s in range(0, len(rows), block):
        scores[s:s + block] = score(slice(s, s + block), safe[s:s + block])
    # BLAS sums the last (rows % 4) of a matrix-vector product another way, so a score can depend in its last bit on
    # how many rows share the call: a query with -1 rows (an IVF probe found fewer) is scored on its valid rows alone,
    # as the one-query-at-a-time loop did, so ties and near-ties rank the same.
    for i in np.flatnonzero(~valid.all(axis=1)):
        scores[i, valid[i]] = score(slice(i, i + 1), rows[i:i + 1, valid[i]])[0]
    scores[~valid] = -np.inf
    order = best_first(scores, rows.shape[1] if keep is None else keep)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def best_first(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of each row's n highest scores: the first n of a stable descending sort, without sorting it all."""
    neg = -scores
    if n >= scores.shape[1]:
        return np.argsort(neg, axis=1, kind="stable")
    inside = neg <= np.partition(neg, n - 1, axis=1)[:, n - 1:n]  # >= n per row: the n best and ties with the nth
    pos = np.argsort(~inside, axis=1, kind="stable")[:, :int(inside.sum(1).max())]  # those, in candidate order
    sub = np.where(np.take_along_axis(inside, pos, 1), np.take_along_axis(neg, pos, 1), np.inf)
    return np.take_along_axis(pos, np.argsort(sub, axis=1, kind="stable")[:, :n], 1)
