"""Shards as units of work: inputs written per shard in parts, outputs committed by a marker written last
(keys: pipeline/storage/layout.py). An input part holds chunk metadata and text (null for rows kept from the
live snapshot: their vectors are cached); a vectors part the chunk hash and vector of each row embedded (the part
is also added to the embedding cache as it is) or found in the cache; the index stage joins them by chunk hash. The
marker JSON counts, the model fingerprint and the kernels that computed the vectors.

A part holds one read batch's chunks of the shard, so a worker's memory is bounded by the batch size, not
by the shard's (which grows with the corpus). A rerun of the same run id skips shards whose marker
exists, so a crash costs only unfinished shards; redoing a shard rewrites the same keys (idempotent).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from pipeline.errors import ModelError, SnapshotError
from pipeline.jobs.worker import node, peak_rss_mb
from pipeline.models.cache import EmbeddingCache
from pipeline.models.encoder import Encoder
from pipeline.storage.backend import Storage
from pipeline.storage.layout import MARKER, PREPARED, shard_key
from pipeline.storage.tables import read_parquet, write_parquet

MODEL_CARD_KEY = "embedpipe.model_card"
# A kept chunk's row in the live version its run compares with (null for chunks redone): the index stage copies its
# codes from live's files (pipeline/jobs/kept_codes.py).
LIVE_ROW = "live_row"
INPUT_COLUMNS = ["chunk_id", "doc_id", "chunk_index", "start", "end", "n_tokens", "chunk_hash", "doc_hash", "title",
                 "bucket"]


def is_committed(storage: Storage, run_id: str, shard: int) -> bool:
    return storage.exists(shard_key(run_id, shard, MARKER))


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
    kernel: str = ""  # KernelPlan.label of the encoder that embedded it

    def to_dict(self) -> dict:
        return asdict(self)


def _cached_hashes(storage: Storage, run_id: str, shard: int) -> pl.Series:
    """The chunk hashes whose vectors preparing the shard found in the cache (vectors/cached-*.parquet)."""
    names = [n for n in storage.list(shard_key(run_id, shard, "vectors")) if n.startswith("cached-")]
    frames = [read_parquet(storage, shard_key(run_id, shard, f"vectors/{n}"), ["chunk_hash"]) for n in names]
    return pl.concat(frames)["chunk_hash"] if frames else pl.Series("chunk_hash", [], pl.String)


def embed_shard(storage: Storage, run_id: str, shard: int, encoder: Encoder,
                after_encode: Callable[[int], None] | None = None, attempt: str | None = None) -> ShardResult:
    """Embed a prepared shard's chunks part by part (the cached ones were attached when it was prepared), add the
    new vectors to the cache, and commit it; idempotent (a committed shard is returned as skipped, unless this
    `attempt` of the embed stage committed it: its worker died before reporting it, and the task was retried).
    `after_encode(shard)` runs after the first part is encoded, before anything is committed: the
    fault-injection point for tests."""
    marker_key = shard_key(run_id, shard, MARKER)
    if storage.exists(marker_key):
        done = json.loads(storage.read_bytes(marker_key))
        if done["model_fingerprint"] != encoder.card.fingerprint:
            raise SnapshotError(f"run {run_id} shard {shard} was embedded with model {done['model_fingerprint']}, "
                                f"not {encoder.card.fingerprint}; start a new run id for a different model")
        if attempt is not None and done.get("attempt") == attempt:
            return ShardResult(shard, done["chunks"], done["tokens"], done["seconds"], skipped=False,
                               embedded=done["embedded"], cached=done["cached"], kernel=done.get("kernel", ""))
        return ShardResult(shard, done["chunks"], done["tokens"], done["seconds"], skipped=True,
                           kernel=done.get("kernel", ""))
    if not storage.exists(shard_key(run_id, shard, PREPARED)):
        raise SnapshotError(f"run {run_id} shard {shard} was not prepared (no {shard_key(run_id, shard, PREPARED)})")
    prep = json.loads(storage.read_bytes(shard_key(run_id, shard, PREPARED)))
    lo, hi = prep["buckets"]
    start, tokens_before = time.perf_counter(), encoder.tokens_encoded
    cache = EmbeddingCache(storage, encoder.card.fingerprint)
    card = json.dumps(encoder.card.to_dict(), sort_keys=True)
    cached = _cached_hashes(storage, run_id, shard)
    embedded, part_seconds = 0, []
    done = pl.Series("chunk_hash", [], pl.String)  # the hashes this shard's earlier parts embedded
    for name in prep["chunk_parts"]:
        part_start = time.perf_counter()
        part = read_parquet(storage, shard_key(run_id, shard, f"chunks/{name}"))
        todo = part.filter(~pl.col("chunk_hash").is_in(cached))
        # A text once per shard (boilerplate, a document copied under another id): the index stage joins the
        # shard's rows to all of its vectors parts by hash.
        texts = todo.filter(~pl.col("chunk_hash").is_in(done)).unique("chunk_hash", keep="first", maintain_order=True)
        done = pl.concat([done, texts["chunk_hash"]])
        fresh = encoder.encode(texts["text"].to_list(), kind="passage")
        if not (finite := np.isfinite(fresh).all(axis=1)).all():  # never cached, never indexed
            first = texts["doc_id"][int(np.argmax(~finite))]
            raise ModelError(f"model {encoder.card.name} ({encoder.kernel_plan.summary()}) gave {int((~finite).sum())} "
                             f"vectors with NaN or infinity in shard {shard} (first: document {first!r}); expected "
                             "finite vectors: a half-precision kernel may overflow, model.precision: fp32 avoids it")
        if after_encode and name == prep["chunk_parts"][0]:
            after_encode(shard)
        out = texts.select("chunk_hash").with_columns(
            pl.Series("vector", fresh, dtype=pl.Array(pl.Float32, encoder.card.dims)))
        # The model card travels with the vectors, in the Parquet footer; the part becomes a cache file as it is
        key = shard_key(run_id, shard, f"vectors/{name}")
        write_parquet(storage, key, out, {MODEL_CARD_KEY: card})
        cache.add_copy(lo, hi, f"{run_id}-{shard:05d}-{name.removesuffix('.parquet')}", key)
        embedded += todo.height
        part_seconds.append([todo.height, round(time.perf_counter() - part_start, 4)])
    cache.compact(lo, hi)
    tokens, seconds = encoder.tokens_encoded - tokens_before, round(time.perf_counter() - start, 3)
    chunks = prep["counts"]["chunks"]
    storage.write_bytes(marker_key, json.dumps({"chunks": chunks, "tokens": tokens, "seconds": seconds,
                                                "embedded": embedded, "cached": chunks - embedded,
                                                "model_fingerprint": encoder.card.fingerprint,
                                                "kernel": encoder.kernel_plan.label,
                                                "node": node(), "parts": part_seconds,
                                                "attempt": attempt}).encode())
    return ShardResult(shard, chunks, tokens, seconds, skipped=False, embedded=embedded, cached=chunks - embedded,
                       peak_rss_mb=peak_rss_mb(), kernel=encoder.kernel_plan.label)
