"""The first step of every build, once per read piece (corpus/pieces.py), on any worker: read and validate its
records, hash and shard them, and write each shard's documents as one part per batch; bad records go to the
piece's quarantine file. A marker written last (its counts) commits it, so a rerun of the run id skips it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from pipeline.config import PipelineConfig
from pipeline.corpus.delta import content_hashes, doc_hashes
from pipeline.corpus.files import FILE_COUNTS
from pipeline.corpus.pieces import Piece
from pipeline.corpus.readers import iter_piece
from pipeline.corpus.sharding import assign_shards
from pipeline.jobs.worker import node, peak_rss_mb
from pipeline.storage.backend import Storage
from pipeline.storage.layout import MARKER, piece_key, quarantine_key, shard_key
from pipeline.storage.tables import write_parquet


@dataclass(frozen=True)
class PieceResult:
    piece: int
    counts: dict[str, int]  # read, accepted, quarantined, blank_lines
    skipped: bool = False  # committed by an earlier attempt
    peak_rss_mb: float = 0.0  # the worker's


def read_piece(cfg: PipelineConfig, storage: Storage, run_id: str, piece: Piece, chunking: dict) -> PieceResult:
    """Read, validate, hash and shard one piece: each batch's accepted documents go to their shards as
    docs/<piece>-<batch>.parquet, its rejects to the piece's quarantine file; then the marker (its counts)."""
    marker = piece_key(run_id, piece.index, MARKER)
    if storage.exists(marker):
        return PieceResult(piece.index, json.loads(storage.read_bytes(marker))["counts"], skipped=True)
    counts, quarantine = dict.fromkeys(FILE_COUNTS, 0), []
    for batch_no, batch in enumerate(iter_piece(cfg.corpus, piece, cfg.run.read_batch)):
        counts = {k: counts[k] + v for k, v in batch.counts.items()}
        quarantine.append(batch.quarantine.with_columns(pl.lit(piece.index, pl.Int32).alias("piece")))
        if batch.docs.is_empty():
            continue
        content = content_hashes(batch.docs)
        docs = assign_shards(batch.docs.with_columns(content, doc_hashes(content, chunking)), cfg.run.shards)
        docs = docs.with_columns(pl.lit(piece.index, pl.Int32).alias("piece"))
        for (shard,), rows in docs.partition_by("shard", as_dict=True, maintain_order=True).items():
            write_parquet(storage, shard_key(run_id, int(shard), f"docs/{piece.index:06d}-{batch_no:05d}.parquet"),
                          rows)
    write_parquet(storage, quarantine_key(run_id, f"piece-{piece.index:06d}.parquet"), pl.concat(quarantine))
    storage.write_bytes(marker, json.dumps({"piece": piece.to_dict(), "counts": counts, "node": node()}).encode())
    return PieceResult(piece.index, counts, peak_rss_mb=peak_rss_mb())
