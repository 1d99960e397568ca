"""Embedding actors: each loads the model once and embeds whole shards, committing each with its marker.

CPU reservations matter on small machines: actors take `cpus_per_actor` (fractions allowed) and set
torch's threads to match, since Ray pins OMP_NUM_THREADS=1 in workers. On GPU nodes each actor takes
`gpus_per_actor` GPUs and the encoder runs in fp16 with a larger token budget (pipeline/config.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import ray
from ray.util.actor_pool import ActorPool

from operators.cluster import ensure_ray, unwrap
from operators.faults import maybe_exit_driver, maybe_kill_actor
from pipeline.config import ModelConfig
from pipeline.encoder import load_encoder
from pipeline.shards import ShardResult, embed_shard
from pipeline.storage import Storage


@ray.remote(max_restarts=2, max_task_retries=2)  # embed_shard is idempotent, so a retried shard is safe
class EmbedActor:
    def __init__(self, root_url: str, options: dict, model: dict, threads: int) -> None:
        self.storage = Storage(root_url, **options)
        self.encoder = load_encoder(ModelConfig(**model), threads=threads)

    def embed(self, run_id: str, shard: int) -> ShardResult:
        return embed_shard(self.storage, run_id, shard, self.encoder, after_encode=maybe_kill_actor)


def embed_shards(root: str, options: dict, run_id: str, shards: list[int], model: ModelConfig, actors: int,
                 cpus_per_actor: float, gpus_per_actor: float = 0.0,
                 on_result: Callable[[ShardResult], None] | None = None) -> list[ShardResult]:
    """Embed `shards` with a pool of `actors` actors; returns one result per shard, in shard order.
    `on_result` sees each shard's result as it finishes (progress reporting)."""
    if not shards:
        return []
    ensure_ray()
    root_url = Storage(root, **options).url  # absolute for local roots: workers may run in another directory
    threads = max(1, math.floor(cpus_per_actor))
    pool_size = min(actors, len(shards))
    handles = [EmbedActor.options(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)
               .remote(root_url, options, model.model_dump(), threads) for _ in range(pool_size)]
    results = []
    try:
        for result in ActorPool(handles).map_unordered(lambda a, s: a.embed.remote(run_id, s), shards):
            results.append(result)
            if on_result:
                on_result(result)
            maybe_exit_driver(len(results))
    except ray.exceptions.RayError as exc:
        raise unwrap(exc) from exc
    finally:
        for handle in handles:
            ray.kill(handle)
    return sorted(results, key=lambda r: r.shard)
