"""A shard's chunks looked up in the embedding cache, once per shard while it is prepared (jobs/prepare.py): the
vectors the cache has are handed to the shard, so that only the others are embedded."""

from __future__ import annotations

import polars as pl

from pipeline.errors import SnapshotError, StorageError
from pipeline.models.cache import EmbeddingCache
from pipeline.models.card import ModelCard
from pipeline.storage.backend import Storage
from pipeline.storage.layout import shard_key
from pipeline.storage.tables import read_parquet, write_parquet


def attach_cached(storage: Storage, run_id: str, shard: int, lo: int, hi: int, metadata: pl.DataFrame | None,
                  card: ModelCard, counts: dict) -> set[str]:
    """Give the shard the cache's vectors for its chunks, as vectors/cached-<n>.parquet (rows of chunk hash and
    vector): a cache file the shard wants most rows of is copied whole (Storage.copy: a hard link locally, a
    server-side copy on S3, its vectors never decoded here; the index stage joins by hash, so its other rows are
    ignored), another file as the rows wanted. Returns the chunk parts that still hold rows to embed. Rows kept
    from the live snapshot have no text, so their vectors must be in the cache."""
    counts["cached"] = 0
    if metadata is None:
        return set()
    cache, found = EmbeddingCache(storage, card.fingerprint), pl.Series("chunk_hash", [], pl.String)
    # hashes stay polars Series: a shard's hashes as Python strings cost more than the lookup itself
    wanted = metadata["chunk_hash"].implode()
    for n, (key, hashes) in enumerate(cache.hashes(lo, hi)):
        hits = hashes.filter(hashes.is_in(wanted) & ~hashes.is_in(found.implode()))
        if hits.is_empty():
            continue
        part = shard_key(run_id, shard, f"vectors/cached-{n:05d}.parquet")
        try:
            if 2 * hits.len() >= hashes.len():
                storage.copy(key, part)
            else:
                write_parquet(storage, part, read_parquet(storage, key).filter(pl.col("chunk_hash").is_in(
                    hits.implode())))
        except StorageError:
            if not cache.compacted_away(key):
                raise
            continue  # its rows come with the compacted file, later in cache.hashes
        found = pl.concat([found, hits], rechunk=False)
    cached = metadata["chunk_hash"].is_in(found.implode())
    counts["cached"] = int(cached.sum())
    missing = metadata.filter(~cached)
    lost = missing.filter(~pl.col("has_text"))
    if lost.height:  # kept from the live snapshot (no text), yet no vector: embedding them needs their documents
        raise SnapshotError(f"{lost.height} chunks kept from the live snapshot (first: {lost['chunk_id'][0]}) have "
                            f"no vector in {cache.prefix}; run a full reindex (--full) to embed them again")
    counts["to_embed"] = missing.height
    return set(missing["part"].unique().to_list())
