"""The `monitor live index` flow: the weekly check that the snapshot an alias serves still answers the golden
queries as well as when it was published.

It opens the live snapshot through the alias, measures it on the golden set with the model its manifest
records (pipeline/quality/measure.py), and compares the metrics of `monitor.mode` with the baseline: those
recorded in the snapshot's manifest at publish time (pipeline/jobs/monitoring.py says why not the previous
run's). Each run's result is stored (layout.monitoring_prefix) and shown as a markdown artifact (metric,
baseline, current, drop, threshold, plus the drift of scores and vectors since publish time and since the previous
run). When a metric fell by more than `monitor.max_drop` allows, or a drift statistic moved further from its
publish-time value than `monitor.max_drift` allows, the artifact is written first and the run then fails
(MonitoringFailed), so the failure shows in the Prefect UI and its notifications with the evidence beside it.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import State

from flows.build import artifact_key
from flows.live import measure_task, open_live_task
from flows.scheduled_runs import cancel_if_planned_by_replaced_schedule
from flows.tasks import local_task
from pipeline.config import PipelineConfig
from pipeline.config_loader import load_config
from pipeline.errors import ConfigError, EmbedpipeError, MonitoringFailed
from pipeline.jobs.monitoring import MonitorResult, monitor_result, previous_result
from pipeline.quality.golden import load_golden_set
from pipeline.reports.markdown import monitor_markdown
from pipeline.storage.backend import Storage


def watched_alias(cfg: PipelineConfig) -> str:
    alias = cfg.monitor.alias or cfg.publish.alias
    if not alias:
        raise ConfigError(f"monitoring of {cfg.index_name}: no alias to watch; set monitor.alias or publish.alias "
                          "(e.g. --set monitor.alias=live)")
    return alias


@local_task(name="store the result")
def store_result_task(storage: Storage, result: MonitorResult) -> str:
    storage.write_bytes(result.key, json.dumps(result.to_dict(), indent=2).encode())
    return result.key


@flow(name="monitor live index", log_prints=True)
def monitor(config_path: str, overrides: dict[str, Any] | None = None) -> MonitorResult | State:
    """Measure the snapshot the alias serves on the golden set; fail when a watched metric fell more than
    monitor.max_drop below its publish-time value."""
    if replaced := cancel_if_planned_by_replaced_schedule():
        return replaced
    cfg = load_config(config_path, overrides)
    storage = Storage.of(cfg.storage)
    alias = watched_alias(cfg)
    key = artifact_key("monitor", cfg.index_name, alias)
    try:
        snapshot = open_live_task(storage, cfg.index_name, alias, "monitoring")
        golden = load_golden_set(cfg, snapshot.manifest)
        measured = measure_task.with_options(name="measure the live snapshot on the golden set")(
            snapshot, golden, cfg.evaluation.k, cfg.monitor.mode, storage, cfg.run)
        result = monitor_result(alias, snapshot.manifest, golden, measured, dict(cfg.monitor.max_drop),
                                previous_result(storage, cfg.index_name, alias), max_drift=dict(cfg.monitor.max_drift))
    except EmbedpipeError as exc:  # could not even measure: say so where the weekly result is looked for
        create_markdown_artifact(f"# Monitoring `{cfg.index_name}` alias `{alias}`: could not run\n\n{exc}", key=key,
                                 description=f"monitoring of {cfg.index_name}/{alias}: error")
        raise
    store_result_task(storage, result)
    create_markdown_artifact(monitor_markdown(result), key=key,
                             description=f"monitoring of {cfg.index_name}/{alias} {result.version}: "
                                         f"{'passed' if result.passed else 'FAILED'}")
    if not result.passed:
        raise MonitoringFailed(f"monitoring of {cfg.index_name}/{alias} version {result.version} failed: "
                               + "; ".join(result.violations), result)
    get_run_logger().info("%s/%s version %s: every watched metric within its threshold", cfg.index_name, alias,
                          result.version)
    return result
