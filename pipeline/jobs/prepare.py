"""Read, validate, shard and chunk the corpus into per-shard input parts: the first step of every build, and
the checks that run before any engine starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pipeline.config import PipelineConfig
from pipeline.corpus.chunking import Chunker
from pipeline.corpus.delta import CorpusFingerprint, Delta, content_hashes, doc_hashes
from pipeline.corpus.readers import corpus_url, golden_set_urls, iter_corpus, require_exists
from pipeline.corpus.sharding import assign_shards
from pipeline.errors import InputError
from pipeline.index.analyzer import Analyzer
from pipeline.jobs.shards import clear_uncommitted_inputs, write_shard_inputs
from pipeline.models.encoder import tokenizer_for
from pipeline.storage.backend import Storage, redact
from pipeline.storage.layout import quarantine_key
from pipeline.storage.tables import write_parquet


@dataclass(frozen=True)
class PreparedRun:
    run_id: str
    shards: list[int]
    counts: dict[str, int]
    corpus: dict[str, str]
    chunking: dict


def check_inputs(cfg: PipelineConfig, storage: Storage) -> None:
    """Fail fast, before any engine starts, on a storage root that cannot be reached or written, or a corpus,
    golden set, model or bm25 stemmer that cannot be found."""
    storage.probe()
    require_exists(corpus_url(cfg.corpus), "corpus.source")
    golden = golden_set_urls(cfg.corpus, cfg.evaluation.queries, cfg.evaluation.qrels)
    for url, field in zip(golden or (), ("evaluation.queries", "evaluation.qrels"), strict=False):
        require_exists(url, field)
    tokenizer_for(cfg.model)
    if cfg.index.lexical:
        Analyzer.of(cfg.index.bm25)  # a stemmer language PyStemmer lacks fails here, not after embedding


def make_chunker(cfg: PipelineConfig) -> Chunker:
    tokenizer, limit = tokenizer_for(cfg.model)
    return Chunker(tokenizer, cfg.chunking, limit, cfg.model.passage_prefix)


def prepare(cfg: PipelineConfig, storage: Storage, run_id: str, delta: Delta | None = None) -> PreparedRun:
    """Read and validate the corpus batch by batch, quarantine bad records, shard and chunk each batch, and
    write it as one input part per shard: no more than one batch of text is in memory at a time. With a
    `delta`, only the documents it redoes are chunked; the live chunk rows it keeps join their shards."""
    delta = delta or Delta(live=None)
    chunker = make_chunker(cfg)
    clear_uncommitted_inputs(storage, run_id, cfg.run.shards)
    fingerprint, quarantine, shards = CorpusFingerprint(), [], set()
    counts = dict.fromkeys(["read", "accepted", "quarantined", "blank_lines", "chunks", "chunks_redone",
                            "chunks_kept", "max_chunks_per_doc", "truncated_chunks"], 0)

    def write(part: int, chunks: pl.DataFrame, kept: pl.DataFrame) -> None:
        frames = [f for f in (chunks, kept) if f.height]
        if not frames:
            return
        rows = pl.concat(frames, how="diagonal_relaxed")
        shards.update(write_shard_inputs(storage, run_id, rows, part))
        counts["chunks"] += rows.height
        counts["chunks_redone"] += chunks.height
        counts["chunks_kept"] += kept.height
        per_doc = int(rows.group_by("doc_id").len()["len"].max())  # a document never spans two parts
        counts["max_chunks_per_doc"] = max(counts["max_chunks_per_doc"], per_doc)
        counts["truncated_chunks"] += int((rows["n_tokens"] > chunker.token_budget()).sum())

    part = -1
    for part, batch in enumerate(iter_corpus(cfg.corpus, cfg.run.read_batch)):
        quarantine.append(batch.quarantine)  # rejects keep <= 500 chars of their record each
        for key, value in batch.counts.items():
            counts[key] += value
        if batch.docs.is_empty():
            continue
        content = content_hashes(batch.docs)
        fingerprint.update(content)
        docs = assign_shards(batch.docs.with_columns(doc_hashes(content, chunker.params)), cfg.run.shards)
        redo, kept = delta.split(docs)
        chunks = chunker.chunk(redo).join(redo.select("doc_id", "doc_hash", "title", "shard"), on="doc_id",
                                          how="left", maintain_order="left")
        write(part, chunks, kept)
    write(part + 1, pl.DataFrame(), delta.finish())  # a backfill keeps live documents the corpus lacks
    write_parquet(storage, quarantine_key(run_id), pl.concat(quarantine))
    if not counts["accepted"]:
        raise InputError(f"corpus {redact(cfg.corpus.source)}: no document accepted ({counts['read']} read, "
                         f"{counts['quarantined']} quarantined; reasons in {storage.url_of(quarantine_key(run_id))})")
    counts |= delta.counts
    counts["shards"] = len(shards)
    corpus = {"source": redact(corpus_url(cfg.corpus)), "fingerprint": fingerprint.hexdigest()}
    return PreparedRun(run_id, sorted(shards), counts, corpus, chunker.params)
