"""The executor seam on Ray (operators/executor.py): a step that runs as one task (IVF training, the evaluation) gets
the CPUs it asked for as FAISS threads, where a Ray worker would otherwise run FAISS on one."""

from __future__ import annotations

import os

from pipeline.config import RunConfig
from pipeline.jobs.executor import one_task_cpus


def _threads_seen(_item: int) -> tuple[str | None, int]:
    import faiss

    return os.environ.get("OMP_NUM_THREADS"), faiss.omp_get_max_threads()


def test_one_task_steps_run_faiss_on_the_cpus_they_asked_ray_for():
    from operators.executor import RayExecutor

    executor, cpus = RayExecutor(), one_task_cpus(RunConfig(cpus_per_actor=2.0))
    plain, = executor.map(_threads_seen, [0])  # as any per-shard step runs
    asked, = executor.map(_threads_seen, [0], cpus=cpus)
    assert plain == ("1", 1) and asked[1] == cpus == 2
    assert one_task_cpus(RunConfig(cpus_per_actor=0.5)) == 1  # a fraction of a CPU still runs one thread


def test_a_task_asking_for_more_cpus_than_a_local_instance_has_runs_on_what_it_has(monkeypatch):
    """`monitor --set run.cpus_per_actor=64` on a 2-CPU machine: the measuring task would have stayed pending
    forever; on a local instance (no RAY_ADDRESS) it asks for the CPUs there are."""
    import ray

    from operators.executor import RayExecutor

    RayExecutor().map(_threads_seen, [0])  # joined the session's instance
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    have = int(ray.cluster_resources()["CPU"])
    [(_, threads)] = RayExecutor().map(_threads_seen, [0], cpus=one_task_cpus(RunConfig(cpus_per_actor=64.0)))
    assert threads == have < 64
