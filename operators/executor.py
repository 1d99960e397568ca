"""The executor seam on Ray (pipeline/jobs/executor.py): each unit of work a Ray task, placed by Ray anywhere in
the cluster. The steps commit a marker last and are idempotent, so a task lost with its node is simply retried."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import ray

from operators.cluster import ensure_ray, fitting_cpus, mark_node, unwrap
from pipeline.index.faiss_ops import faiss_threads
from pipeline.jobs.executor import RAY_TASKS

T = TypeVar("T")
R = TypeVar("R")


@ray.remote(max_retries=2)
def _call(fn: Callable[[T], R], item: T, cpus: float) -> R:
    mark_node()
    with faiss_threads(max(1, int(cpus))):  # a Ray worker starts with OMP_NUM_THREADS=1 whatever the task asked for
        return fn(item)


class RayExecutor:
    where = RAY_TASKS

    def map(self, fn: Callable[[T], R], items: list[T], on_result: Callable[[R], None] | None = None,
            cpus: float = 1.0) -> list[R]:
        if not items:
            return []
        ensure_ray()
        cpus = fitting_cpus(cpus)
        fn_ref = ray.put(fn)  # the step and its arguments (config, storage) travel once, not once per item
        pending = {_call.options(num_cpus=cpus).remote(fn_ref, item, cpus): i for i, item in enumerate(items)}
        results: list = [None] * len(items)
        try:
            while pending:
                [done], _ = ray.wait(list(pending), num_returns=1)
                results[pending.pop(done)] = value = ray.get(done)
                if on_result:
                    on_result(value)
        except BaseException as exc:  # a task's error, on_result's, an interrupt: the rest would run on, writing
            for ref in pending:
                ray.cancel(ref)
            if isinstance(exc, ray.exceptions.RayError):
                raise unwrap(exc) from exc
            raise
        return results
