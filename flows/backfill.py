"""The `backfill` flow: the ad-hoc job. Re-chunks and re-embeds a chosen subset of documents (ids, shards,
or a polars SQL filter on metadata fields, e.g. a date range), typically after a chunker or cleaning rule
changed for them, and publishes a version that differs from the live one only there."""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect import flow
from prefect.states import State

from flows.build import build_snapshot, default_run_id
from flows.scheduled_runs import cancel_if_planned_by_replaced_schedule
from pipeline.config_loader import load_config
from pipeline.corpus.delta import Selection
from pipeline.jobs.build import BuildSummary
from pipeline.jobs.plan import plan_build
from pipeline.jobs.preflight import check_inputs
from pipeline.storage.backend import Storage


@flow(name="backfill", log_prints=True)
def backfill(config_path: str, doc_ids: list[str] | None = None, shards: list[int] | None = None,
             where: str | None = None, overrides: dict[str, Any] | None = None,
             run_id: str | None = None) -> BuildSummary | State:
    """Redo the selected documents (any of `doc_ids`, `shards`, or rows matching `where`) with the config
    as it is now, keep every other document of the live snapshot, publish and promote through the gate."""
    if replaced := cancel_if_planned_by_replaced_schedule():
        return replaced
    cfg = load_config(config_path, overrides)
    storage = Storage.of(cfg.storage)
    check_inputs(cfg, storage)
    selection = Selection(frozenset(doc_ids or ()), frozenset(shards or ()), where)
    selection.check_shards(cfg.run.shards)
    return build_snapshot(cfg, storage, run_id or default_run_id(cfg, "backfill"), "backfill",
                          partial(plan_build, cfg=cfg, selection=selection))
