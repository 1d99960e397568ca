"""Parallel IVF-PQ build on Ray: train once, add row ranges in parallel tasks into empty copies of the
trained index, merge their inverted lists in row order (byte-identical to a serial build).

Training runs where this is called (FAISS uses a GPU there when `faiss.get_num_gpus() > 0` and the
faiss-gpu wheel is installed; on CPU it uses every core). Each part's vectors travel through Ray's
object store; for corpora larger than the driver's memory the parts should read their shard's vectors
from storage instead (docs/STATUS.md).
"""

from __future__ import annotations

import numpy as np
import ray

from operators.cluster import ensure_ray
from pipeline.index.faiss_ops import add_part, merge_parts, to_bytes, train_ivfpq
from pipeline.index.plan import IvfPqPlan


@ray.remote(num_cpus=1, max_retries=2)  # a part is a pure function of its inputs: safe to retry
def _add_part(trained: bytes, vectors: np.ndarray, first_row: int) -> bytes:
    return add_part(trained, vectors, first_row)


def add_parts(trained: bytes, vectors: np.ndarray, parts: int) -> list[bytes]:
    """Add `parts` contiguous row ranges into copies of the trained index in parallel Ray tasks; the parts'
    bytes come back in row order, ready for `merge_parts`."""
    ensure_ray()
    trained_ref = ray.put(trained)
    bounds = np.linspace(0, len(vectors), parts + 1).astype(int)
    refs = [_add_part.remote(trained_ref, vectors[a:b], int(a)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            if b > a]
    return ray.get(refs)


def parallel_ivfpq(vectors: np.ndarray, plan: IvfPqPlan, seed: int, parts: int):
    ensure_ray()
    trained = to_bytes(train_ivfpq(vectors, plan, seed))
    return merge_parts(trained, add_parts(trained, vectors, parts))
