"""The `monitor live index` flow: the weekly check that the snapshot an alias serves still answers the golden
queries as well as when it was published.

It opens the live snapshot through the alias, measures it on the golden set with the model its manifest
records (pipeline/measure.py), and compares the metrics of `monitor.mode` with the baseline: those recorded
in the snapshot's manifest at publish time (pipeline/monitoring.py says why not the previous run's). Each
run's result is stored under monitoring/<index>/<alias>/ and shown as a markdown artifact (metric, baseline,
current, drop, threshold, plus the drift of scores and vectors since the previous run). When a metric fell
by more than `monitor.max_drop` allows, the artifact is written first and the run then fails
(MonitoringFailed), so the failure shows in the Prefect UI and its notifications with the evidence beside it.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.build import artifact_key
from flows.live import measure_task, open_live
from flows.tasks import local_task
from pipeline.config import PipelineConfig, load_config
from pipeline.errors import ConfigError, EmbedpipeError, MonitoringFailed
from pipeline.measure import load_golden_set
from pipeline.monitoring import monitor_markdown, monitor_result, previous_result, result_key
from pipeline.snapshot import Snapshot


def watched_alias(cfg: PipelineConfig) -> str:
    alias = cfg.monitor.alias or cfg.publish.alias
    if not alias:
        raise ConfigError(f"monitoring of {cfg.index_name}: no alias to watch; set monitor.alias or publish.alias "
                          "(e.g. --set monitor.alias=live)")
    return alias


@local_task(name="open the live snapshot")
def open_live_task(cfg: PipelineConfig, alias: str) -> Snapshot:
    return open_live(cfg.storage_client(), cfg.index_name, alias, "monitoring")


@local_task(name="store the result")
def store_result_task(cfg: PipelineConfig, result: dict) -> str:
    storage = cfg.storage_client()
    key = result_key(result)
    storage.write_bytes(key, json.dumps(result, indent=2).encode())
    return key


@flow(name="monitor live index", log_prints=True)
def monitor(config_path: str, overrides: dict[str, Any] | None = None) -> dict:
    """Measure the snapshot the alias serves on the golden set; fail when a watched metric fell more than
    monitor.max_drop below its publish-time value."""
    cfg = load_config(config_path, overrides)
    alias = watched_alias(cfg)
    key = artifact_key("monitor", cfg.index_name, alias)
    try:
        snapshot = open_live_task(cfg, alias)
        golden = load_golden_set(cfg, snapshot.manifest)
        measured = measure_task.with_options(name="measure the live snapshot on the golden set")(
            snapshot, golden, cfg.evaluation.k, cfg.monitor.mode, cfg.storage_client())
        result = monitor_result(alias, snapshot.manifest, golden, measured, dict(cfg.monitor.max_drop),
                                previous_result(cfg.storage_client(), cfg.index_name, alias))
    except EmbedpipeError as exc:  # could not even measure: say so where the weekly result is looked for
        create_markdown_artifact(f"# Monitoring `{cfg.index_name}` alias `{alias}`: could not run\n\n{exc}", key=key,
                                 description=f"monitoring of {cfg.index_name}/{alias}: error")
        raise
    result["stored_at"] = store_result_task(cfg, result)
    create_markdown_artifact(monitor_markdown(result), key=key,
                             description=f"monitoring of {cfg.index_name}/{alias} {result['version']}: "
                                         f"{'passed' if result['passed'] else 'FAILED'}")
    if not result["passed"]:
        raise MonitoringFailed(f"monitoring of {cfg.index_name}/{alias} version {result['version']} failed: "
                               + "; ".join(result["violations"]), result)
    get_run_logger().info("%s/%s version %s: every watched metric within its threshold", cfg.index_name, alias,
                          result["version"])
    return result
