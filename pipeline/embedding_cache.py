"""Vectors by (model fingerprint, chunk hash), shared by every run of that model: a chunk whose text,
chunker parameters and model did not change is never embedded again.

    cache/embeddings/<model_fingerprint>/<run_id>-<shard>-<part>.parquet    chunk_hash, vector

Each embedded part adds one file (written before its shard's marker), so entries are immutable and
concurrent runs never write the same object. A lookup reads the model's files one at a time and keeps the
rows it needs; its I/O grows with the cache (docs/STATUS.md: the index a very large cache will want).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.storage import Storage
from pipeline.tables import read_parquet, write_parquet


class EmbeddingCache:
    def __init__(self, storage: Storage, model_fingerprint: str) -> None:
        self.storage, self.prefix = storage, f"cache/embeddings/{model_fingerprint}"

    def lookup(self, hashes: list[str]) -> dict[str, np.ndarray]:
        wanted = set(hashes)
        found: dict[str, np.ndarray] = {}
        for name in self.storage.list(self.prefix):
            if not name.endswith(".parquet") or len(found) == len(wanted):
                continue
            # One file is one embedded part (<= run.read_batch chunks), so memory stays bounded.
            part = read_parquet(self.storage, f"{self.prefix}/{name}").filter(pl.col("chunk_hash").is_in(wanted))
            found.update(zip(part["chunk_hash"].to_list(), part["vector"].to_numpy(), strict=True))
        return found

    def add(self, name: str, hashes: list[str], vectors: np.ndarray) -> None:
        if not hashes:
            return
        table = pl.DataFrame({"chunk_hash": hashes}).with_columns(
            pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, vectors.shape[1])))
        write_parquet(self.storage, f"{self.prefix}/{name}.parquet", table)
