"""The first step of every build, once per read piece (corpus/pieces.py), on any worker: read and validate its
records, hash and shard them, and write each shard's documents as one part per batch; bad records go to the
piece's quarantine file. A marker written last (the piece and its counts by file) commits it, so a rerun of the run
id skips it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from pipeline.config import PipelineConfig
from pipeline.corpus.delta import content_hashes, doc_hashes
from pipeline.corpus.files import counts_by_url
from pipeline.corpus.pieces import Piece
from pipeline.corpus.readers import iter_piece
from pipeline.corpus.sharding import assign_shards
from pipeline.errors import InputError
from pipeline.jobs.worker import node, peak_rss_mb
from pipeline.storage.backend import Storage
from pipeline.storage.layout import MARKER, piece_key, quarantine_key, shard_key
from pipeline.storage.tables import write_parquet


@dataclass(frozen=True)
class PieceResult:
    piece: int
    files: dict[str, dict[str, int]]  # counts (corpus/files.py FILE_COUNTS) by file (redacted url)
    skipped: bool = False  # committed by an earlier attempt
    peak_rss_mb: float = 0.0  # the worker's


def read_piece(cfg: PipelineConfig, storage: Storage, run_id: str, piece: Piece, chunking: dict) -> PieceResult:
    """Read, validate, hash and shard one piece: each batch's accepted documents go to their shards as
    docs/<piece>-<batch>.parquet, its rejects to the piece's quarantine file; then the marker (its counts). A piece
    committed by an earlier attempt is skipped where it is the same piece (it is, unless run.piece_bytes or
    run.piece_files changed between attempts: its documents' parts would then be another piece's)."""
    marker = piece_key(run_id, piece.index, MARKER)
    if storage.exists(marker):
        done = json.loads(storage.read_bytes(marker))
        if done["piece"] != json.loads(json.dumps(piece.to_dict())):  # as JSON gives it back: spans as lists
            raise InputError(f"run {run_id}: piece {piece.index} was read by an earlier attempt as other files or "
                             "parts of files (run.piece_bytes or run.piece_files changed?); expected the same "
                             "settings, or start a new run (leave out --run-id and run.run_id)")
        return PieceResult(piece.index, done["files"], skipped=True)
    files, quarantine = [], []
    for batch_no, batch in enumerate(iter_piece(cfg.corpus, piece, cfg.run.read_batch)):
        files.extend(batch.files.items())
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
    counts = counts_by_url(files)
    storage.write_bytes(marker, json.dumps({"piece": piece.to_dict(), "files": counts, "node": node()}).encode())
    return PieceResult(piece.index, counts, peak_rss_mb=peak_rss_mb())
