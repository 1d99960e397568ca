"""What an incremental reindex leaves unread (pipeline/corpus/files.py says which files, and why that is safe):
the files decided once per run, and in each shard the live documents of those files, kept or dropped."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from pipeline.config import PipelineConfig
from pipeline.corpus.files import FILES_SCHEMA, to_hash, unread_files, with_sha256
from pipeline.corpus.pieces import InputFile
from pipeline.jobs.shards import LIVE_ROW
from pipeline.redaction import redact
from pipeline.snapshots.manifest import recorded_config
from pipeline.storage.backend import Storage
from pipeline.storage.layout import DOCUMENTS, FILES, MANIFEST, shard_key, unread_key
from pipeline.storage.tables import read_parquet, write_parquet


def files_left_unread(cfg: PipelineConfig, storage: Storage, run_id: str, live: Storage | None,
                      listed: list[InputFile], chunking: dict, hash_files: Callable[[list[InputFile]], list[str]]
                      ) -> pl.DataFrame:
    """What the run decides of its `listed` files (corpus/files.py unread_files: live's rows of those it leaves
    unread, and the sha256 of those it hashed), decided by its first attempt (a resumed one leaves the same,
    whatever live is by then). `hash_files` gives the files' sha256, on the workers. Nothing is left unread without
    a live version to compare with (a full build; a backfill, which passes None), where live was read with other
    corpus settings or chunked otherwise (its rows would not be what reading the files now gives) or has no files
    table (older versions); the files are hashed all the same, for the version this run publishes."""
    if storage.exists(unread_key(run_id)):
        return read_parquet(storage, unread_key(run_id))
    live_files = _comparable(cfg, live, chunking)
    hashed = to_hash(listed, live_files)
    decided = unread_files(listed, live_files, dict(zip([redact(f.url) for f in hashed], hash_files(hashed),
                                                        strict=True)))
    write_parquet(storage, unread_key(run_id), decided)
    return decided


def _comparable(cfg: PipelineConfig, live: Storage | None, chunking: dict) -> pl.DataFrame:
    """Live's files table, where its rows are what reading the files now would give; else an empty one."""
    none = pl.DataFrame(schema=FILES_SCHEMA)
    if live is None or not all(live.exists(name) for name in (FILES, DOCUMENTS, MANIFEST)):
        return none
    manifest = json.loads(live.read_bytes(MANIFEST))
    if manifest.get("config", {}).get("corpus") != recorded_config(cfg)["corpus"] or \
            manifest.get("chunking") != chunking:
        return none
    return with_sha256(read_parquet(live, FILES))


def in_buckets(live: Storage, name: str, lo: int, hi: int) -> pl.DataFrame:
    """The rows of one of the live snapshot's tables (ids, documents) in buckets [lo, hi): only the row groups
    that hold them are read. The ids table's `row` comes as LIVE_ROW."""
    import pyarrow.parquet as pq

    table = pq.read_table(live.path(name), filesystem=live.fs, filters=[("bucket", ">=", lo), ("bucket", "<", hi)])
    return pl.from_arrow(table).rename({"row": LIVE_ROW}, strict=False)


@dataclass(frozen=True)
class Unread:
    """A shard's documents in files left unread: those live's rows stand for (`kept`), and those a record read
    now, in an earlier file, took the id of (`lost`: later copies, dropped as a full build would)."""

    kept: pl.DataFrame  # documents rows (corpus/files.py)
    lost: pl.DataFrame

    @classmethod
    def of(cls, storage: Storage, run_id: str, shard: int, documents: pl.DataFrame, files: frozenset[str]
           ) -> Unread:
        """`documents`: the live documents table's rows of the shard; `files`: those left unread."""
        unread = documents.filter(pl.col("source").is_in(list(files)))
        names = sorted(storage.list(shard_key(run_id, shard, "docs"))) if unread.height else []
        if not names:
            return cls(unread, unread.clear())
        read = pl.concat([read_parquet(storage, shard_key(run_id, shard, f"docs/{n}"), ["doc_id", "source"])
                          for n in names]).unique("doc_id", keep="first", maintain_order=True)
        read = read.rename({"source": "read_in"})
        met = unread.join(read.select("doc_id", "read_in"), on="doc_id", how="left")
        lost = pl.col("read_in").is_not_null() & (pl.col("read_in") < pl.col("source"))  # files in name order
        return cls(met.filter(~lost).drop("read_in"), met.filter(lost).drop("read_in"))
