"""Build FAISS indexes from float vectors: exact inner product and IVF-PQ from a factory string.

Vectors are L2-normalised, so inner product is cosine similarity. Every index is serialised to bytes
that plain `faiss.read_index` reads back.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import BinaryIO

import faiss
import numpy as np

from pipeline.errors import IndexBuildError
from pipeline.index.plan import IvfPqPlan


def check_vectors(vectors: np.ndarray) -> None:
    if vectors.ndim != 2 or vectors.dtype != np.float32 or not vectors.flags.c_contiguous:
        raise IndexBuildError(f"expected a C-contiguous float32 matrix, got {vectors.dtype} {vectors.shape}")
    check_finite(vectors)


def check_finite(vectors: np.ndarray, rows: int | np.ndarray = 0) -> None:
    """FAISS takes NaN and infinity silently: an IVF index leaves such a row out of its lists (its count then
    disagrees with the id table's), a flat one ranks an infinite row first for many queries. `rows`: the vectors'
    row numbers, or the first of consecutive ones (as TrainedVariant.fill takes them)."""
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        at = int(np.argmax(bad))
        row = rows + at if isinstance(rows, int) else int(rows[at])
        raise IndexBuildError(f"{int(bad.sum())} of {len(vectors)} vectors hold NaN or infinity (first: row {row}); "
                              "expected finite vectors")


def build_exact(vectors: np.ndarray) -> faiss.Index:
    check_vectors(vectors)
    index = faiss.index_factory(vectors.shape[1], "Flat", faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    return index


def train_ivfpq(vectors: np.ndarray, plan: IvfPqPlan, seed: int, use_gpu: bool | None = None) -> faiss.Index:
    """The trained, empty IVF-PQ index: coarse quantizer and PQ codebooks from one seeded sample.

    On a GPU (FAISS's CUDA build; `use_gpu` None: wherever `faiss.get_num_gpus() > 0`) the coarse k-means (the
    bulk of training: nlist centroids over the whole sample) assigns points on every GPU; the centroids then go into
    the usual CPU quantizer, so the index, its bytes format and everything after training stay on CPU. GPU float
    sums differ from CPU ones, so a GPU-trained index is equivalent in recall, not byte-identical
    (tests/unit/test_gpu.py; benchmarks/gpu_index.py at 1M vectors).
    """
    check_vectors(vectors)
    n, dims = vectors.shape
    index = faiss.index_factory(dims, plan.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    pq = faiss.downcast_index(ivf).pq
    ivf.cp.seed = pq.cp.seed = seed
    pq.cp.min_points_per_centroid = 1  # the plan keeps >= 10 points per PQ centroid; don't warn below 39
    sample = np.random.default_rng(seed).choice(n, size=plan.train_points, replace=False)
    # SWIG does not keep an assigned index alive: hold the GPU index here until training is done.
    if use_gpu is None:
        use_gpu = faiss.get_num_gpus() > 0
    elif use_gpu and faiss.get_num_gpus() == 0:
        raise IndexBuildError("GPU training asked for, but faiss sees no GPU (faiss-cpu, or no CUDA device)")
    gpu_assigner = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dims)) if use_gpu else None
    if gpu_assigner is not None:
        ivf.clustering_index = gpu_assigner
    try:
        index.train(vectors[np.sort(sample)])
    finally:
        if gpu_assigner is not None:
            ivf.clustering_index = None  # not serialised anyway; drop the pointer before the GPU index goes
    ivf.nprobe = plan.nprobe
    return index


FIT_ROWS = 20_000  # rows that measure a training's fit


def fit_rows(rows: np.ndarray) -> np.ndarray:
    """The rows (of a sample, or its row numbers) a training's fit is measured on: its first FIT_ROWS, and fit_rows
    of them are themselves, so a build may read only these rows of its sample to measure it. A snapshot's rows are
    in bucket order, buckets by a hash of the document id, so the first rows are documents drawn at random, and they
    lie in the first shards: a kept training's fit reads those shards' vectors alone. (Vectors in any other order,
    e.g. a benchmark's, are shuffled first.)"""
    return rows[:FIT_ROWS]


def reconstruction_error(index: faiss.Index, vectors: np.ndarray) -> float:
    """How well a trained IVF-PQ index's centroids and codebooks fit `vectors`: the squared error of fit_rows of
    the vectors encoded and decoded, relative to their squared norms (0: exact)."""
    x = np.ascontiguousarray(fit_rows(vectors))
    decoded = index.sa_decode(index.sa_encode(x))
    error, norms = float(((x - decoded) ** 2).sum()), float((x ** 2).sum())
    if not norms:  # zero vectors only: exact if they decode to zero, else no fit at all (not 0/0, NaN)
        return 0.0 if not error else 1.0
    return float(f"{error / norms:.6g}")  # 6 digits: the manifest's figure


def centroid_error(index: faiss.IndexBinaryIVF, codes: np.ndarray) -> float:
    """How well a trained binary IVF index's centroids fit packed sign codes: the Hamming distance from fit_rows of
    the codes to their nearest centroid, over the bits (0: every code a centroid; ~0.5: centroids no better than
    random codes). The codes themselves are the vectors' signs whatever the training; only the lists depend on it."""
    distances, _ = index.quantizer.search(np.ascontiguousarray(fit_rows(codes)), 1)
    return float(f"{distances.mean() / index.d:.6g}")


def build_ivfpq(vectors: np.ndarray, plan: IvfPqPlan, seed: int) -> faiss.Index:
    index = train_ivfpq(vectors, plan, seed)
    index.add(vectors)
    return index


@contextlib.contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    """FAISS on `n` OpenMP threads in the calling thread for the block (None: as it is). A Ray worker starts with
    OMP_NUM_THREADS=1, so a step that asked Ray for several CPUs sets them here (the count is per thread)."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@contextlib.contextmanager
def native_stdout_silenced() -> Iterator[None]:
    """FAISS's on-disk lists print notes ("resizing ...", "updating ondisk filename ...") with C printf, to the
    process's stdout, where a CLI's --json output goes: send file descriptor 1 to /dev/null meanwhile."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def ivf_of(index: faiss.Index | faiss.IndexBinary, binary: bool):
    """An IVF index's inverted-file part (lists, nprobe): a binary IVF index is its own, a float one's is inside it."""
    return index if binary else faiss.extract_index_ivf(index)


def to_bytes(index: faiss.Index | faiss.IndexBinary) -> bytes:
    if isinstance(index, faiss.IndexBinary):
        return faiss.serialize_index_binary(index).tobytes()
    return faiss.serialize_index(index).tobytes()


def write_to(index: faiss.Index | faiss.IndexBinary, out: BinaryIO) -> None:
    """Serialise into a stream as FAISS writes it, without to_bytes' two whole copies (a shard's fill)."""
    writer = faiss.PyCallbackIOWriter(out.write)
    if isinstance(index, faiss.IndexBinary):
        faiss.write_index_binary(index, writer)
    else:
        faiss.write_index(index, writer)


def from_bytes(data: bytes, binary: bool = False) -> faiss.Index | faiss.IndexBinary:
    """Read an index file's bytes; binary indexes (Hamming) are `faiss.read_index_binary` files."""
    array = np.frombuffer(data, dtype=np.uint8)
    return faiss.deserialize_index_binary(array) if binary else faiss.deserialize_index(array)
