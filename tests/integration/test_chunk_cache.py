"""The chunk cache under other runs' writes: a file compacted away during a lookup, a damaged file."""

import io

import numpy as np
import polars as pl
import pytest

from pipeline.errors import StorageError
from pipeline.models.cache import EmbeddingCache
from pipeline.storage import chunk_cache
from pipeline.storage.backend import Storage
from pipeline.storage.tables import VECTOR_DIMS_KEY


def rows(first: int, n: int = 10) -> pl.DataFrame:
    vectors = np.arange(first * 4, (first + n) * 4, dtype=np.float32).reshape(n, 4)
    return pl.DataFrame({"chunk_hash": [f"h{i}" for i in range(first, first + n)]}).with_columns(
        pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, 4)))


def test_a_file_compacted_away_during_a_lookup_is_made_up_by_the_compacted_file(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path))
    cache = EmbeddingCache(storage, "model")
    for i in range(3):
        cache.add_rows(0, 16, f"run-{i}", rows(10 * i))
    read = Storage.read_bytes

    def another_run_compacts_after_the_first_read(self, key):
        data = read(self, key)
        if chunk_cache.COMPACT_AT:  # once: the partition's three files become one, as a concurrent run does
            monkeypatch.setattr(chunk_cache, "COMPACT_AT", 0)
            assert cache.compact(0, 16)
        return data

    monkeypatch.setattr(Storage, "read_bytes", another_run_compacts_after_the_first_read)
    found = pl.concat(cache.lookup(0, 16, pl.Series([f"h{i}" for i in range(30)]))).unique("chunk_hash")
    assert chunk_cache.COMPACT_AT == 0  # the compaction did happen mid-lookup: the partition is one file now
    assert len(storage.list(f"{cache.prefix}/b00000-00016")) == 1
    assert found.sort("chunk_hash").equals(pl.concat([rows(0), rows(10), rows(20)]).sort("chunk_hash"))


def test_a_damaged_cache_file_is_an_error_not_a_miss(tmp_path):
    storage = Storage(str(tmp_path))
    cache = EmbeddingCache(storage, "model")
    cache.add_rows(0, 16, "good", rows(0))
    bad, buf = rows(10).with_columns(pl.Series("vector", [b"\x00" * 12] * 10, dtype=pl.Binary)), io.BytesIO()
    bad.write_parquet(buf, metadata={VECTOR_DIMS_KEY: "4"})
    storage.write_bytes(f"{cache.prefix}/b00000-00016/bad.parquet", buf.getvalue())
    with pytest.raises(StorageError, match=r"bad.parquet: 10 of its 10 vectors are not 4 float32"):
        list(cache.lookup(0, 16, pl.Series(["h0", "h10"])))


@pytest.mark.parametrize("when", ["read", "write_bytes"], ids=["while-it-reads", "before-it-deletes"])
def test_two_runs_compacting_one_partition_at_once_keep_every_row(tmp_path, monkeypatch, when):
    """Two runs embedding the same bucket range compact its partition at the same time: the other one finishes
    while this one reads the files (they vanish under it) or just before this one deletes them. Neither fails, and
    every row stays findable in one file."""
    storage = Storage(str(tmp_path))
    cache = EmbeddingCache(storage, "model")
    for i in range(chunk_cache.COMPACT_AT + 1):
        cache.add_rows(0, 16, f"run-{i}", rows(10 * i))
    other = EmbeddingCache(Storage(str(tmp_path)), "model")  # the other run's
    real = getattr(Storage, when if when == "write_bytes" else "read_bytes")
    done = []

    def the_other_run_compacts_first(self, key, *args):
        if not done and self is cache.storage:
            done.append(other.compact(0, 16))
        return real(self, key, *args)

    monkeypatch.setattr(Storage, when if when == "write_bytes" else "read_bytes", the_other_run_compacts_first)
    assert cache.compact(0, 16) and done == [True]
    monkeypatch.undo()
    every = [f"h{i}" for i in range(10 * (chunk_cache.COMPACT_AT + 1))]
    found = pl.concat(cache.lookup(0, 16, pl.Series(every)))
    assert sorted(found["chunk_hash"].to_list()) == sorted(every)
    assert len(storage.list(f"{cache.prefix}/b00000-00016")) == 1
