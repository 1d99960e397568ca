"""Stable sharding: shard = hash(doc_id) mod S, the same in every process, run and machine.

Python's built-in hash() is salted per process, so a keyed digest is used instead.
"""

from __future__ import annotations

import hashlib

import polars as pl


def shard_of(doc_id: str, num_shards: int) -> int:
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def assign_shards(docs: pl.DataFrame, num_shards: int) -> pl.DataFrame:
    """Adds a `shard` column (UInt32) to a table with a `doc_id` column."""
    shards = [shard_of(d, num_shards) for d in docs["doc_id"].to_list()]
    return docs.with_columns(pl.Series("shard", shards, dtype=pl.UInt32))
