"""Where the work runs, decided in one place: embedding in this process or on Ray actors, bm25 analysis in this
process or in Ray tasks (one per shard), IVF-PQ added serially or in parallel Ray tasks. Ray is imported only by
runs that use it."""

from __future__ import annotations

from functools import partial

from pipeline.config import PipelineConfig
from pipeline.index.faiss_ops import build_ivfpq
from pipeline.index.variants import IvfPqBuilder
from pipeline.jobs.embedder import Embedder, LocalEmbedder
from pipeline.jobs.lexical import LocalAnalyzer
from pipeline.models.encoder import cached_encoder
from pipeline.storage.backend import Storage


def embedder_for(cfg: PipelineConfig, storage: Storage, chunks_to_embed: int) -> Embedder:
    """A small delta (at most run.local_embed_max_chunks) is embedded here: starting Ray and a model per actor
    costs more (~14 s on 2 CPUs). Anything larger goes to Ray actors."""
    if chunks_to_embed <= cfg.run.local_embed_max_chunks:
        return LocalEmbedder(storage, cached_encoder(cfg.model))
    from operators.embedding import RayEmbedder

    return RayEmbedder(storage, cfg.model, cfg.run)


def analyzer_for(cfg: PipelineConfig, storage: Storage, chunks_to_analyze: int):
    """Where each shard's bm25 analysis runs: beside the embedding (this process for a small delta, whose other
    chunks' terms come from the cache; Ray tasks otherwise)."""
    if chunks_to_analyze <= cfg.run.local_embed_max_chunks:
        return LocalAnalyzer(storage, cfg.index.bm25)
    from operators.lexical import RayAnalyzer

    return RayAnalyzer(storage, cfg.index.bm25)


def ivfpq_builder_for(cfg: PipelineConfig) -> IvfPqBuilder:
    """Train once, then add in index.parallel_parts Ray tasks and merge (byte-identical to the serial build)."""
    if cfg.index.parallel_parts <= 1:
        return build_ivfpq
    from operators.ivfpq import parallel_ivfpq

    return partial(parallel_ivfpq, parts=cfg.index.parallel_parts)
