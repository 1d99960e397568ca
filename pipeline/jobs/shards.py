"""Shards as units of work: inputs written per shard in parts, outputs committed by a marker written last
(keys: pipeline/storage/layout.py). An input part holds chunk metadata and text (null for rows kept from the
live snapshot: their vectors are cached); its vector part the same rows without text, plus the vector; the
marker JSON counts and the model fingerprint.

A part holds one read batch's chunks of the shard, so a worker's memory is bounded by the batch size, not
by the shard's (which grows with the corpus). A rerun of the same run id skips shards whose marker
exists, so a crash costs only unfinished shards; redoing a shard rewrites the same keys (idempotent).
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from pipeline.errors import SnapshotError
from pipeline.models.cache import EmbeddingCache
from pipeline.models.encoder import Encoder
from pipeline.storage.backend import Storage
from pipeline.storage.layout import LEXICON, MARKER, TERMS, TERMS_MARKER, shard_key
from pipeline.storage.tables import read_parquet, write_parquet

MODEL_CARD_KEY = "embedpipe.model_card"
INPUT_COLUMNS = ["chunk_id", "doc_id", "chunk_index", "start", "end", "n_tokens", "chunk_hash", "doc_hash", "title"]


def is_committed(storage: Storage, run_id: str, shard: int) -> bool:
    return storage.exists(shard_key(run_id, shard, MARKER))


def clear_uncommitted_inputs(storage: Storage, run_id: str, shards: int) -> None:
    """Before (re)writing a run's inputs: parts left by an earlier attempt must not be embedded twice, nor their
    bm25 terms outlive them (pipeline/jobs/lexical.py)."""
    for shard in range(shards):
        if not is_committed(storage, run_id, shard) and storage.exists(shard_key(run_id, shard, "chunks")):
            storage.delete(shard_key(run_id, shard, "chunks"), recursive=True)
            for key in (TERMS_MARKER, TERMS, LEXICON):
                if storage.exists(shard_key(run_id, shard, key)):
                    storage.delete(shard_key(run_id, shard, key), recursive=key == TERMS)


def write_shard_inputs(storage: Storage, run_id: str, chunks: pl.DataFrame, part: int) -> set[int]:
    """Write one batch's chunks (a `shard` column says whose) as part `part` of each shard it touches;
    committed shards are left alone. Returns the shards touched."""
    touched = set()
    for (shard,), rows in chunks.partition_by("shard", as_dict=True, maintain_order=True).items():
        touched.add(int(shard))
        if not is_committed(storage, run_id, int(shard)):
            write_parquet(storage, shard_key(run_id, int(shard), f"chunks/{part:05d}.parquet"),
                          rows.select(*INPUT_COLUMNS, "text"))
    return touched


@dataclass(frozen=True)
class ShardResult:
    shard: int
    chunks: int
    tokens: int  # tokens actually embedded (cache hits cost none)
    seconds: float
    skipped: bool  # True when an earlier attempt had already committed it
    embedded: int = 0  # chunks sent through the model
    cached: int = 0  # chunks whose vectors came from the embedding cache
    peak_rss_mb: float = 0.0  # the worker process's peak resident memory so far

    def to_dict(self) -> dict:
        return asdict(self)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def _embed_part(storage: Storage, cache: EmbeddingCache, encoder: Encoder, chunks: pl.DataFrame,
                cache_name: str) -> tuple[pl.DataFrame, int, int]:
    """Vectors for one part: cached where the (model, chunk hash) was seen before, else encoded and cached."""
    hashes, texts = chunks["chunk_hash"].to_list(), chunks["text"].to_list()
    known = cache.lookup(hashes)
    missing = [i for i, h in enumerate(hashes) if h not in known]
    lost = [chunks["chunk_id"][i] for i in missing if texts[i] is None]
    if lost:  # rows kept from the live snapshot carry no text: their vectors must be in the cache
        raise SnapshotError(f"{len(lost)} chunks kept from the live snapshot (first: {lost[0]}) have no vector in "
                            f"{cache.prefix}; run a full reindex (--full) to embed them again")
    fresh = encoder.encode([texts[i] for i in missing], kind="passage")
    cache.add(cache_name, [hashes[i] for i in missing], fresh)
    vectors = np.empty((len(hashes), encoder.card.dims), dtype=np.float32)
    vectors[missing] = fresh
    for i, h in enumerate(hashes):
        if h in known:
            vectors[i] = known[h]
    out = chunks.select(INPUT_COLUMNS).with_columns(
        pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, encoder.card.dims)))
    return out, len(missing), len(known)


def embed_shard(storage: Storage, run_id: str, shard: int, encoder: Encoder,
                after_encode: Callable[[int], None] | None = None) -> ShardResult:
    """Embed one shard part by part and commit it; idempotent (a committed shard is returned as skipped).
    `after_encode(shard)` runs after the first part is encoded, before anything is committed: the
    fault-injection point for tests."""
    marker_key = shard_key(run_id, shard, MARKER)
    if storage.exists(marker_key):
        done = json.loads(storage.read_bytes(marker_key))
        if done["model_fingerprint"] != encoder.card.fingerprint:
            raise SnapshotError(f"run {run_id} shard {shard} was embedded with model {done['model_fingerprint']}, "
                                f"not {encoder.card.fingerprint}; start a new run id for a different model")
        return ShardResult(shard, done["chunks"], done["tokens"], done["seconds"], skipped=True)
    start, tokens_before = time.perf_counter(), encoder.tokens_encoded
    cache = EmbeddingCache(storage, encoder.card.fingerprint)
    card = json.dumps(encoder.card.to_dict(), sort_keys=True)
    parts = sorted(storage.list(shard_key(run_id, shard, "chunks")))
    if not parts:
        raise SnapshotError(f"run {run_id} shard {shard} has no input parts under {shard_key(run_id, shard, 'chunks')}")
    chunks = embedded = cached = 0
    for name in parts:
        part = read_parquet(storage, shard_key(run_id, shard, f"chunks/{name}"))
        out, fresh, hits = _embed_part(storage, cache, encoder, part, f"{run_id}-{shard:05d}-{name.split('.')[0]}")
        if after_encode and name == parts[0]:
            after_encode(shard)
        # The model card travels with the vectors, in the Parquet footer.
        write_parquet(storage, shard_key(run_id, shard, f"vectors/{name}"), out, {MODEL_CARD_KEY: card})
        chunks, embedded, cached = chunks + part.height, embedded + fresh, cached + hits
    tokens, seconds = encoder.tokens_encoded - tokens_before, round(time.perf_counter() - start, 3)
    storage.write_bytes(marker_key, json.dumps({"chunks": chunks, "tokens": tokens, "seconds": seconds,
                                                "embedded": embedded, "cached": cached, "parts": parts,
                                                "model_fingerprint": encoder.card.fingerprint}).encode())
    return ShardResult(shard, chunks, tokens, seconds, skipped=False, embedded=embedded, cached=cached,
                       peak_rss_mb=_peak_rss_mb())


def load_vectors(storage: Storage, run_id: str, shards: list[int]) -> tuple[pl.DataFrame, np.ndarray]:
    """Every committed shard's chunk metadata and vectors, in chunk-id order (independent of sharding)."""
    frames = []
    for shard in shards:
        if not is_committed(storage, run_id, shard):
            raise SnapshotError(f"run {run_id} shard {shard} has no {MARKER} marker; it was not embedded")
        done = json.loads(storage.read_bytes(shard_key(run_id, shard, MARKER)))
        frames += [read_parquet(storage, shard_key(run_id, shard, f"vectors/{name}")) for name in done["parts"]]
    table = pl.concat(frames).sort("chunk_id")
    vectors = np.ascontiguousarray(table["vector"].to_numpy(), dtype=np.float32)
    return table.drop("vector"), vectors
