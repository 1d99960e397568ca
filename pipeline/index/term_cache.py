"""Chunk terms by (analyzer fingerprint, chunk hash), shared by every run with that analyzer: the bm25 side of
the embedding cache, partitioned the same way (pipeline/storage/chunk_cache.py). Rows an incremental run keeps
from the live snapshot carry no text; their terms come from here, so their postings are exactly those a full
rebuild would analyse.
"""

from __future__ import annotations

import polars as pl

from pipeline.storage import layout
from pipeline.storage.backend import Storage
from pipeline.storage.chunk_cache import ChunkCache

TERMS_SCHEMA = {"chunk_hash": pl.String, "terms": pl.List(pl.String), "tf": pl.List(pl.UInt32)}


class TermCache(ChunkCache):
    def __init__(self, storage: Storage, analyzer_fingerprint: str) -> None:
        super().__init__(storage, layout.cache_prefix("terms", analyzer_fingerprint))

    def terms(self, lo: int, hi: int, hashes: pl.Series) -> pl.DataFrame:
        """The cached rows (TERMS_SCHEMA) of those of `hashes` seen before in buckets [lo, hi), one per hash."""
        found = list(self.lookup(lo, hi, hashes))
        if not found:
            return pl.DataFrame(schema=TERMS_SCHEMA)
        return pl.concat(found).select(*TERMS_SCHEMA).cast(TERMS_SCHEMA).unique("chunk_hash", keep="first",
                                                                                 maintain_order=True)

    def add(self, lo: int, hi: int, name: str, rows: pl.DataFrame) -> None:
        self.add_rows(lo, hi, name, rows.select(*TERMS_SCHEMA).cast(TERMS_SCHEMA))
