"""Where a build's embedding runs: in the flow's process for a small delta, on Ray actors otherwise, and always on
the actors when they hold GPUs this process lacks."""

import json

import torch

from flows.engine import embedder_for, gpus_elsewhere, kernels_for_actors, uses_ray_whatever_the_plan
from operators.embedding import RayEmbedder
from pipeline.config import PipelineConfig
from pipeline.jobs.embedder import LocalEmbedder
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from tests.conftest import SAMPLE


def test_a_small_delta_stays_here_unless_the_actors_have_gpus_this_process_lacks(tmp_path):
    storage = Storage(str(tmp_path / "store"))
    cfg = PipelineConfig.model_validate({"index_name": "x", "corpus": {"source": str(SAMPLE)},
                                         "model": {"name": "wordllama-l2-supercat", "package": "wordllama"},
                                         "run": {"local_embed_max_chunks": 256}})
    assert isinstance(embedder_for(cfg, storage, 10, None), LocalEmbedder)
    assert isinstance(embedder_for(cfg, storage, 257, None), RayEmbedder)
    gpu_actors = cfg.model_copy(update={"run": cfg.run.model_copy(update={"gpus_per_actor": 1})})
    # a GPU's half precision would run here under CPU autocast, several times slower than fp32
    assert gpus_elsewhere(gpu_actors) == (not torch.cuda.is_available())
    expected = LocalEmbedder if torch.cuda.is_available() else RayEmbedder
    assert isinstance(embedder_for(gpu_actors, storage, 10, None), expected)


def test_a_small_delta_goes_to_a_clusters_actors_when_this_cpu_would_emulate_the_kernel(tmp_path, monkeypatch):
    """On a cluster whose workers chose bf16 (their CPUs have the units) a driver without them would run a small delta
    emulated, ~7.6x slower than fp32: the delta goes to the actors. Without a cluster the actors would share this CPU,
    so the delta stays here; on a CPU with bf16 units it stays here too."""
    import flows.engine as engine
    import pipeline.models.kernels as kernels

    storage = Storage(str(tmp_path / "store"))
    cfg = PipelineConfig.model_validate({"index_name": "x", "corpus": {"source": str(SAMPLE)},
                                         "model": {"precision": "bf16", "kernel": "bf16-autocast"}})
    assert engine.cached_encoder(cfg.model).kernel_plan.precision == "bf16"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing is started: only the choice is made here
    for has_units, expected in ((False, RayEmbedder), (True, LocalEmbedder)):
        monkeypatch.setattr(kernels, "cpu_has_bf16", lambda has_units=has_units: has_units)
        assert isinstance(embedder_for(cfg, storage, 10, None), expected)
    monkeypatch.setattr(kernels, "cpu_has_bf16", lambda: False)
    fp32 = cfg.model_copy(update={"model": cfg.model.model_copy(update={"precision": "fp32", "kernel": "fp32-onednn"})})
    assert isinstance(embedder_for(fp32, storage, 10, None), LocalEmbedder)  # fp32 runs natively anywhere
    monkeypatch.delenv("RAY_ADDRESS")
    assert isinstance(embedder_for(cfg, storage, 10, None), LocalEmbedder)


def test_a_resumed_run_keeps_the_kernel_its_workers_chose(tmp_path, monkeypatch):
    """The kernel the workers chose on a run's first attempt (GPU actors, or a cluster of other CPUs) pins its
    resumed attempt without measuring again: a new measurement could pick another kernel, and the shards already
    committed would refuse the run. A run with no such choice is left to this process's own plan."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    storage = Storage(str(tmp_path / "store"))
    cfg = PipelineConfig.model_validate({"index_name": "x", "corpus": {"source": str(SAMPLE)}})
    assert kernels_for_actors(cfg, storage, "r1", 10**9) == (cfg, None)  # no cluster: this process measures
    storage.write_bytes(layout.worker_kernel_key("r1"), json.dumps(
        {"kernel": "bf16-onednn", "why": "bf16-onednn, the fastest in sum over the cluster's kinds of CPU (...)",
         "measured": []}).encode())
    pinned, why = kernels_for_actors(cfg, storage, "r1", 10**9)
    assert (pinned.model.precision, pinned.model.kernel) == ("bf16", "bf16-onednn")
    assert why.startswith("bf16-onednn, as this run's first attempt chose it (bf16-onednn, the fastest in sum")
    forced = cfg.model_copy(update={"model": cfg.model.model_copy(update={"precision": "fp32"})})
    assert kernels_for_actors(forced, storage, "r1", 10**9) == (forced, None)  # a forced precision is never changed


def test_only_a_build_sure_to_use_ray_starts_it_ahead(tmp_path):
    """The CLI starts Ray before Prefect's server only for a build that will use it whatever its plan finds: a full
    build (requested, or with nothing live yet) of a corpus big enough for actors, or a corpus prepared on Ray. An
    incremental run against a live version may embed a few documents in its own process, without Ray."""
    storage = Storage(str(tmp_path / "store"))
    cfg = PipelineConfig.model_validate({"index_name": "x", "corpus": {"source": str(SAMPLE)},
                                         "publish": {"alias": "live"}})  # 500 abstracts: ~1,000 chunks
    assert uses_ray_whatever_the_plan(cfg, storage, full=False)  # the alias is not set: every document is embedded
    tiny = cfg.model_copy(update={"run": cfg.run.model_copy(update={"local_embed_max_chunks": 10**6})})
    assert not uses_ray_whatever_the_plan(tiny, storage, full=True)  # embedded here, whatever the plan
    storage.compare_and_swap(layout.alias_key("x", "live"), json.dumps({"version": "v1"}).encode(), None)
    assert not uses_ray_whatever_the_plan(cfg, storage, full=False)  # incremental: the delta decides
    assert uses_ray_whatever_the_plan(cfg, storage, full=True)
    on_ray = cfg.model_copy(update={"run": cfg.run.model_copy(update={"local_prepare_max_bytes": 0})})
    assert uses_ray_whatever_the_plan(on_ray, storage, full=False)  # prepared by Ray tasks


def test_a_clusters_workers_get_the_caches_places_but_no_secret():
    """Ray keeps a job's runtime_env in its job records and dashboard: the serving token stays in this process."""
    from operators.cluster import WORKER_ENV, cluster_worker_env

    env = cluster_worker_env({"EMBEDPIPE_SERVE_TOKEN": "s3cret", "EMBEDPIPE_MODEL_CACHE": "/cache/models",
                              "EMBEDPIPE_FAULT_KILL_SHARD": "1", "AWS_SECRET_ACCESS_KEY": "k", "HOME": "/root"})
    assert env == WORKER_ENV | {"EMBEDPIPE_MODEL_CACHE": "/cache/models", "EMBEDPIPE_FAULT_KILL_SHARD": "1"}
