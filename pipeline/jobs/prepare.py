"""The first steps of every build, as units of work that run on any worker:

1. `read_piece` (jobs/read_piece.py), once per read piece (corpus/pieces.py): its records read, validated, hashed
   and sent to their shards.
2. `prepare_shard`, once per shard: take the shard's documents in input order, drop later copies of an id (two
   records with the same id always land in the same shard, so this is the whole corpus's duplicate check),
   compare with the live snapshot's rows of this shard only, chunk what is redone, and look the chunks up in the
   embedding cache (the shard's partition, once): every chunk row goes to `chunks/` parts (those kept from live
   without text), the vectors the cache has for them to `vectors/`. An incremental reindex leaves unread the files
   live recorded as they are now (corpus/files.py): their documents are live's rows, unless a record read now takes
   their id from an earlier file.

Each commits a marker written last (its counts), so a rerun of the run id redoes only unfinished units; the
driver only sums counts (`PreparedRun.of`). Also here: the checks that run before any engine starts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache, partial

import polars as pl

from pipeline.config import ChunkingConfig, ModelConfig, PipelineConfig
from pipeline.corpus.chunking import Chunker
from pipeline.corpus.delta import Delta, Selection
from pipeline.corpus.files import FILE_COUNTS, counts_by_url, documents_of, files_sha256, files_table, hash_batches
from pipeline.corpus.pieces import InputFile, listing_digest, plan_pieces
from pipeline.corpus.readers import (
    DUPLICATE,
    QUARANTINE_SCHEMA,
    corpus_url,
    describe_corpus,
)
from pipeline.corpus.sharding import bucket_range
from pipeline.errors import InputError, SelectionError
from pipeline.jobs.cached_vectors import attach_cached
from pipeline.jobs.executor import Executor, LocalExecutor
from pipeline.jobs.read_piece import PieceResult, read_piece
from pipeline.jobs.run_folder import check_run_unchanged, prepared_settings
from pipeline.jobs.shards import INPUT_COLUMNS, LIVE_ROW
from pipeline.jobs.unread import Unread, files_left_unread, in_buckets
from pipeline.jobs.worker import node, peak_rss_mb
from pipeline.models.card import ModelCard
from pipeline.models.encoder import passage_prefix, tokenizer_for
from pipeline.redaction import redact
from pipeline.storage.backend import Storage
from pipeline.storage.layout import (
    DOCUMENTS,
    IDS,
    PREPARED,
    quarantine_key,
    run_files_key,
    shard_key,
)
from pipeline.storage.tables import read_parquet, write_parquet


def make_chunker(cfg: PipelineConfig) -> Chunker:
    """The config's chunker (one per process and model: loading a tokenizer takes a second)."""
    return _chunker(cfg.model, cfg.chunking)


@lru_cache(maxsize=4)
def _chunker(model: ModelConfig, chunking: ChunkingConfig) -> Chunker:
    tokenizer, limit = tokenizer_for(model)
    return Chunker(tokenizer, chunking, limit, passage_prefix(model))


@dataclass(frozen=True)
class ShardPrep:
    """What preparing a shard found: its counts (documents by fate, chunks, cache hits) and its share of the
    corpus fingerprint (a sum of content hashes, so the shards' shares add up to the corpus's)."""

    shard: int
    buckets: tuple[int, int]  # the bucket range [lo, hi) the shard owns
    counts: dict[str, int]
    fingerprint: int
    chunk_parts: list[str] = field(default_factory=list)  # chunks/ parts with rows to embed
    missing_ids: list[str] = field(default_factory=list)  # a backfill's doc ids of this shard the corpus lacks
    dropped: dict[str, int] = field(default_factory=dict)  # later copies of an id dropped, by file (redacted url)
    skipped: bool = False
    node: str = ""  # where it was prepared
    peak_rss_mb: float = 0.0  # the worker's

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ShardInput:
    """What a shard is compared with: the live version (None: a full build) and a backfill's selection."""

    live: Storage | None  # the live snapshot's version folder
    selection: Selection | None = None
    unread: frozenset[str] = frozenset()  # input files left unread (redacted urls): their documents are live's


def prepare_shard(cfg: PipelineConfig, storage: Storage, run_id: str, shard: int, against: ShardInput,
                  card: ModelCard) -> ShardPrep:
    """Deduplicate, compare, chunk and look up one shard (see the module's docstring); idempotent."""
    marker = shard_key(run_id, shard, PREPARED)
    if storage.exists(marker):
        done = json.loads(storage.read_bytes(marker))
        return ShardPrep(**done | {"buckets": tuple(done["buckets"]), "skipped": True})
    for name in storage.list(shard_key(run_id, shard)):  # what an earlier attempt derived would add to this one's
        if name != "docs":
            storage.delete(shard_key(run_id, shard, name), recursive=True)
    lo, hi = bucket_range(shard, cfg.run.shards)
    chunker = make_chunker(cfg)
    live = in_buckets(against.live, IDS, lo, hi) if against.live is not None else None
    unread = Unread.of(storage, run_id, shard, in_buckets(against.live, DOCUMENTS, lo, hi), against.unread) \
        if against.unread else None
    live_unread = pl.DataFrame()
    if unread is not None:  # live's rows of the documents it keeps are not compared: they are not read again
        in_unread = pl.col("doc_id").is_in(unread.kept["doc_id"].implode())
        live, live_unread = live.filter(~in_unread), live.filter(in_unread).with_columns(pl.lit(None, pl.String)
                                                                                         .alias("text"))
    delta = Delta(live, against.selection)
    counts = dict.fromkeys(["accepted", "quarantined", "chunks", "chunks_redone", "chunks_kept",
                            "max_chunks_per_doc", "truncated_chunks", "docs_unread"], 0)
    # ids accepted so far (a read copy of an unread file's document comes later)
    seen = unread.kept["doc_id"] if unread else pl.Series("doc_id", [], pl.String)
    fingerprint, dupes, metadata, parts, documents = 0, [], [], [], []

    def write(name: str, chunks: pl.DataFrame, kept: pl.DataFrame) -> None:
        frames = [f for f in (chunks, kept) if f.height]
        if not frames:
            return
        rows = pl.concat(frames, how="diagonal_relaxed")
        live_row = pl.col(LIVE_ROW) if LIVE_ROW in rows.columns else pl.lit(None, pl.Int64).alias(LIVE_ROW)
        rows = rows.select(*INPUT_COLUMNS, live_row, "text")
        write_parquet(storage, shard_key(run_id, shard, f"chunks/{name}"), rows)
        parts.append(name)
        metadata.append(rows.select(*INPUT_COLUMNS, pl.col("text").is_not_null().alias("has_text"),
                                    pl.lit(name).alias("part")))
        counts["chunks"] += rows.height
        counts["chunks_redone"] += chunks.height
        counts["chunks_kept"] += kept.height
        per_doc = int(rows.group_by("doc_id").len()["len"].max())  # a document never spans two parts
        counts["max_chunks_per_doc"] = max(counts["max_chunks_per_doc"], per_doc)
        counts["truncated_chunks"] += int((rows["n_tokens"] > chunker.token_budget()).sum())

    def drop(later: pl.DataFrame) -> None:
        """Later copies of ids (source, position, doc_id, piece): quarantined, or the error in strict mode."""
        if cfg.corpus.strict:
            raise InputError(f"{redact(later['source'][0])} record {later['position'][0]}: {DUPLICATE} (id "
                             f"{later['doc_id'][0]!r})")
        dupes.append(later.select("source", "position", "doc_id", "piece"))

    if unread is not None and unread.lost.height:
        drop(unread.lost.with_columns(pl.lit(None, pl.Int32).alias("piece")))
    for name, docs in _docs_batches(storage, run_id, shard, cfg.run.read_batch):
        first = docs["doc_id"].is_first_distinct() & ~docs["doc_id"].is_in(seen)
        if not first.all():
            drop(docs.filter(~first))
            docs = docs.filter(first)
        seen = pl.concat([seen, docs["doc_id"]], rechunk=False)
        counts["accepted"] += docs.height
        fingerprint += sum(int(h, 16) for h in docs["content_hash"].to_list())
        documents.append(documents_of(docs))
        redo, kept = delta.split(docs)
        chunks = chunker.chunk(redo).join(redo.select("doc_id", "doc_hash", "title", "bucket"), on="doc_id",
                                          how="left", maintain_order="left")
        write(name, chunks, kept)
    write("zz-kept.parquet", pl.DataFrame(), delta.finish())  # a backfill keeps live documents the corpus lacks
    if unread is not None and unread.kept.height:
        write("zz-unread.parquet", pl.DataFrame(), live_unread)
        documents.append(unread.kept)
        counts["accepted"] += unread.kept.height
        counts["docs_unread"] = unread.kept.height
        fingerprint += sum(int(h, 16) for h in unread.kept["content_hash"].to_list())
    dropped: Counter[str] = Counter()
    if dupes:
        rejected = pl.concat(dupes, how="vertical_relaxed")
        counts["quarantined"] = rejected.height
        write_parquet(storage, quarantine_key(run_id, f"shard-{shard:05d}.parquet"), rejected.select(
            pl.col("source"), pl.col("position"), pl.col("doc_id"), pl.lit(DUPLICATE).alias("reason"),
            # the record is not kept past its piece: its id, as JSON under the corpus's id field
            pl.struct(pl.col("doc_id").alias(cfg.corpus.id_field)).struct.json_encode().alias("raw"),
            pl.col("piece")).cast({k: v for k, v in QUARANTINE_SCHEMA.items()}))
        for source, n in rejected.group_by("source").len().iter_rows():
            dropped[source] += n
    if documents and against.selection is None:  # a backfill's kept documents are live's, not what the files hold
        write_parquet(storage, shard_key(run_id, shard, DOCUMENTS),
                      pl.concat(documents).sort("bucket", "doc_id"))
    counts |= delta.counts
    counts["docs_unchanged"] += counts["docs_unread"]
    counts["docs_kept"] += counts["docs_unread"]
    to_embed = attach_cached(storage, run_id, shard, lo, hi, pl.concat(metadata) if metadata else None, card,
                              counts)
    prep = ShardPrep(shard, (lo, hi), counts, fingerprint % (1 << 256), [p for p in parts if p in to_embed],
                     delta.missing_ids(shard, cfg.run.shards), dict(dropped), node=node(), peak_rss_mb=peak_rss_mb())
    storage.write_bytes(marker, json.dumps(prep.to_dict() | {"skipped": False}).encode())
    return prep


def _docs_batches(storage: Storage, run_id: str, shard: int, rows: int) -> Iterator[tuple[str, pl.DataFrame]]:
    """The shard's docs parts in input order (piece, then batch), consecutive ones together up to `rows` rows, each
    batch named for its first part: a corpus of many small files leaves a part per file in every shard, and taking
    them one at a time paid polars' per-call cost thousands of times (2,000 files of 10 documents had 11x the
    prepare time of 20 files of 1,000; 6.8x since)."""
    names, frames, size = [], [], 0
    for name in sorted(storage.list(shard_key(run_id, shard, "docs"))):
        frame = read_parquet(storage, shard_key(run_id, shard, f"docs/{name}"))
        if frames and size + frame.height > rows:
            yield names[0], pl.concat(frames, how="diagonal_relaxed")
            names, frames, size = [], [], 0
        names.append(name)
        frames.append(frame)
        size += frame.height
    if frames:
        yield names[0], pl.concat(frames, how="diagonal_relaxed")


@dataclass(frozen=True)
class PreparedRun:
    """The prepared run as the driver sees it: summed counts, and which shards have chunks."""

    run_id: str
    shards: list[int]  # the shards that hold chunks
    shard_rows: dict[int, int]  # chunks per shard: the snapshot's rows, shard after shard
    counts: dict[str, int]
    corpus: dict[str, str]  # its source (redacted) and fingerprint
    chunking: dict

    @classmethod
    def of(cls, run_id: str, cfg: PipelineConfig, pieces: list[PieceResult], preps: list[ShardPrep],
           chunking: dict, files: pl.DataFrame) -> PreparedRun:
        """`files`: this build's files table (corpus/files.py), whose counts include the files left unread."""
        counts = {k: int(files[k].sum()) for k in FILE_COUNTS}
        counts["accepted"] = sum(p.counts["accepted"] for p in preps)  # after the shards dropped duplicates
        for prep in preps:
            for key, value in prep.counts.items():
                if key not in FILE_COUNTS:
                    counts[key] = max(counts.get(key, 0), value) if key.startswith("max_") else \
                        counts.get(key, 0) + value
        shards = [p.shard for p in preps if p.counts["chunks"]]
        counts["shards"] = len(shards)
        counts["pieces"] = len(pieces)
        counts["files_unread"] = int(files["unread"].sum())
        counts["files_read"] = files.height - counts["files_unread"]
        counts["prepare_peak_rss_mb"] = max([p.peak_rss_mb for p in [*pieces, *preps]], default=0.0)
        fingerprint = sum(p.fingerprint for p in preps) % (1 << 256)
        corpus = {"source": redact(corpus_url(cfg.corpus)), "fingerprint": f"{fingerprint:064x}"}
        return cls(run_id, shards, {p.shard: p.counts["chunks"] for p in preps}, counts, corpus, chunking)

    def largest_first(self) -> list[int]:
        """The shards in the order to hand them to a pool of workers: the biggest first, so that the last ones
        to run are small and the workers finish close together."""
        return sorted(self.shards, key=lambda shard: -self.shard_rows[shard])


def prepare(cfg: PipelineConfig, storage: Storage, run_id: str, against: ShardInput, card: ModelCard,
            executor: Executor) -> PreparedRun:
    """Read every piece of the files not left unread, then prepare every shard, on `executor`'s workers; the
    driver holds only counts, and a row per input file."""
    chunking = make_chunker(cfg).params
    listed = describe_corpus(cfg.corpus)
    # the files as the run listed them when it began (run.json): one written since would be left unread by a
    # decision made before it changed, its new bytes never read (nor by later runs: its new stamp is recorded)
    check_run_unchanged(storage, run_id, listing_digest(listed), prepared_settings(cfg, chunking, against, card))
    decided = decide_files(cfg, storage, run_id, against, executor, listed)
    skip = set(decided.filter(pl.col("unread"))["url"].to_list())
    # the files read are the same in a resumed attempt (its first attempt decided, from the listing it recorded in
    # run.json), and so are their pieces
    pieces = plan_pieces([f for f in listed if redact(f.url) not in skip], cfg.run.piece_bytes, cfg.run.piece_files)
    against = replace(against, unread=frozenset(skip))
    read = executor.map(partial(read_piece, cfg, storage, run_id, chunking=chunking), pieces)
    preps = executor.map(partial(prepare_shard, cfg, storage, run_id, against=against, card=card),
                         list(range(cfg.run.shards)))
    dropped = sum((Counter(p.dropped) for p in preps), Counter())
    files = files_table(listed, counts_by_url(item for r in read for item in r.files.items()), decided, dropped)
    write_parquet(storage, run_files_key(run_id), files)
    prepared = PreparedRun.of(run_id, cfg, read, preps, chunking, files)
    if not prepared.counts["accepted"]:
        raise InputError(f"corpus {redact(cfg.corpus.source)}: no document accepted ({prepared.counts['read']} read, "
                         f"{prepared.counts['quarantined']} quarantined; reasons in "
                         f"{storage.url_of(quarantine_key(run_id))})")
    if against.selection is not None:
        check_selected(against.selection, [i for p in preps for i in p.missing_ids], prepared.counts, cfg)
    return prepared


def decide_files(cfg: PipelineConfig, storage: Storage, run_id: str, against: ShardInput, executor: Executor,
                 listed: list[InputFile]) -> pl.DataFrame:
    """Which `listed` files the run leaves unread (jobs/unread.py files_left_unread), hashing those that need it on
    `executor`'s workers in batches of about run.piece_bytes, or here where they hold at most
    run.local_prepare_max_bytes (a task's start costs more: hashing a file of 0.5 MB as the run's first Ray task
    took 1.2 s, the whole decision here 0.02 s); a backfill compares with no live version (it reads every file)."""
    def hash_files(files: list[InputFile]) -> list[str]:
        here = sum(f.size for f in files) <= cfg.run.local_prepare_max_bytes
        batches = hash_batches(files, cfg.run.piece_bytes)  # a task per piece's worth of bytes, as reading has
        return [d for batch in (LocalExecutor() if here else executor).map(files_sha256, batches) for d in batch]

    return files_left_unread(cfg, storage, run_id, against.live if against.selection is None else None, listed,
                             make_chunker(cfg).params, hash_files)


def check_selected(selection: Selection, missing_ids: list[str], counts: dict[str, int], cfg: PipelineConfig) -> None:
    """A backfill redoes what it asked for, before anything is embedded or published: every doc id it names is in
    the corpus (a typo would otherwise publish a copy of the live version), and it selects some document."""
    corpus = redact(cfg.corpus.source)
    if missing_ids:
        shown = ", ".join(sorted(missing_ids)[:10]) + (f" and {len(missing_ids) - 10} more" if len(missing_ids) > 10
                                                        else "")
        raise SelectionError(f"backfill: doc ids not in corpus {corpus} ({len(missing_ids)} of the "
                         f"{len(selection.doc_ids)} asked for): {shown}; expected ids of its accepted documents "
                         "(nothing was published)")
    if not counts["docs_redone"]:
        raise SelectionError(f"backfill of {selection.describe()} selects none of the {counts['accepted']} documents "
                         f"accepted from corpus {corpus}: nothing to redo (nothing was published)")
