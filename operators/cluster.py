"""Connect to Ray: the cluster in RAY_ADDRESS when set, else a local one sized to this machine."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402  (the environment must be set before ray is imported)

from pipeline.errors import EmbedpipeError  # noqa: E402


def ensure_ray(num_cpus: int | None = None) -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    ray.init(
        address=address or None,
        num_cpus=None if address else (num_cpus or os.cpu_count()),
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=True,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                  **{k: v for k, v in os.environ.items() if k.startswith("EMBEDPIPE_")}}},
    )


def unwrap(exc: ray.exceptions.RayError) -> Exception:
    """A pipeline error raised inside a worker comes back as that error, not as a RayTaskError."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, EmbedpipeError) else exc


def shutdown_ray() -> None:
    """Stop this process's Ray connection (and a local cluster it started), flushing worker logs."""
    if ray.is_initialized():
        ray.shutdown()
