"""Stable sharding through fixed buckets: a document's bucket is the top 16 bits of a keyed digest of its id (the same
in every process, run and machine: Python's built-in hash() is salted per process), and shard s of S owns the
contiguous bucket range [ceil(s * B / S), ceil((s + 1) * B / S)).

Because shards are bucket ranges, anything keyed by bucket lines up with any shard count: a shard reads only its
own range of the embedding cache and of the live snapshot's id table (whose rows carry their bucket), even when
`run.shards` changed since they were written.
"""

from __future__ import annotations

import hashlib

import polars as pl

BUCKETS = 1 << 16  # run.shards may be at most this


def bucket_of(doc_id: str) -> int:
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 48


def shard_of_bucket(bucket: int, num_shards: int) -> int:
    return bucket * num_shards // BUCKETS


def shard_of(doc_id: str, num_shards: int) -> int:
    return shard_of_bucket(bucket_of(doc_id), num_shards)


def bucket_range(shard: int, num_shards: int) -> tuple[int, int]:
    """The buckets [lo, hi) that shard `shard` of `num_shards` owns."""
    return -(-shard * BUCKETS // num_shards), -(-(shard + 1) * BUCKETS // num_shards)


def assign_shards(docs: pl.DataFrame, num_shards: int) -> pl.DataFrame:
    """Adds `bucket` (UInt16) and `shard` (UInt32) columns to a table with a `doc_id` column."""
    buckets = pl.Series("bucket", [bucket_of(d) for d in docs["doc_id"].to_list()], dtype=pl.UInt16)
    return docs.with_columns(buckets, (buckets.cast(pl.UInt64) * num_shards // BUCKETS).cast(pl.UInt32).alias("shard"))
