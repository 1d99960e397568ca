"""Shards as units of work: inputs written per shard, outputs committed by a marker written last.

    runs/<run_id>/shards/<shard>/chunks.parquet    what to embed (chunk ids, hashes, text)
    runs/<run_id>/shards/<shard>/vectors.parquet   chunk_id, chunk_hash, vector
    runs/<run_id>/shards/<shard>/_SUCCESS          JSON counts + model fingerprint; its existence = done

A rerun of the same run id skips shards whose marker exists, so a crash costs only unfinished shards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.embedding_cache import EmbeddingCache
from pipeline.encoder import Encoder
from pipeline.errors import SnapshotError
from pipeline.storage import Storage
from pipeline.tables import read_parquet, write_parquet

MARKER = "_SUCCESS"
MODEL_CARD_KEY = "embedpipe.model_card"


def shard_key(run_id: str, shard: int, name: str = "") -> str:
    return f"runs/{run_id}/shards/{shard:05d}/{name}".rstrip("/")


def is_committed(storage: Storage, run_id: str, shard: int) -> bool:
    return storage.exists(shard_key(run_id, shard, MARKER))


def write_shard_inputs(storage: Storage, run_id: str, chunks: pl.DataFrame) -> list[int]:
    """Write each shard's chunks (a `shard` column says which); committed shards are left alone."""
    shards = []
    for (shard,), part in chunks.partition_by("shard", as_dict=True, maintain_order=True).items():
        shards.append(int(shard))
        if not is_committed(storage, run_id, int(shard)):
            write_parquet(storage, shard_key(run_id, int(shard), "chunks.parquet"),
                          part.select("chunk_id", "chunk_hash", "text"))
    return sorted(shards)


@dataclass(frozen=True)
class ShardResult:
    shard: int
    chunks: int
    tokens: int  # tokens actually embedded (cache hits cost none)
    seconds: float
    skipped: bool  # True when an earlier attempt had already committed it
    embedded: int = 0  # chunks sent through the model
    cached: int = 0  # chunks whose vectors came from the embedding cache

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def embed_shard(storage: Storage, run_id: str, shard: int, encoder: Encoder,
                after_encode: Callable[[int], None] | None = None) -> ShardResult:
    """Embed one shard's chunks and commit it; idempotent (a committed shard is returned as skipped).
    `after_encode(shard)` runs between encoding and writing: the fault-injection point for tests."""
    import time

    marker_key = shard_key(run_id, shard, MARKER)
    if storage.exists(marker_key):
        done = json.loads(storage.read_bytes(marker_key))
        if done["model_fingerprint"] != encoder.card.fingerprint:
            raise SnapshotError(f"run {run_id} shard {shard} was embedded with model {done['model_fingerprint']}, "
                                f"not {encoder.card.fingerprint}; start a new run id for a different model")
        return ShardResult(shard, done["chunks"], done["tokens"], done["seconds"], skipped=True)
    start = time.perf_counter()
    chunks = read_parquet(storage, shard_key(run_id, shard, "chunks.parquet"))
    hashes = chunks["chunk_hash"].to_list()
    cache = EmbeddingCache(storage, encoder.card.fingerprint)
    known = cache.lookup(hashes)
    missing = [i for i, h in enumerate(hashes) if h not in known]
    texts = [chunks["text"][i] for i in missing]
    fresh = encoder.encode(texts, kind="passage")
    if after_encode:
        after_encode(shard)
    cache.add(f"{run_id}-{shard:05d}", [hashes[i] for i in missing], fresh)
    vectors = np.empty((len(hashes), encoder.card.dims), dtype=np.float32)
    vectors[missing] = fresh
    for i, h in enumerate(hashes):
        if h in known:
            vectors[i] = known[h]
    tokens = sum(len(x) for x in encoder.tokenizer(texts, truncation=True, max_length=encoder.card.max_tokens)
                 ["input_ids"]) if texts else 0
    out = chunks.select("chunk_id", "chunk_hash").with_columns(
        pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, encoder.card.dims)))
    # The model card travels with the vectors, in the Parquet footer.
    write_parquet(storage, shard_key(run_id, shard, "vectors.parquet"), out,
                  {MODEL_CARD_KEY: json.dumps(encoder.card.to_dict(), sort_keys=True)})
    seconds = round(time.perf_counter() - start, 3)
    storage.write_bytes(marker_key, json.dumps({"chunks": len(hashes), "tokens": tokens, "seconds": seconds,
                                                "embedded": len(missing), "cached": len(known),
                                                "model_fingerprint": encoder.card.fingerprint}).encode())
    return ShardResult(shard, len(hashes), tokens, seconds, skipped=False, embedded=len(missing), cached=len(known))


def load_vectors(storage: Storage, run_id: str, shards: list[int]) -> tuple[pl.DataFrame, np.ndarray]:
    """All committed shards' (chunk_id, chunk_hash) and vectors, in chunk-id order (independent of sharding)."""
    parts = []
    for shard in shards:
        if not is_committed(storage, run_id, shard):
            raise SnapshotError(f"run {run_id} shard {shard} has no {MARKER} marker; it was not embedded")
        parts.append(read_parquet(storage, shard_key(run_id, shard, "vectors.parquet")))
    table = pl.concat(parts).sort("chunk_id")
    vectors = np.ascontiguousarray(table["vector"].to_numpy(), dtype=np.float32)
    return table.drop("vector"), vectors
