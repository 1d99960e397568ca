"""The `reindex` flow: the scheduled job. Incremental by default: against the snapshot the alias serves,
only new and changed documents are chunked and embedded (unchanged chunks reuse their cached vectors) and
deleted documents are dropped; with nothing comparable live (first run, new model or chunker) or
`full=True`, every document is redone."""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect import flow
from prefect.states import State

from flows.build import build_snapshot, default_run_id
from flows.scheduled_runs import cancel_if_planned_by_replaced_schedule
from pipeline.config_loader import load_config
from pipeline.jobs.build import BuildSummary
from pipeline.jobs.plan import plan_build, plan_full_build
from pipeline.jobs.preflight import check_inputs
from pipeline.storage.backend import Storage


@flow(name="reindex", log_prints=True)
def reindex(config_path: str, overrides: dict[str, Any] | None = None, run_id: str | None = None,
            full: bool = False) -> BuildSummary | State:
    """Build, evaluate and publish a snapshot of the corpus a config names, and promote it through the
    quality gate. Reusing `run_id` resumes a run."""
    if replaced := cancel_if_planned_by_replaced_schedule():
        return replaced
    cfg = load_config(config_path, overrides)
    storage = Storage.of(cfg.storage)
    check_inputs(cfg, storage)
    planner = partial(plan_full_build, cfg=cfg, why="full build: requested") if full else partial(plan_build, cfg=cfg)
    return build_snapshot(cfg, storage, run_id or default_run_id(cfg, "reindex"), "reindex", planner, full)
