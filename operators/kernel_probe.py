"""The kernel plan measured where the actors run, for a driver whose own device says little about theirs: GPU actors
with no GPU here (`plan_like_an_actor`), or a cluster whose nodes have other CPUs than this machine
(`plan_across_cpus`). The choosing is pure (pipeline/models/kernel_plan.py); this module only runs the probes."""

from __future__ import annotations

import math
from collections import defaultdict

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from operators.cluster import check_actor_fits, ensure_ray, unwrap
from operators.embedding import actor_threads
from pipeline.config import ModelConfig, RunConfig
from pipeline.errors import ClusterError
from pipeline.models.encoder import load_encoder
from pipeline.models.kernel_plan import KernelPlan, MachinePlan, choose_across, cpu_class, cpu_offer


@ray.remote(max_retries=2)
def _kernel_plan(model: dict, threads: int, offer: list[str] | None = None) -> dict:
    from pipeline.models.kernels import pinned

    encoder = load_encoder(ModelConfig(**model), threads=threads, offer=offer)
    return {"plan": encoder.kernel_plan.to_dict(), "runs_as": {n: pinned(n, encoder.device).name for n in offer or []}}


@ray.remote(num_cpus=0)
def _cpu_class() -> str:
    return cpu_class()


def _wait(refs: list, timeout_s: float, missing: str) -> list:
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise ClusterError(f"{missing} within {timeout_s:g} s to choose the kernels for model.precision: auto; "
                           "expected such a node in the cluster, or set model.precision to skip the measurement"
                           ) from None
    except ray.exceptions.RayError as exc:
        raise unwrap(exc) from exc


def plan_like_an_actor(model: ModelConfig, run: RunConfig, timeout_s: float = 900.0) -> KernelPlan:
    """The kernel plan an embedding actor would choose, measured by one task that holds what an actor holds (its
    GPUs and CPUs): for a driver without the actors' device to measure on."""
    ensure_ray()
    check_actor_fits(run)
    ref = _kernel_plan.options(num_cpus=run.cpus_per_actor, num_gpus=run.gpus_per_actor).remote(
        model.model_dump(), actor_threads(run))
    [out] = _wait([ref], timeout_s,
                  f"no Ray worker with {run.gpus_per_actor:g} GPU(s) and {run.cpus_per_actor:g} CPU(s) was free")
    return KernelPlan.from_dict(out["plan"])


def actor_nodes_by_cpu(run: RunConfig, timeout_s: float = 120.0) -> dict[str, dict[str, int]]:
    """cpu_class -> {node id: actors it holds} over the live nodes with room for at least one CPU actor."""
    room = {n["NodeID"]: math.floor(n["Resources"].get("CPU", 0) / run.cpus_per_actor)
            for n in ray.nodes() if n["Alive"]}
    nodes = [node for node, actors in room.items() if actors > 0]
    classes = _wait([_cpu_class.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                     for node in nodes], timeout_s, "not every node with CPUs said which CPU it has")
    grouped: dict[str, dict[str, int]] = defaultdict(dict)
    for node, cpu in zip(nodes, classes, strict=True):
        grouped[cpu][node] = room[node]
    return dict(grouped)


def plan_across_cpus(model: ModelConfig, run: RunConfig, timeout_s: float = 900.0,
                     always: bool = False) -> tuple[str, str, list[MachinePlan]] | None:
    """For CPU actors on a cluster: None when every node that holds an actor has this machine's kind of CPU (this
    process's own plan is theirs; `always` measures anyway). Otherwise one task per kind of CPU, shaped like an
    actor and placed on a node of that kind, measures every CPU kernel, and the kernel fastest in sum over the
    actors is chosen: (kernel, why, the measurements)."""
    ensure_ray()
    grouped = actor_nodes_by_cpu(run)
    if not grouped or (set(grouped) == {cpu_class()} and not always):
        return None
    offered = cpu_offer(model.cpu_onednn)
    refs = [_kernel_plan.options(num_cpus=run.cpus_per_actor, scheduling_strategy=NodeAffinitySchedulingStrategy(
        next(iter(nodes)), soft=False)).remote(model.model_dump(), actor_threads(run), offered)
        for nodes in grouped.values()]
    outs = _wait(refs, timeout_s, f"no Ray worker with {run.cpus_per_actor:g} CPU(s) was free on each kind of CPU")
    machines = [MachinePlan(cpu, sum(nodes.values()), KernelPlan.from_dict(out["plan"]), out["runs_as"])
                for (cpu, nodes), out in zip(grouped.items(), outs, strict=True)]
    return *choose_across(machines, offered), machines
