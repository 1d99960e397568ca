"""Two runs embedding on one cluster at once: Ray places actors in the order they are asked for, so on a cluster
with room for one actor of each run, each run holds one and waits for its second. Both must still finish, with
every shard of each embedded once, by the actors they got. And a local Ray started ahead of its actors gives them
workers that imported torch before they were asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import ray

from operators.cluster import ensure_ray
from operators.embedding import RayEmbedder
from pipeline.config import PipelineConfig
from pipeline.jobs.executor import LocalExecutor
from pipeline.jobs.indexing import load_vectors
from pipeline.jobs.prepare import ShardInput, prepare
from pipeline.models.encoder import load_encoder
from pipeline.storage.backend import Storage
from tests.conftest import REPO

WORDLLAMA = {"name": "wordllama-l2-supercat", "package": "wordllama"}


def _prepared_run(root: Path, docs: list[dict], cpus: float):
    corpus = root / "corpus.jsonl"
    root.mkdir(parents=True)
    corpus.write_text("".join(json.dumps({"_id": d["_id"], "text": d["text"]}) + "\n" for d in docs))
    cfg = PipelineConfig.model_validate({"index_name": "two-runs", "corpus": {"source": str(corpus)},
                                         "model": WORDLLAMA, "index": {"variants": ["exact"]},
                                         "run": {"shards": 4, "actors": 2, "cpus_per_actor": cpus}})
    storage = Storage(str(root / "store"))
    prepared = prepare(cfg, storage, "run", ShardInput(None), load_encoder(cfg.model).card, LocalExecutor())
    return cfg, storage, prepared


def test_two_runs_whose_actors_interleave_on_a_full_cluster_both_finish(tmp_path, sample_docs):
    ensure_ray()  # the test session's cluster
    cpus = ray.cluster_resources()["CPU"] / 2  # room for two actors in all: one of each run
    runs = [_prepared_run(tmp_path / name, sample_docs[:40], cpus) for name in ("a", "b")]
    embedders = [RayEmbedder(storage, cfg.model, cfg.run) for cfg, storage, _ in runs]
    for embedder in embedders:  # a's first actor, b's first, then each run's second: asked for in turn
        embedder.start(1)
    finished: dict[int, list] = {}

    def embed(i: int) -> None:
        _, _, prepared = runs[i]
        finished[i] = embedders[i].embed("run", prepared.largest_first(), lambda result: None)

    threads = [threading.Thread(target=embed, args=(i,), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120  # each run alone takes a few seconds
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    for embedder in embedders:  # frees the cluster even when a run is stuck
        embedder.close()
    assert sorted(finished) == [0, 1], "a run waited for good on an actor the other run's actors kept from starting"
    for i, (_, storage, prepared) in enumerate(runs):
        assert sorted(r.shard for r in finished[i]) == sorted(prepared.shards)
        rows, vectors = load_vectors(storage, "run", prepared.shards)
        assert len(rows) == len(vectors) == sum(prepared.shard_rows.values()) > 0
        assert vectors.shape[1] == load_encoder(runs[i][0].model).card.dims


WARM_WORKERS = """
import sys, ray
from operators.cluster import ensure_ray

@ray.remote(num_cpus=1)
class Probe:
    def __init__(self):
        self.torch_before_init = "torch" in sys.modules  # what the worker had imported before the actor started

    def answer(self):
        return self.torch_before_init

for warm in (True, False):
    ensure_ray(warm_workers=warm)
    print(warm, ray.get(Probe.remote().answer.remote()))
    ray.shutdown()
"""


def test_a_local_ray_started_ahead_gives_actors_workers_with_torch_loaded():
    """`warm_workers` (what the CLI asks for when it starts Ray before Prefect's server): every worker of the local
    instance imports torch as it starts, so an actor's start skips it (~0.9 s of ~1.4 s on 2 vCPUs). Not by default:
    actors asked for at once would wait for workers importing torch before they register."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local instance, not the session's cluster
    proc = subprocess.run([sys.executable, "-c", WARM_WORKERS], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True", "False", "False"]
