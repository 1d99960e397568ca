"""Where the work runs, decided in one place: per-piece and per-shard steps in this process or as Ray tasks,
embedding in this process or on Ray actors. Ray is imported only by runs that use it."""

from __future__ import annotations

from pipeline.config import PipelineConfig
from pipeline.jobs.embedder import Embedder, LocalEmbedder
from pipeline.jobs.executor import Executor, LocalExecutor
from pipeline.models.encoder import cached_encoder
from pipeline.storage.backend import Storage


def executor_for(cfg: PipelineConfig, input_bytes: int) -> Executor:
    """A corpus of at most run.local_prepare_max_bytes is read, chunked and indexed here: starting Ray costs more
    than that much work. Anything larger runs as Ray tasks across the cluster."""
    if input_bytes <= cfg.run.local_prepare_max_bytes:
        return LocalExecutor()
    from operators.executor import RayExecutor

    return RayExecutor()


def embedder_for(cfg: PipelineConfig, storage: Storage, chunks_to_embed: int) -> Embedder:
    """A small delta (at most run.local_embed_max_chunks) is embedded here: starting Ray and a model per actor
    costs more (~14 s on 2 CPUs). Anything larger goes to Ray actors."""
    if chunks_to_embed <= cfg.run.local_embed_max_chunks:
        return LocalEmbedder(storage, cached_encoder(cfg.model))
    from operators.embedding import RayEmbedder

    return RayEmbedder(storage, cfg.model, cfg.run)
