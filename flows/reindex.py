"""The `reindex` flow: the scheduled job. Incremental by default: against the snapshot the alias serves,
only new and changed documents are chunked and embedded (unchanged chunks reuse their cached vectors) and
deleted documents are dropped; with nothing comparable live (first run, new model or chunker) or
`full=True`, every document is redone."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.build import build_snapshot, default_run_id, delta_task
from pipeline.config import load_config
from pipeline.delta import Delta
from pipeline.stages import check_inputs


@flow(name="reindex", log_prints=True)
def reindex(config_path: str, overrides: dict[str, Any] | None = None, run_id: str | None = None,
            full: bool = False) -> dict:
    """Build, evaluate and publish a snapshot of the corpus a config names, and promote it through the
    quality gate. Reusing `run_id` resumes a run."""
    cfg = load_config(config_path, overrides)
    check_inputs(cfg)

    def delta() -> tuple[Delta, str | None, str]:
        return (Delta(live=None), None, "full build: requested") if full else delta_task(cfg, None)

    return build_snapshot(cfg, run_id or default_run_id(cfg, "reindex"), "reindex", delta)
