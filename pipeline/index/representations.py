"""Compact representations derived from the same float vectors (never a second forward pass).

- Matryoshka prefix: the first k dims, re-normalised.
- int8: FAISS's 8-bit scalar quantizer with per-dimension [min, max] ranges estimated on a seeded
  sample. The ranges are recorded in the manifest and the query side is rebuilt from them, so queries
  are quantised exactly like the indexed vectors.
- binary: sign bits (threshold 0) packed 8 per byte, as `numpy.packbits(x > 0)`.
- fp16: the rescoring store.
Scoring helpers: asymmetric binary scores (float query against sign bits) and float rescoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from pipeline.errors import IndexBuildError, SnapshotError

BINARY_THRESHOLD = 0.0
_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32)  # 256 x 8


def matryoshka(x: np.ndarray, dims: int | None) -> np.ndarray:
    """First `dims` dims of each row, re-normalised to unit length (all dims when `dims` is None)."""
    if dims is None or dims == x.shape[1]:
        return np.ascontiguousarray(x, dtype=np.float32)
    if dims > x.shape[1]:
        raise IndexBuildError(f"Matryoshka prefix of {dims} dims asked of {x.shape[1]}-dim vectors")
    prefix = np.array(x[:, :dims], dtype=np.float32)
    prefix /= np.maximum(np.linalg.norm(prefix, axis=1, keepdims=True), 1e-12)
    return prefix


def pack_signs(x: np.ndarray) -> np.ndarray:
    if x.shape[1] % 8:
        raise IndexBuildError(f"binary codes need dims divisible by 8, got {x.shape[1]}")
    return np.packbits(x > BINARY_THRESHOLD, axis=1)


@dataclass(frozen=True)
class Int8Ranges:
    """Per-dimension [vmin, vmin + vdiff]: FAISS QT_8bit's trained parameters."""

    vmin: np.ndarray
    vdiff: np.ndarray

    @classmethod
    def from_index(cls, sq: faiss.ScalarQuantizer) -> Int8Ranges:
        trained = faiss.vector_to_array(sq.trained).astype(np.float32)
        return cls(trained[: sq.d], trained[sq.d:])

    @classmethod
    def from_dict(cls, d: dict | None, where: str) -> Int8Ranges:
        if not d or "vmin" not in d or "vdiff" not in d:
            raise SnapshotError(f"{where}: int8 ranges are missing from the manifest; queries cannot be quantised "
                                "like the index, so this variant cannot be searched")
        return cls(np.asarray(d["vmin"], dtype=np.float32), np.asarray(d["vdiff"], dtype=np.float32))

    def to_dict(self) -> dict:
        return {"scheme": "faiss QT_8bit per-dimension min/max", "vmin": self.vmin.tolist(),
                "vdiff": self.vdiff.tolist()}

    def quantizer(self) -> faiss.ScalarQuantizer:
        sq = faiss.ScalarQuantizer(len(self.vmin), faiss.ScalarQuantizer.QT_8bit)
        faiss.copy_array_to_vector(np.concatenate([self.vmin, self.vdiff]).astype(np.float32), sq.trained)
        return sq

    def round_trip(self, x: np.ndarray) -> np.ndarray:
        """Quantise and decode: what the index 'sees' of `x` (the query side of an int8 variant)."""
        sq = self.quantizer()
        x = np.ascontiguousarray(x, dtype=np.float32)
        return sq.decode(sq.compute_codes(x))


def asymmetric_binary_scores(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """q . sign(doc) for each query (b x d) and its packed doc codes (b x c x d/8), via per-byte lookup tables
    (no float doc vectors needed)."""
    q = np.asarray(queries, dtype=np.float32)
    b, d8 = len(q), q.shape[1] // 8
    # (b, d/8, 256): sum of q over the set bits of each byte value, MSB first like packbits
    lut = q.reshape(b, d8, 8) @ _BYTE_BITS.T
    # One flat gather: query i's byte j with value v sits at (i * d/8 + j) * 256 + v of the tables.
    at = (np.arange(b * d8).reshape(b, 1, d8) << 8) + codes
    ones = lut.ravel()[at].sum(axis=2)
    return 2 * ones - q.sum(axis=1, keepdims=True)


def rescore(queries: np.ndarray, rows: np.ndarray, store: np.ndarray) -> np.ndarray:
    """Inner products of full-precision queries (b x d) with the stored vectors of their candidate rows (b x c)."""
    # A stack of matrix-vector products: per query the BLAS call a lone query makes on the same rows, so the same sums.
    q = np.asarray(queries, dtype=np.float32)
    return np.matmul(store[rows].astype(np.float32, copy=False), q[:, :, None])[..., 0]
