"""The executor seam: a job's per-piece and per-shard steps are plain functions mapped over their units of work.
`LocalExecutor` runs them one after another in this process; operators.executor.RayExecutor runs each as a Ray task
on the cluster. The steps are idempotent and commit a marker last, so an executor may retry any of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from pipeline.config import RunConfig

T = TypeVar("T")
R = TypeVar("R")


RAY_TASKS = "ray tasks"  # operators.executor.RayExecutor's `where`, as counts record it


class Executor(Protocol):
    where: str  # "flow process", "ray tasks": recorded in the counts

    def map(self, fn: Callable[[T], R], items: list[T], on_result: Callable[[R], None] | None = None,
            cpus: float = 1.0) -> list[R]:
        """fn(item) for every item, results in item order; `on_result` sees each as it finishes. `cpus`: what each
        call may use (on Ray its resource request, and FAISS's threads)."""
        ...


class LocalExecutor:
    where = "flow process"

    def map(self, fn: Callable[[T], R], items: list[T], on_result: Callable[[R], None] | None = None,
            cpus: float = 1.0) -> list[R]:
        results = []
        for item in items:
            results.append(fn(item))
            if on_result:
                on_result(results[-1])
        return results


def one_task_cpus(run: RunConfig) -> int:
    """The CPUs of a step that runs as one task (IVF training, the evaluation): one actor's (run.cpus_per_actor,
    whole, at least 1), which a node was found to have. In this process `cpus` changes nothing."""
    return max(1, int(run.cpus_per_actor))
