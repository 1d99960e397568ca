"""Chunk terms by (analyzer fingerprint, chunk hash), shared by every run with that analyzer: the bm25 side of
the embedding cache (pipeline/models/cache.py). Rows an incremental run keeps from the live snapshot carry no
text; their terms come from here, so their postings are exactly those a full rebuild would analyse.

One file (chunk_hash, terms, tf) per analysed part, under layout.cache_prefix("terms", ...), written before its
shard's analysis marker: entries are immutable and concurrent runs never write the same object.
"""

from __future__ import annotations

import polars as pl

from pipeline.storage import layout
from pipeline.storage.backend import Storage
from pipeline.storage.tables import read_parquet, write_parquet

TERMS_SCHEMA = {"chunk_hash": pl.String, "terms": pl.List(pl.String), "tf": pl.List(pl.UInt32)}


class TermCache:
    def __init__(self, storage: Storage, analyzer_fingerprint: str) -> None:
        self.storage, self.prefix = storage, layout.cache_prefix("terms", analyzer_fingerprint)

    def lookup(self, hashes: list[str]) -> pl.DataFrame:
        """The cached rows (TERMS_SCHEMA) of those of `hashes` seen before, one per hash."""
        wanted, found = set(hashes), []
        for name in self.storage.list(self.prefix):
            if not wanted:
                break
            if name.endswith(".parquet"):  # one analysed part each: memory stays bounded
                part = read_parquet(self.storage, f"{self.prefix}/{name}").filter(pl.col("chunk_hash").is_in(wanted))
                found.append(part)
                wanted -= set(part["chunk_hash"].to_list())
        return pl.concat(found) if found else pl.DataFrame(schema=TERMS_SCHEMA)

    def add(self, name: str, rows: pl.DataFrame) -> None:
        if rows.height:
            write_parquet(self.storage, f"{self.prefix}/{name}.parquet", rows.select(*TERMS_SCHEMA).cast(TERMS_SCHEMA))
