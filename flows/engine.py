"""Where the work runs, decided in one place: per-piece and per-shard steps in this process or as Ray tasks,
embedding in this process or on Ray actors. Ray is imported only by runs that use it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.config import PipelineConfig
from pipeline.jobs.embedder import Embedder, LocalEmbedder
from pipeline.jobs.executor import Executor, LocalExecutor
from pipeline.jobs.plan import BuildPlan
from pipeline.models.encoder import cached_encoder, pinned_to
from pipeline.storage.backend import Storage

if TYPE_CHECKING:
    from operators.embedding import RayEmbedder


def executor_for(cfg: PipelineConfig, input_bytes: int) -> Executor:
    """A corpus of at most run.local_prepare_max_bytes is read, chunked and indexed here: starting Ray costs more
    than that much work. Anything larger runs as Ray tasks across the cluster."""
    if input_bytes <= cfg.run.local_prepare_max_bytes:
        return LocalExecutor()
    from operators.executor import RayExecutor

    return RayExecutor()


def early_embedder(cfg: PipelineConfig, storage: Storage, plan: BuildPlan, executor: Executor,
                   input_bytes: int) -> RayEmbedder | None:
    """Ray actors started before prepare, so that their start (a worker process, imports, the model: ~2.5 s on
    2 CPUs) overlaps it: for a full build (everything is embedded, unless cached) prepared in this process (Ray
    tasks preparing shards would wait for the CPUs the actors hold) of a corpus big enough for the actors (at
    least one chunk per 4 x max_tokens input bytes, a low estimate)."""
    if plan.against.live is not None or executor.where != LocalExecutor.where or \
            input_bytes // (4 * cfg.chunking.max_tokens) <= cfg.run.local_embed_max_chunks:
        return None
    from operators.embedding import RayEmbedder

    return RayEmbedder(storage, pinned_to(cfg.model, cached_encoder(cfg.model)), cfg.run).start(cfg.run.shards)


def embedder_for(cfg: PipelineConfig, storage: Storage, chunks_to_embed: int, early: RayEmbedder | None) -> Embedder:
    """A small delta (at most run.local_embed_max_chunks) is embedded here: starting Ray and a model per actor
    costs more (~7 s on 2 CPUs). Anything larger goes to Ray actors (`early`'s, when they were started)."""
    encoder = cached_encoder(cfg.model)
    if chunks_to_embed <= cfg.run.local_embed_max_chunks:
        if early is not None:
            early.close()
        return LocalEmbedder(storage, encoder)
    if early is not None:
        return early
    from operators.embedding import RayEmbedder

    return RayEmbedder(storage, pinned_to(cfg.model, encoder), cfg.run)

