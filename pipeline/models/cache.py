"""Vectors by (model fingerprint, chunk hash), shared by every run of that model: a chunk whose text,
chunker parameters and model did not change is never embedded again. Golden-set queries are kept the
same way (`CachedQueries`), so re-evaluating with the same model encodes only queries it has not seen.

One file (chunk_hash, vector) per embedded part or query batch, under layout.cache_prefix: each is written
before its shard's marker, so entries are immutable and concurrent runs never write the same object. A lookup
reads the model's files one at a time and keeps the rows it needs; its I/O grows with the cache.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import polars as pl

from pipeline.models.encoder import Encoder
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from pipeline.storage.tables import read_parquet, write_parquet


class EmbeddingCache:
    def __init__(self, storage: Storage, model_fingerprint: str, kind: str = "embeddings") -> None:
        self.storage, self.prefix = storage, layout.cache_prefix(kind, model_fingerprint)

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


def _text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class CachedQueries:
    """An encoder whose query vectors come from the cache when the same model encoded the same query before
    (every scheduled reindex, migration and monitoring run evaluates the same golden set); passages go
    straight through."""

    def __init__(self, encoder: Encoder, storage: Storage) -> None:
        self.encoder, self.card, self.tokenizer = encoder, encoder.card, encoder.tokenizer
        self.cache = EmbeddingCache(storage, encoder.card.fingerprint, kind="queries")

    @property
    def tokens_encoded(self) -> int:
        return self.encoder.tokens_encoded

    def encode(self, texts: list[str], kind: Literal["query", "passage"] = "passage") -> np.ndarray:
        if kind != "query":
            return self.encoder.encode(texts, kind)
        hashes = [_text_hash(t) for t in texts]
        known = self.cache.lookup(hashes)
        missing = list({h: i for i, h in enumerate(hashes) if h not in known}.values())
        if missing:
            fresh = self.encoder.encode([texts[i] for i in missing], kind="query")
            added = [hashes[i] for i in missing]
            self.cache.add(_text_hash("\n".join(added)), added, fresh)  # same batch, same name: idempotent
            known.update(zip(added, fresh, strict=True))
        out = np.empty((len(texts), self.card.dims), dtype=np.float32)
        for i, h in enumerate(hashes):
            out[i] = known[h]
        return out
