"""Connect to Ray: the cluster in RAY_ADDRESS when set, else a fresh local one sized to this machine."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import ray

from pipeline.config import RunConfig
from pipeline.errors import ClusterError, EmbedpipeError
from pipeline.jobs.worker import NODE_ENV

# What every worker process needs, whoever started it: no model hub, no tokenizer thread pools in workers
# that already run one task per CPU, and the EMBEDPIPE_* settings (fault injection, model cache).
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# What a cluster's workers are told of this process's environment (Ray keeps a job's runtime_env in its records and
# dashboard, so secrets such as EMBEDPIPE_SERVE_TOKEN stay here): the caches' places and the tests' faults.
FORWARDED = ("EMBEDPIPE_DIGEST_CACHE", "EMBEDPIPE_KERNEL_CACHE", "EMBEDPIPE_MODEL_CACHE", "EMBEDPIPE_SNAPSHOT_CACHE",
             "EMBEDPIPE_FAULT_")


def cluster_worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a cluster's workers get from this process (its runtime_env's variables)."""
    return WORKER_ENV | {k: v for k, v in environ.items() if k.startswith(FORWARDED)}


def ensure_ray(num_cpus: int | None = None, warm_workers: bool = False) -> None:
    """Join RAY_ADDRESS's cluster with the resources it has, or start a local instance. Without RAY_ADDRESS the
    local instance is always a new one (address "local"): Ray would otherwise try to join the cluster named in
    its temp dir's `ray_current_cluster` file, which a dead `ray start` leaves behind.

    `warm_workers`, for a caller that starts Ray seconds before it asks for actors (flows/engine.start_ray_ahead):
    the local instance's workers import torch as they start, before they take work. Ray starts a worker per CPU as
    it comes up, so the actors get workers with torch loaded (~0.9 s of an actor's ~1.4 s start on 2 vCPUs). Not
    by default: actors asked for at once would wait for workers that import torch before they register (0.2-0.4 s
    longer on 2 vCPUs), and every worker pays it, those that only run tasks too (~150 MB and ~0.9 s of a CPU each).
    A cluster's nodes set the same with RAY_preload_python_modules (infra/docker)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # read by ray.init, in this process
    address = os.environ.get("RAY_ADDRESS")
    if address:
        if why := _unreachable(address):  # ray.init retries a dead address for minutes
            raise ClusterError(f"cannot join the Ray cluster at RAY_ADDRESS={address}: {why}; expected a running "
                               "cluster's head there (ray start --head), or unset RAY_ADDRESS to start a local one")
        runtime_env = {"env_vars": cluster_worker_env(os.environ)}
    else:
        # A local instance's workers inherit this process's environment. A runtime_env would say the same, but
        # then no pooled worker fits an actor: each waits for a fresh one (~0.8 s more per actor start).
        os.environ.update(WORKER_ENV)
        runtime_env = None
    try:
        ray.init(address=address or "local", num_cpus=None if address else (num_cpus or os.cpu_count()),
                 include_dashboard=False, logging_level="WARNING", log_to_driver=True, runtime_env=runtime_env,
                 _system_config={"preload_python_modules": ["torch"]} if warm_workers and not address else None)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        if not address:
            raise
        raise ClusterError(f"cannot join the Ray cluster at RAY_ADDRESS={address}: {exc}; a cluster started with "
                           "token authentication (`ray start`'s default once a token exists) needs RAY_AUTH_MODE=token "
                           "here too, and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token") from None


def check_actor_fits(run: RunConfig) -> None:
    """On a local instance, an actor (or a task shaped like one) that asks for more CPUs or GPUs than this machine
    has would wait forever: Ray keeps it pending for a node that never comes. Said before anything waits on it. A
    cluster (RAY_ADDRESS) is not checked: its autoscaler may yet add a node that fits (a GPU group at 0, say)."""
    if os.environ.get("RAY_ADDRESS"):
        return
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if run.cpus_per_actor > cpus or run.gpus_per_actor > gpus:
        raise ClusterError(f"an embedding actor asks for {run.cpus_per_actor:g} CPU(s) (run.cpus_per_actor) and "
                           f"{run.gpus_per_actor:g} GPU(s) (run.gpus_per_actor), and this machine's Ray has {cpus:g} "
                           f"CPU(s) and {gpus:g} GPU(s), so none could start: expected at most those, or RAY_ADDRESS "
                           "naming a cluster with nodes that size")


def fitting_cpus(cpus: float) -> float:
    """The CPUs a task may ask for: on a local instance at most its own (more would keep the task pending forever:
    `monitor --set run.cpus_per_actor=64` on a laptop); a cluster's autoscaler may yet add a node that fits."""
    if os.environ.get("RAY_ADDRESS"):
        return cpus
    return min(cpus, ray.cluster_resources().get("CPU", cpus))


def _unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing answers at a `host:port` or `ray://host:port` address, or None ("auto" is Ray's to resolve)."""
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        return "expected host:port or ray://host:port"
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"nothing answers there ({exc.strerror or type(exc).__name__})"


def mark_node() -> None:
    """In a worker: record its Ray node in the environment, where the pipeline's markers read it."""
    os.environ[NODE_ENV] = ray.get_runtime_context().get_node_id()


def unwrap(exc: ray.exceptions.RayError) -> Exception:
    """A pipeline error raised inside a worker comes back as that error, not as a RayTaskError."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, EmbedpipeError) else exc


def shutdown_ray() -> None:
    """Stop this process's Ray connection (and a local cluster it started), flushing worker logs."""
    if ray.is_initialized():
        ray.shutdown()
