"""Embedding on Ray: a pool of actors, each loading the model once and embedding whole shards, each shard committed
by its marker (pipeline/jobs/shards.py). Implements the pipeline's Embedder seam (pipeline/jobs/embedder.py).

CPU reservations matter on small machines: actors take `run.cpus_per_actor` CPUs (fractions allowed) and set
torch's threads to match, since Ray pins OMP_NUM_THREADS=1 in workers. On GPU nodes each actor takes
`run.gpus_per_actor` GPUs with a larger token budget (pipeline/config.py). Every actor runs the kernel the driver
chose (pipeline/models/kernels.py; the flow pins it in the model config), so a run's vectors share one precision;
where the driver's device says little about the actors' (GPU actors, a cluster of other CPUs) the workers measure
it (operators/kernel_probe.py).
"""

from __future__ import annotations

import functools
import logging
import math
import time
import uuid

import ray

from operators.cluster import check_actor_fits, ensure_ray, mark_node, unwrap
from operators.faults import maybe_exit_driver
from pipeline.config import ModelConfig, RunConfig
from pipeline.jobs.embedder import OnResult
from pipeline.jobs.shards import ShardResult
from pipeline.startup import collector_paused
from pipeline.storage.backend import Storage


def actor_threads(run: RunConfig) -> int:
    return max(1, math.floor(run.cpus_per_actor))


@ray.remote(max_restarts=2, max_task_retries=2)  # embed_shard is idempotent, so a retried shard is safe
class EmbedActor:
    """One model, whole shards. Ray sends this class by value: a new worker imports what its methods name before
    __init__ runs, so they name nothing heavy, and __init__ imports torch, polars and the model with the garbage
    collector paused (pipeline/startup.py)."""

    def __init__(self, root_url: str, options: dict, model: dict, threads: int) -> None:
        mark_node()
        with collector_paused():
            from operators.faults import maybe_fail_actor_start, maybe_kill_actor, maybe_kill_actor_after_commit
            from pipeline.config import ModelConfig
            from pipeline.jobs.shards import embed_shard
            from pipeline.models.encoder import load_encoder
            from pipeline.storage.backend import Storage

            maybe_fail_actor_start(ray.get_runtime_context().get_actor_id())
            storage = Storage(root_url, **options)
            encoder = load_encoder(ModelConfig(**model), threads=threads)
        self.embed_shard = functools.partial(embed_shard, storage, encoder=encoder, after_encode=maybe_kill_actor)
        self.after_commit = maybe_kill_actor_after_commit

    def ready(self) -> bool:
        return True

    def embed(self, run_id: str, shard: int, attempt: str) -> ShardResult:
        result = self.embed_shard(run_id, shard, attempt=attempt)
        self.after_commit(shard)
        return result


class RayEmbedder:
    """Shards spread over `run.actors` actors (never more than there are shards). `start` launches the actors
    ahead of the work (their process, imports and model load take seconds), so it overlaps whatever runs before
    `embed`; the actors are killed when `embed` returns, or by `close`. `up_after`: seconds from the first `start`
    (Ray up) until `embed` found each actor up, in that order: what the actors' start costs a run."""

    where = "ray actors"

    def __init__(self, storage: Storage, model: ModelConfig, run: RunConfig) -> None:
        self.storage, self.model, self.run = storage, model, run
        self.handles: list = []
        self.started, self.up_after = 0.0, []

    def start(self, shards: int) -> RayEmbedder:
        ensure_ray()
        run = self.run
        self.started = self.started or time.perf_counter()
        if (more := min(run.actors, shards) - len(self.handles)) > 0:
            check_actor_fits(run)
            self.handles += [EmbedActor.options(num_cpus=run.cpus_per_actor, num_gpus=run.gpus_per_actor)
                             .remote(self.storage.url, self.storage.options, self.model.model_dump(),
                                     actor_threads(run))
                             for _ in range(more)]
        return self

    def close(self) -> None:
        for handle in self.handles:
            ray.kill(handle)
        self.handles = []

    def embed(self, run_id: str, shards: list[int], on_result: OnResult) -> list[ShardResult]:
        if not shards:
            self.close()
            return []
        self.start(len(shards))
        # Shards go only to actors that are up. An actor still waiting for a CPU gets none, so two runs sharing a
        # cluster that holds one actor of each both go on with the actors they have, instead of each waiting for
        # a shard queued on an actor that the other run's actors keep from starting.
        # a shard this call's actors committed is theirs even if its actor died before reporting it (and Ray
        # retried it): counted embedded, not skipped
        attempt = uuid.uuid4().hex
        todo, idle, results = list(shards), [], []
        starting = {handle.ready.remote(): handle for handle in self.handles}
        running: dict = {}  # result ref -> the actor embedding it
        try:
            while todo or running:
                while idle and todo:
                    actor = idle.pop()
                    running[actor.embed.remote(run_id, todo.pop(0), attempt)] = actor
                [done], _ = ray.wait([*running, *starting], num_returns=1)
                if done in starting:
                    actor = starting.pop(done)
                    try:
                        ray.get(done)  # an actor that failed to start raises here
                    except ray.exceptions.RayError as exc:  # (a GPU out of memory on its node): the others go on
                        if not (starting or idle or running):
                            raise
                        logging.getLogger(__name__).warning("an embedding actor could not start; the run goes on "
                                                            "with the others: %s", unwrap(exc))
                        continue
                    self.up_after.append(round(time.perf_counter() - self.started, 3))
                    idle.append(actor)
                    continue
                idle.append(running.pop(done))
                results.append(result := ray.get(done))
                on_result(result)
                maybe_exit_driver(len(results))
        except ray.exceptions.RayError as exc:
            raise unwrap(exc) from exc
        finally:
            self.close()
        return sorted(results, key=lambda r: r.shard)

