"""Vectors by (model fingerprint, chunk hash), shared by every run of that model: a chunk whose text, chunker
parameters and model did not change is never embedded again. Golden-set queries are kept the same way
(`CachedQueries`), so re-evaluating with the same model encodes only queries it has not seen.

The chunk cache is partitioned like the shards: by the bucket range of the documents (corpus/sharding.py). A
shard looks up only the partitions that overlap its own bucket range, once per shard, reading each file with a
filter on the hashes it needs, so a lookup costs what the shard's partition holds, not what the whole cache
holds; partitions written under another shard count still line up (they are bucket ranges too). Every shard of
every run adds one immutable file to its partition (concurrent runs never write the same object), and a
partition with more than `COMPACT_AT` files is compacted into one, so the files a lookup reads stay bounded
across runs. Keys: layout.cache_prefix.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from typing import Literal

import numpy as np
import polars as pl

from pipeline.errors import StorageError
from pipeline.models.encoder import Encoder
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from pipeline.storage.tables import parquet_bytes, read_parquet, write_parquet

COMPACT_AT = 8  # files in a partition before it is compacted into one


class EmbeddingCache:
    """The chunk vectors of one model, in partitions named by bucket range (`b<lo>-<hi>`)."""

    def __init__(self, storage: Storage, model_fingerprint: str) -> None:
        self.storage, self.prefix = storage, layout.cache_prefix("embeddings", model_fingerprint)

    def partitions(self) -> list[tuple[int, int]]:
        """The bucket range [lo, hi) of every partition."""
        out = []
        for name in self.storage.list(self.prefix):
            a, _, b = name.removeprefix("b").partition("-")
            if name.startswith("b") and a.isdigit() and b.isdigit():
                out.append((int(a), int(b)))
        return out

    def _partitions(self, lo: int, hi: int) -> list[str]:
        """The partitions whose bucket range overlaps [lo, hi)."""
        return [layout.cache_partition(a, b) for a, b in self.partitions() if a < hi and lo < b]

    def lookup(self, lo: int, hi: int, hashes: set[str]) -> Iterator[pl.DataFrame]:
        """(chunk_hash, vector) rows for the wanted hashes, a cache file at a time (memory: one file's matches)."""
        if not hashes:
            return
        wanted = pl.Series(sorted(hashes), dtype=pl.String)
        for partition in self._partitions(lo, hi):
            folder = f"{self.prefix}/{partition}"
            for name in self.storage.list(folder):
                try:
                    table = read_parquet(self.storage, f"{folder}/{name}")
                except StorageError:  # compacted away after the listing: its rows are in the compacted file
                    continue
                hits = table.filter(pl.col("chunk_hash").is_in(wanted))
                if hits.height:
                    yield hits

    def add(self, lo: int, hi: int, name: str, hashes: list[str], vectors: np.ndarray) -> None:
        """One immutable file of new entries in the partition of bucket range [lo, hi)."""
        if not hashes:
            return
        table = pl.DataFrame({"chunk_hash": hashes}).with_columns(
            pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, vectors.shape[1]))).unique("chunk_hash",
                                                                                                 keep="first")
        write_parquet(self.storage, f"{self.prefix}/{layout.cache_partition(lo, hi)}/{name}.parquet", table)

    def compact(self, lo: int, hi: int) -> bool:
        """Merge the partition of [lo, hi) into one file when it holds more than COMPACT_AT. True if it did."""
        folder = f"{self.prefix}/{layout.cache_partition(lo, hi)}"
        names = self.storage.list(folder)
        if len(names) <= COMPACT_AT:
            return False
        self._rewrite(folder, names, pl.concat([read_parquet(self.storage, f"{folder}/{n}") for n in names]))
        return True

    def collect(self, lo: int, hi: int, keep: set[str], dry_run: bool = False) -> tuple[int, int]:
        """Keep only the entries whose hash is in `keep` (what retained snapshots need) in the partition of
        [lo, hi); returns its entries (before, after)."""
        folder = f"{self.prefix}/{layout.cache_partition(lo, hi)}"
        names = self.storage.list(folder)
        table = pl.concat([read_parquet(self.storage, f"{folder}/{n}") for n in names]).unique("chunk_hash")
        kept = table.filter(pl.col("chunk_hash").is_in(pl.Series(sorted(keep), dtype=pl.String)))
        if not dry_run and kept.height < table.height:
            self._rewrite(folder, names, kept)
        return table.height, kept.height

    def _rewrite(self, folder: str, names: list[str], table: pl.DataFrame) -> None:
        """Replace a partition's files by one: written first, so a reader sees every entry at every moment."""
        table = table.unique("chunk_hash", keep="first", maintain_order=True)
        if table.height:
            digest = hashlib.blake2b("\n".join(names).encode(), digest_size=8).hexdigest()
            self.storage.write_bytes(f"{folder}/compacted-{digest}.parquet", parquet_bytes(table))
        for name in names:
            self.storage.delete(f"{folder}/{name}")


def _text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class CachedQueries:
    """An encoder whose query vectors come from the cache when the same model encoded the same query before
    (every scheduled reindex, migration and monitoring run evaluates the same golden set); passages go
    straight through. Golden sets are small: one file per encoded batch, looked up whole."""

    def __init__(self, encoder: Encoder, storage: Storage) -> None:
        self.encoder, self.card, self.tokenizer = encoder, encoder.card, encoder.tokenizer
        self.storage, self.prefix = storage, layout.cache_prefix("queries", encoder.card.fingerprint)

    @property
    def tokens_encoded(self) -> int:
        return self.encoder.tokens_encoded

    def _known(self, hashes: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for name in self.storage.list(self.prefix):
            table = pl.read_parquet(io.BytesIO(self.storage.read_bytes(f"{self.prefix}/{name}")))
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
