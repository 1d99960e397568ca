"""The executor seam on Ray (operators/executor.py): a step that runs as one task (IVF training, the evaluation) gets
the CPUs it asked for as FAISS threads, where a Ray worker would otherwise run FAISS on one."""

from __future__ import annotations

import os
from functools import partial

from pipeline.config import RunConfig
from pipeline.index.faiss_ops import faiss_threads
from pipeline.jobs.executor import LocalExecutor, one_task_threads


def _threads_seen(threads: int | None, _item: int) -> tuple[str | None, int]:
    import faiss

    with faiss_threads(threads):
        inside = faiss.omp_get_max_threads()
    return os.environ.get("OMP_NUM_THREADS"), inside


def test_one_task_steps_run_faiss_on_the_cpus_they_asked_ray_for():
    from operators.executor import RayExecutor

    executor, run = RayExecutor(), RunConfig(cpus_per_actor=2.0)
    threads = one_task_threads(executor, run)
    plain, = executor.map(partial(_threads_seen, None), [0])  # as any per-shard step runs
    asked, = executor.map(partial(_threads_seen, threads), [0], cpus=threads)
    assert plain == ("1", 1) and asked[1] == threads == 2
    assert one_task_threads(LocalExecutor(), run) is None  # in the flow's own process they are left as they are
