"""The bm25 variant over a run's shards, in two steps on the executor's workers (pipeline/index/bm25.py has the
scoring); the driver only sums counts:

- `analyze_shard` (map, once per shard): each chunk part's texts become terms and counts
  (runs/<run>/shards/<s>/terms/<part>.parquet); chunks analysed before, and rows kept from the live snapshot
  (which carry no text), take theirs from the term cache, looked up once per shard in its bucket range. The shard's
  statistics (chunks, tokens, document frequency per term) go beside them, then its marker. A shard already
  analysed with the same analyzer is skipped, so a resumed run redoes only what is missing.
- `assemble_bm25` (reduce, one task): merge the shards' statistics into corpus-wide ones, score each shard's
  postings with them in the snapshot's row order (the shard's id rows from the index stage) and write the variant's
  files into the version folder. It reads terms, never texts, and holds the vocabulary and one shard's postings:
  the matrix is written a shard at a time on local disk (index/bm25.py `write_bm25`), then copied up.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import polars as pl

from pipeline.config import PipelineConfig
from pipeline.corpus.sharding import bucket_range
from pipeline.errors import IndexBuildError, SnapshotError
from pipeline.index.analyzer import Analyzer
from pipeline.index.bm25 import (
    Bm25Params,
    CorpusStatistics,
    Postings,
    ShardStatistics,
    manifest_entry,
    score_postings,
    write_bm25,
)
from pipeline.index.term_cache import TERMS_SCHEMA, TermCache
from pipeline.jobs.executor import Executor
from pipeline.jobs.indexing import FileEntry, ShardRows, row_layout
from pipeline.jobs.prepare import PreparedRun
from pipeline.storage.backend import Storage
from pipeline.storage.layout import BM25_FILES, LEXICON, TERMS, TERMS_MARKER, bm25_file, index_shard_key, shard_key
from pipeline.storage.tables import read_parquet, write_parquet


@dataclass(frozen=True)
class AnalyzedShard:
    shard: int
    chunks: int
    tokens: int
    analysed: int  # chunks whose text went through the analyzer
    cached: int  # chunks whose terms came from the term cache
    seconds: float
    skipped: bool  # analysed by an earlier attempt of the run

    def to_dict(self) -> dict:
        return asdict(self)


def _marker(storage: Storage, run_id: str, shard: int) -> dict | None:
    key = shard_key(run_id, shard, TERMS_MARKER)
    return json.loads(storage.read_bytes(key)) if storage.exists(key) else None


def analyze_shard(cfg: PipelineConfig, storage: Storage, run_id: str, shard: int) -> AnalyzedShard:
    """Analyse one shard's chunk parts and commit them by the shard's marker; idempotent."""
    analyzer = Analyzer.of(cfg.index.bm25)
    done = _marker(storage, run_id, shard)
    if done is not None:
        if done["analyzer"] != analyzer.fingerprint:
            raise SnapshotError(f"run {run_id} shard {shard} was analysed with analyzer {done['analyzer']}, not "
                                f"{analyzer.fingerprint}; start a new run id for other bm25 settings")
        return AnalyzedShard(shard, done["chunks"], done["tokens"], 0, 0, done["seconds"], skipped=True)
    start = time.perf_counter()
    lo, hi = bucket_range(shard, cfg.run.shards)
    parts = sorted(storage.list(shard_key(run_id, shard, "chunks")))
    if not parts:
        raise SnapshotError(f"run {run_id} shard {shard} has no chunk parts under {shard_key(run_id, shard, 'chunks')}")
    columns = ["chunk_id", "chunk_hash", "text"]
    chunks = {name: read_parquet(storage, shard_key(run_id, shard, f"chunks/{name}"), columns) for name in parts}
    cache = TermCache(storage, analyzer.fingerprint)
    known = cache.terms(lo, hi, pl.concat([c["chunk_hash"] for c in chunks.values()]))
    fresh_rows, frames = [], []
    for name, part in chunks.items():
        missing = part.join(known.select("chunk_hash"), on="chunk_hash", how="anti")
        lost = missing.filter(pl.col("text").is_null())
        if lost.height:  # kept from the live snapshot (no text): their terms must be in the cache
            raise SnapshotError(f"{lost.height} chunks kept from the live snapshot (first: {lost['chunk_id'][0]}) "
                                f"have no terms in {cache.prefix}; run a full reindex (--full) to analyse them again")
        missing = missing.unique("chunk_hash", keep="first", maintain_order=True)
        terms, tf = analyzer.counts(missing["text"].to_list())
        fresh = pl.DataFrame({"chunk_hash": missing["chunk_hash"], "terms": terms, "tf": tf}, schema=TERMS_SCHEMA)
        fresh_rows.append(fresh)
        known = pl.concat([known, fresh])  # a later part may repeat a text of this one
        out = part.select("chunk_id", "chunk_hash").join(known, on="chunk_hash", how="left", maintain_order="left")
        write_parquet(storage, shard_key(run_id, shard, f"{TERMS}/{name}"), out)
        frames.append(out.select("terms", "tf"))
    fresh = pl.concat(fresh_rows)
    cache.add(lo, hi, f"{run_id}-{shard:05d}", fresh)
    cache.compact(lo, hi)
    terms = pl.concat(frames)
    stats = ShardStatistics.of(terms["terms"], terms["tf"])
    write_parquet(storage, shard_key(run_id, shard, LEXICON), stats.df)
    seconds = round(time.perf_counter() - start, 3)
    analysed = fresh.height
    storage.write_bytes(shard_key(run_id, shard, TERMS_MARKER), json.dumps(
        {"analyzer": analyzer.fingerprint, **stats.to_dict(), "parts": parts, "analysed": analysed,
         "cached": stats.chunks - analysed, "seconds": seconds}).encode())
    return AnalyzedShard(shard, stats.chunks, stats.tokens, analysed, stats.chunks - analysed, seconds, skipped=False)


@dataclass(frozen=True)
class StagedBm25:
    """The bm25 variant, written into the version folder: its manifest entry and files."""

    params: dict
    files: list[FileEntry]


def assemble_bm25(cfg: PipelineConfig, storage: Storage, run_id: str, target: Storage,
                  shards: list[ShardRows]) -> StagedBm25:
    """The reduce step: corpus-wide statistics from the shards', then every shard's postings scored with them, in
    snapshot row order; the variant's files written into `target`."""
    analyzer = Analyzer.of(cfg.index.bm25)
    markers = {}
    for s in shards:
        markers[s.shard] = _marker(storage, run_id, s.shard)
        if markers[s.shard] is None or markers[s.shard]["analyzer"] != analyzer.fingerprint:
            raise SnapshotError(f"run {run_id} shard {s.shard} has no {TERMS_MARKER} marker of analyzer "
                                f"{analyzer.fingerprint}; it was not analysed for bm25")
    stats = CorpusStatistics.merge(ShardStatistics(markers[s.shard]["chunks"], markers[s.shard]["tokens"],
                                                   read_parquet(storage, shard_key(run_id, s.shard, LEXICON)))
                                   for s in shards)
    rows_total = sum(s.rows for s in shards)
    if stats.chunks != rows_total:
        raise IndexBuildError(f"run {run_id}: the shards' bm25 statistics count {stats.chunks} chunks, the id table "
                              f"{rows_total}; expected the same chunks")
    params = Bm25Params.of(cfg.index.bm25)

    def scored() -> Iterator[Postings]:  # a shard at a time, in row order
        for s in shards:
            rows = read_parquet(storage, index_shard_key(run_id, s.shard, "ids.parquet"), ["chunk_id", "row"])
            part = pl.concat([read_parquet(storage, shard_key(run_id, s.shard, f"{TERMS}/{name}"))
                              for name in markers[s.shard]["parts"]]).join(rows, on="chunk_id", how="left")
            if part["row"].null_count():
                lost = part.filter(pl.col("row").is_null())["chunk_id"][0]
                raise IndexBuildError(f"run {run_id} shard {s.shard}: chunk {lost} has terms but no row in the id "
                                      "table")
            yield score_postings(part, stats, params)

    with tempfile.TemporaryDirectory(prefix="embedpipe-bm25-") as tmp:
        cells = write_bm25(Path(tmp), scored(), stats, params)
        entries = [FileEntry(name, *target.put_file(name, Path(tmp) / name)) for name in map(bm25_file, BM25_FILES)]
    return StagedBm25(manifest_entry(params, analyzer, stats, cells, {e.name: e.bytes for e in entries}), entries)


@dataclass(frozen=True)
class Bm25Build:
    staged: StagedBm25
    counts: dict  # bm25_*: where and how much was analysed, and the reduce's seconds


def build_bm25(cfg: PipelineConfig, storage: Storage, prepared: PreparedRun, target: Storage,
               executor: Executor) -> Bm25Build:
    """Analyse every shard, then assemble the variant, on the executor's workers."""
    shards = row_layout(prepared.shards, prepared.shard_rows)
    analysed = executor.map(partial(analyze_shard, cfg, storage, prepared.run_id), [s.shard for s in shards])
    start = time.perf_counter()
    [staged] = executor.map(partial(assemble_bm25, cfg, storage, prepared.run_id, target), [shards])
    fresh = [r for r in analysed if not r.skipped]
    return Bm25Build(staged, {"bm25_analysed_in": executor.where, "bm25_analysed": sum(r.analysed for r in fresh),
                              "bm25_terms_from_cache": sum(r.cached for r in fresh),
                              "bm25_analyse_seconds": round(sum(r.seconds for r in fresh), 3),
                              "bm25_reduce_seconds": round(time.perf_counter() - start, 3)})
