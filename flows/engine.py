"""Where the work runs, decided in one place: per-piece and per-shard steps in this process or as Ray tasks,
embedding in this process or on Ray actors. Ray is imported only by runs that use it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING

from pipeline.config import PipelineConfig
from pipeline.corpus.readers import list_corpus
from pipeline.jobs.embedder import Embedder, LocalEmbedder
from pipeline.jobs.executor import Executor, LocalExecutor
from pipeline.jobs.plan import BuildPlan
from pipeline.models.encoder import cached_encoder, pinned_to
from pipeline.snapshots.aliases import read_alias
from pipeline.storage import layout
from pipeline.storage.backend import Storage

if TYPE_CHECKING:
    from operators.embedding import RayEmbedder
    from pipeline.models.kernel_plan import KernelPlan


def gpus_elsewhere(cfg: PipelineConfig) -> bool:
    """The actors hold GPUs (`run.gpus_per_actor`) and this process has none."""
    if not cfg.run.gpus_per_actor:
        return False
    import torch

    return not torch.cuda.is_available()


def corpus_bytes(cfg: PipelineConfig) -> int:
    """The corpus's input size, from its files' listing: what decides where a run's work goes."""
    return sum(f.size for f in list_corpus(cfg.corpus))


def prepares_here(cfg: PipelineConfig, input_bytes: int) -> bool:
    """A corpus of at most run.local_prepare_max_bytes is read, chunked and indexed in this process (executor_for)."""
    return input_bytes <= cfg.run.local_prepare_max_bytes


def may_use_ray(cfg: PipelineConfig, input_bytes: int) -> bool:
    """Whether a run over `input_bytes` of input may prepare or embed on Ray (executor_for, embedder_for; the chunk
    count is a low estimate: at most 4 bytes per token)."""
    return not prepares_here(cfg, input_bytes) or \
        input_bytes // (4 * cfg.chunking.max_tokens) > cfg.run.local_embed_max_chunks


def uses_ray_whatever_the_plan(cfg: PipelineConfig, storage: Storage, full: bool,
                               input_bytes: int | None = None) -> bool:
    """Whether a build of `cfg` (over `input_bytes` of input: listed when not given) will use Ray whatever its plan
    finds: its corpus is prepared by Ray tasks, or it embeds every document on actors (a full build, requested or
    with nothing live yet, of a corpus big enough for them). An incremental run may embed only a few documents, in
    this process."""
    input_bytes = corpus_bytes(cfg) if input_bytes is None else input_bytes
    if not prepares_here(cfg, input_bytes):
        return True
    alias = cfg.publish.alias
    return may_use_ray(cfg, input_bytes) and (
        full or not alias or read_alias(storage, cfg.index_name, alias).version is None)


def start_ray_ahead(cfg: PipelineConfig, storage: Storage, full: bool, input_bytes: int | None = None) -> bool:
    """Start Ray now for a build sure to use it (uses_ray_whatever_the_plan); returns whether it did. The CLI calls
    this before Prefect's server starts (~3 s on 2 vCPUs), and a flow run before it loads the model (~2 s; Ray is
    started already where the CLI started it), and meanwhile Ray's pooled workers import torch
    (operators/cluster.ensure_ray), so the build's actors start without that wait."""
    if not uses_ray_whatever_the_plan(cfg, storage, full, input_bytes):
        return False
    from operators.cluster import ensure_ray

    ensure_ray(warm_workers=True)
    return True


def load_model_ahead(cfg: PipelineConfig) -> None:
    """Load the build's model now (cached_encoder: once per process) where this process will choose its kernel
    (kernels_for_actors leaves the config as it is: no GPU actors without a GPU here, no cluster), so that the CLI
    loads it while the run's Prefect server starts, not after."""
    if not gpus_elsewhere(cfg) and not os.environ.get("RAY_ADDRESS"):
        cached_encoder(cfg.model)


def kernels_for_actors(cfg: PipelineConfig, storage: Storage, run_id: str,
                       input_bytes: int) -> tuple[PipelineConfig, str | None]:
    """The config a build runs with, and why, where the workers rather than this process choose the kernel (with
    `model.precision: auto`; the kernel is then pinned, so the model card, the query encoding and every actor use
    it):
    - GPU actors (`run.gpus_per_actor`) and no GPU here (a CPU head node, say): which of fp32, fp16 and bf16 is
      fastest within tolerance is the GPU's to tell, so one task shaped like an actor measures it;
    - CPU actors on a cluster (RAY_ADDRESS) whose nodes are not all this machine's kind of CPU, for a run that may
      use Ray: each kind of CPU measures every CPU kernel and the one fastest in sum over the actors wins (bf16 on
      a Xeon with AMX runs MiniLM 2.7x faster than fp32; on a CPU without bf16 units it is emulated, 7.6x slower on
      an AMD EPYC Zen 3).
    The choice is kept in the run's folder: a resumed run embeds its other shards the same way (a new measurement
    could pick another kernel, which its committed shards would refuse). Otherwise this process measures for its
    workers (pinned_to), and (cfg, None) comes back."""
    model = cfg.model
    if model.family != "transformer" or model.kernel or model.precision != "auto":
        return cfg, None
    key = layout.worker_kernel_key(run_id)
    if storage.exists(key):
        kept = json.loads(storage.read_bytes(key))
        kernel, why = kept["kernel"], f"{kept['kernel']}, as this run's first attempt chose it ({kept['why']})"
    else:
        if gpus_elsewhere(cfg):
            from operators.kernel_probe import plan_like_an_actor

            plan = plan_like_an_actor(model, cfg.run)
            kernel, why, measured = plan.kernel.name, f"chosen on a GPU worker: {plan.summary()}", plan.to_dict()
        elif os.environ.get("RAY_ADDRESS") and may_use_ray(cfg, input_bytes):
            from operators.kernel_probe import plan_across_cpus

            if (chosen := plan_across_cpus(model, cfg.run)) is None:
                return cfg, None
            kernel, why, machines = chosen
            measured = [asdict(m) for m in machines]
        else:
            return cfg, None
        storage.write_bytes(key, json.dumps({"kernel": kernel, "why": why, "measured": measured}).encode())
    pinned = model.model_copy(update={"precision": kernel.split("-", 1)[0], "kernel": kernel})
    return cfg.model_copy(update={"model": pinned}), why


def executor_for(cfg: PipelineConfig, input_bytes: int) -> Executor:
    """A corpus of at most run.local_prepare_max_bytes is read, chunked and indexed here: starting Ray costs more
    than that much work. Anything larger runs as Ray tasks across the cluster."""
    if prepares_here(cfg, input_bytes):
        return LocalExecutor()
    from operators.executor import RayExecutor

    return RayExecutor()


def early_embedder(cfg: PipelineConfig, storage: Storage, plan: BuildPlan, executor: Executor,
                   input_bytes: int) -> RayEmbedder | None:
    """Ray actors started before prepare, so that their start (a worker process, imports, the model: ~2.5 s on
    2 CPUs) overlaps it: for a full build (everything is embedded, unless cached) prepared in this process (Ray
    tasks preparing shards would wait for the CPUs the actors hold) of a corpus big enough for the actors (at
    least one chunk per 4 x max_tokens input bytes, a low estimate)."""
    if plan.against.live is not None or executor.where != LocalExecutor.where or not may_use_ray(cfg, input_bytes):
        return None
    from operators.embedding import RayEmbedder

    return RayEmbedder(storage, pinned_to(cfg.model, cached_encoder(cfg.model)), cfg.run).start(cfg.run.shards)


def emulated_here(plan: KernelPlan) -> bool:
    """This process would run its kernel's half precision on a CPU without the units for it (no avx512_bf16 or
    AMX): bf16 chosen for a cluster's workers (kernels_for_actors) or forced, emulated here 7.6x slower than fp32
    (an AMD EPYC Zen 3: 291 against 2,218 tokens/s)."""
    if plan.device != "cpu" or plan.precision == "fp32":
        return False
    from pipeline.models.kernels import cpu_has_bf16

    return not cpu_has_bf16()


def embedder_for(cfg: PipelineConfig, storage: Storage, chunks_to_embed: int, early: RayEmbedder | None) -> Embedder:
    """A small delta (at most run.local_embed_max_chunks) is embedded here: starting Ray and a model per actor
    costs more (~7 s on 2 CPUs). Anything larger goes to Ray actors (`early`'s, when they were started), and so does
    everything when the actors have GPUs this process lacks (here a GPU kernel's half precision runs under CPU
    autocast, 4.1x slower than fp32 on an AVX2 CPU: 64 SciFact abstracts on an AMD EPYC Zen 3, 19.9 s against
    4.9 s), or run on a cluster (RAY_ADDRESS) a kernel this CPU would emulate (emulated_here)."""
    encoder = cached_encoder(cfg.model)
    elsewhere = gpus_elsewhere(cfg) or (bool(os.environ.get("RAY_ADDRESS")) and emulated_here(encoder.kernel_plan))
    if chunks_to_embed <= cfg.run.local_embed_max_chunks and not elsewhere:
        if early is not None:
            early.close()
        return LocalEmbedder(storage, encoder)
    if early is not None:
        return early
    from operators.embedding import RayEmbedder

    return RayEmbedder(storage, pinned_to(cfg.model, encoder), cfg.run)

