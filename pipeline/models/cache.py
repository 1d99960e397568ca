"""Vectors by (model fingerprint, chunk hash), shared by every run of that model: a chunk whose text, chunker
parameters and model did not change is never embedded again (partitioned by bucket range like the shards:
pipeline/storage/chunk_cache.py). Golden-set queries are kept the same way (`CachedQueries`), so re-evaluating
with the same model encodes only queries it has not seen. Keys: layout.cache_prefix.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import polars as pl

from pipeline.errors import ModelError
from pipeline.models.encoder import Encoder
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from pipeline.storage.chunk_cache import ChunkCache
from pipeline.storage.tables import read_parquet, write_parquet


class EmbeddingCache(ChunkCache):
    """The chunk vectors of one model: (chunk_hash, vector) rows; an embedded part of a run is added as it is
    (ChunkCache.add_copy)."""

    def __init__(self, storage: Storage, model_fingerprint: str) -> None:
        super().__init__(storage, layout.cache_prefix("embeddings", model_fingerprint))


def _text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class CachedQueries:
    """An encoder whose query vectors come from the cache when the same model encoded the same query before
    (every scheduled reindex, migration and monitoring run evaluates the same golden set); passages go
    straight through. Golden sets are small: one file per encoded batch, looked up whole."""

    def __init__(self, encoder: Encoder, storage: Storage) -> None:
        self.encoder, self.card, self.tokenizer = encoder, encoder.card, encoder.tokenizer
        # by kernel too: two kernels of one precision (bf16 through oneDNN or autocast) give other vectors, and a
        # query is to be encoded as the build it searches encoded its own
        key = f"{encoder.card.fingerprint}-{encoder.kernel_plan.kernel.name}"
        self.storage, self.prefix = storage, layout.cache_prefix("queries", key)

    @property
    def tokens_encoded(self) -> int:
        return self.encoder.tokens_encoded

    def _known(self, hashes: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for name in self.storage.list(self.prefix):
            table = read_parquet(self.storage, f"{self.prefix}/{name}")
            hits = table.filter(pl.col("chunk_hash").is_in(hashes))
            found.update(zip(hits["chunk_hash"].to_list(), hits["vector"].to_numpy(), strict=True))
        return found

    def encode(self, texts: list[str], kind: Literal["query", "passage"] = "passage") -> np.ndarray:
        if kind != "query":
            return self.encoder.encode(texts, kind)
        hashes = [_text_hash(t) for t in texts]
        known = self._known(hashes)
        missing = list({h: i for i, h in enumerate(hashes) if h not in known}.values())
        if missing:
            fresh = self.encoder.encode([texts[i] for i in missing], kind="query")
            if not np.isfinite(fresh).all():  # never cached: FAISS finds nothing for it, and the query scores 0
                first = texts[missing[int(np.argmax(~np.isfinite(fresh).all(axis=1)))]]
                raise ModelError(f"model {self.card.name} gave a query vector with NaN or infinity (query "
                                 f"{first[:80]!r}); expected finite vectors")
            added = [hashes[i] for i in missing]
            table = pl.DataFrame({"chunk_hash": added}).with_columns(
                pl.Series("vector", fresh, dtype=pl.Array(pl.Float32, fresh.shape[1])))
            # same batch, same name: idempotent
            write_parquet(self.storage, f"{self.prefix}/{_text_hash(chr(10).join(added))}.parquet", table)
            known.update(zip(added, fresh, strict=True))
        out = np.empty((len(texts), self.card.dims), dtype=np.float32)
        for i, h in enumerate(hashes):
            out[i] = known[h]
        return out
