"""Rows keyed by chunk hash, shared by every run of a root: the base of the embedding cache (vectors,
pipeline/models/cache.py) and the term cache (bm25 terms, pipeline/index/term_cache.py).

Partitioned like the shards: by the bucket range of the documents (corpus/sharding.py). A shard looks up only the
partitions that overlap its own bucket range, once per shard, reading each file's hashes (and its rows, or a copy
of it, where it needs them), so a lookup costs what the shard's partition holds, not what the whole cache holds;
partitions written under another shard count still line up (they are bucket ranges too). Every shard of every run
adds one immutable file to its partition (concurrent runs never write the same object), and a partition with more
than `COMPACT_AT` files is compacted into one, so the files a lookup reads stay bounded across runs. Every rewrite
writes its merged file before it deletes the files it read, and skips those another rewrite deleted since it
listed them (their rows are in that one's merged file): at every moment each row is in some file.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import polars as pl

from pipeline.errors import ObjectMissing, StorageError
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from pipeline.storage.tables import parquet_bytes, read_parquet, write_parquet

COMPACT_AT = 8  # files in a partition before it is compacted into one


class ChunkCache:
    """Rows with a `chunk_hash` column under `prefix`, in partitions named by bucket range (`b<lo>-<hi>`)."""

    def __init__(self, storage: Storage, prefix: str) -> None:
        self.storage, self.prefix = storage, prefix

    def partitions(self) -> list[tuple[int, int]]:
        """The bucket range [lo, hi) of every partition."""
        out = []
        for name in self.storage.list(self.prefix):
            a, _, b = name.removeprefix("b").partition("-")
            if name.startswith("b") and a.isdigit() and b.isdigit():
                out.append((int(a), int(b)))
        return out

    def _folder(self, lo: int, hi: int) -> str:
        return f"{self.prefix}/{layout.cache_partition(lo, hi)}"

    def _files(self, lo: int, hi: int, columns: list[str] | None = None) -> Iterator[tuple[str, pl.DataFrame]]:
        """Each file (key, table) of the partitions whose bucket range overlaps [lo, hi). A file compacted away
        after the listing has its rows in the compacted one, written before it went: the partitions are listed
        again for files not yet seen, until none is new."""
        seen: set[str] = set()
        while todo := [f"{folder}/{name}" for a, b in self.partitions() if a < hi and lo < b
                       for folder in [self._folder(a, b)] for name in self.storage.list(folder)
                       if f"{folder}/{name}" not in seen]:
            for key in todo:
                seen.add(key)
                if (table := self._read_if_there(key, columns)) is not None:
                    yield key, table

    def _read_if_there(self, key: str, columns: list[str] | None = None) -> pl.DataFrame | None:
        """A file's table, or None where a compaction deleted it since it was listed (its rows are in the merged
        file)."""
        try:
            return read_parquet(self.storage, key, columns)
        except StorageError:
            if not self.compacted_away(key):
                raise
            return None

    def compacted_away(self, key: str) -> bool:
        """After a StorageError on one of its files: whether the file went since it was listed (a compaction's
        doing: its rows are in the compacted file, which a fresh listing finds); False when it is there, yet
        unreadable."""
        return not self.storage.exists(key)

    def hashes(self, lo: int, hi: int) -> Iterator[tuple[str, pl.Series]]:
        """Each file's key and chunk hashes (its other columns not read), from the partitions overlapping
        [lo, hi); a caller that finds a file gone by the time it copies it gets the compacted file later."""
        for key, table in self._files(lo, hi, ["chunk_hash"]):
            yield key, table["chunk_hash"]

    def lookup(self, lo: int, hi: int, hashes: pl.Series) -> Iterator[pl.DataFrame]:
        """The rows of the wanted hashes, a cache file at a time (memory: one file's matches), from the partitions
        whose bucket range overlaps [lo, hi)."""
        if hashes.is_empty():
            return
        wanted = hashes.implode()
        for _, table in self._files(lo, hi):
            hits = table.filter(pl.col("chunk_hash").is_in(wanted))
            if hits.height:
                yield hits

    def add_copy(self, lo: int, hi: int, name: str, key: str) -> None:
        """The immutable object `key` (a Parquet table of rows by hash) as a file of the partition of [lo, hi),
        copied without passing through here (Storage.copy)."""
        self.storage.copy(key, f"{self._folder(lo, hi)}/{name}.parquet")

    def add_rows(self, lo: int, hi: int, name: str, rows: pl.DataFrame) -> None:
        """One immutable file of new entries (one row per hash) in the partition of bucket range [lo, hi)."""
        if rows.height:
            write_parquet(self.storage, f"{self._folder(lo, hi)}/{name}.parquet",
                          rows.unique("chunk_hash", keep="first", maintain_order=True))

    def compact(self, lo: int, hi: int) -> bool:
        """Merge the partition of [lo, hi) into one file when it holds more than COMPACT_AT. True if it did."""
        folder = self._folder(lo, hi)
        names = self.storage.list(folder)
        if len(names) <= COMPACT_AT:
            return False
        names, tables = self._read_present(folder, names)
        if len(names) > 1:  # a concurrent compaction may have merged them already
            self._rewrite(folder, names, pl.concat(tables))
        return True

    def collect(self, lo: int, hi: int, keep: set[str], dry_run: bool = False) -> tuple[int, int, int]:
        """Keep only the entries whose hash is in `keep` (what retained snapshots need) in the partition of
        [lo, hi), and drop the temp files that killed writers left there; returns its entries (before, after) and
        those temp files."""
        folder = self._folder(lo, hi)
        names, tables = self._read_present(folder, self.storage.list(folder))
        if not tables:  # a folder left empty: nothing to keep or drop
            return 0, 0, 0
        table = pl.concat(tables).unique("chunk_hash")
        kept = table.filter(pl.col("chunk_hash").is_in(pl.Series(sorted(keep), dtype=pl.String)))
        leftovers = self.storage.unfinished(folder)
        if not dry_run:
            if kept.height < table.height:
                self._rewrite(folder, names, kept)
            for name in leftovers:
                self.storage.delete(f"{folder}/{name}")
        return table.height, kept.height, len(leftovers)

    def _read_present(self, folder: str, names: list[str]) -> tuple[list[str], list[pl.DataFrame]]:
        """The listed files of a partition still there, and their tables: one a concurrent rewrite deleted since
        the listing is skipped (its rows are in that rewrite's file)."""
        present, tables = [], []
        for name in names:
            if (table := self._read_if_there(f"{folder}/{name}")) is not None:
                present.append(name)
                tables.append(table)
        return present, tables

    def _rewrite(self, folder: str, names: list[str], table: pl.DataFrame) -> None:
        """Replace a partition's files by one: written first, so a reader sees every entry at every moment."""
        table = table.unique("chunk_hash", keep="first", maintain_order=True)
        if table.height:
            digest = hashlib.blake2b("\n".join(names).encode(), digest_size=8).hexdigest()
            self.storage.write_bytes(f"{folder}/compacted-{digest}.parquet", parquet_bytes(table))
        for name in names:
            with contextlib.suppress(ObjectMissing):  # a concurrent rewrite deleted it first
                self.storage.delete(f"{folder}/{name}")
