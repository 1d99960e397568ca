"""The `migrate model` flow: a new model builds a green snapshot beside the live blue one, both are measured on
the same golden set, and the alias moves to green only if the quality gate passes.

- Blue is what the alias (`publish.alias`) serves now. A migration needs one: with no live snapshot there is
  nothing to compare with or fall back to, so it stops and says to build the first version with `reindex`.
- Green is a full build with the new model (same index name, a new version), through the same stages as
  `reindex` (flows/build.py) with promotion off. Nothing is reused across models: the embedding cache is
  keyed by the model's fingerprint, and IVF-PQ training is reused only within one model.
- Both are measured from their published files, each with the model its manifest records (blue's numbers
  are recomputed, not read from its manifest), and the drift between them is summarised.
  Nothing assumes equal dims: each side is searched and summarised on its own.
- A gate refusal is an outcome, not an error: the flow run completes with `promotion.promoted == False`,
  the alias stays on blue, green stays published (not live; `embedpipe gc` retires it), and the report
  says why. Errors (no live alias, a model that cannot load, a build failure) fail the run.
- A failed run retried with its run id (Retry in Prefect's UI, or `--run-id`) finishes what its first attempt began:
  the blue it recorded (runs/<run_id>/migration/blue.json) even where that attempt had moved the alias to green,
  and the green it committed, measured and promoted instead of built again; the report is written then.

The report goes to the run folder on storage (runs/<run_id>/migration/: report.json, report.md,
blue_green.png) and to two Prefect artifacts: the markdown report and the blue/green chart.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import State

from flows.artifacts import after_the_fact, png_artifact
from flows.build import artifact_key, build_snapshot, committed_summary, default_run_id, resumable
from flows.engine import corpus_bytes, kernels_for_actors, start_ray_ahead
from flows.live import live_version, measure_task
from flows.scheduled_runs import cancel_if_planned_by_replaced_schedule
from flows.tasks import local_task
from pipeline.config import PipelineConfig
from pipeline.config_loader import load_config
from pipeline.errors import ConfigError
from pipeline.jobs.migration import MigrationSummary, gate_check, migration_report
from pipeline.jobs.plan import plan_full_build
from pipeline.jobs.preflight import check_inputs
from pipeline.jobs.run_folder import committed_version
from pipeline.models.catalog import model_section
from pipeline.models.encoder import cached_encoder
from pipeline.quality.golden import load_golden_set
from pipeline.quality.measure import Measurement
from pipeline.redaction import redact
from pipeline.reports.markdown import migration_markdown
from pipeline.reports.plots import blue_green_png
from pipeline.snapshots.aliases import Promotion, promote_or_stay, read_alias
from pipeline.snapshots.snapshot import Snapshot
from pipeline.storage.backend import Storage
from pipeline.storage.layout import migration_key


def served_alias(cfg: PipelineConfig, job: str) -> str:
    if not cfg.publish.alias:
        raise ConfigError(f"{job} of {cfg.index_name}: publish.alias is not set; expected the alias that serves the "
                          "index (e.g. --set publish.alias=live)")
    return cfg.publish.alias


def _reported(storage: Storage, run_id: str) -> bool:
    return storage.exists(migration_key(run_id, "report.json"))


@local_task(name="open the live (blue) snapshot")
def open_blue_task(storage: Storage, index: str, alias: str, run_id: str) -> Snapshot:
    """Blue: what the alias serves, kept in the run's folder, so that an attempt retried after a crash compares with
    and promotes from the same blue, even when the first attempt had moved the alias to green already (a finished
    migration's run id, rerun, starts from the alias again)."""
    key = migration_key(run_id, "blue.json")
    if storage.exists(key) and not _reported(storage, run_id):
        return Snapshot.of(storage, index, json.loads(storage.read_bytes(key))["version"])
    version = live_version(storage, index, alias, "migration")
    storage.write_bytes(key, json.dumps({"version": version}).encode())
    return Snapshot.of(storage, index, version)


def unreported_green(storage: Storage, index: str, run_id: str) -> str | None:
    """The green version an earlier attempt of this run committed before it stopped short of its report."""
    return None if _reported(storage, run_id) else committed_version(storage, run_id, index)


@local_task(name="promote green through the quality gate")
def promote_green_task(cfg: PipelineConfig, storage: Storage, alias: str, blue: Measurement, green: Measurement,
                       passed: bool, reason: str) -> Promotion:
    """Move the alias from blue to green by compare-and-swap; the gate is checked again there on the same
    numbers (blue's recomputed ones), and a concurrent move of the alias wins over this one."""
    logger = get_run_logger()
    if passed:
        outcome = promote_or_stay(storage, cfg.index_name, alias, green.version, blue.version, cfg.publish.gate,
                                  by=f"migrate {blue.model} -> {green.model}", live_evaluation=blue.evaluation())
    else:
        outcome = Promotion(alias, False, read_alias(storage, cfg.index_name, alias).version, reason=reason)
    if outcome.promoted:
        logger.info("alias %s moved from %s to %s", alias, blue.version, green.version)
    else:
        logger.warning("alias %s stays on %s: %s", alias, outcome.live, outcome.reason)
    return outcome


@local_task(name="write the migration report")
def write_report_task(storage: Storage, run_id: str, report: dict, markdown: str, png: bytes) -> str:
    storage.write_bytes(migration_key(run_id, "report.json"), json.dumps(report, indent=2).encode())
    storage.write_bytes(migration_key(run_id, "report.md"), markdown.encode())
    storage.write_bytes(migration_key(run_id, "blue_green.png"), png)
    return redact(storage.url_of(migration_key(run_id, "report.json")))


@flow(name="migrate model", log_prints=True)
def migrate(config_path: str, model: str | None = None, overrides: dict[str, Any] | None = None,
            run_id: str | None = None) -> MigrationSummary | State:
    """Build a green snapshot of the config's corpus with `model` (a known model name or a local folder; None:
    the config's own model section), measure blue and green on the golden set, and promote green through
    the config's quality gate (publish.gate). `overrides` (dotted keys) apply after the model."""
    if replaced := cancel_if_planned_by_replaced_schedule():
        return replaced
    logger = get_run_logger()
    overrides = ({"model": model_section(model)} if model else {}) | (overrides or {})
    cfg = load_config(config_path, overrides)
    storage = Storage.of(cfg.storage)
    check_inputs(cfg, storage)
    start_ray_ahead(cfg, storage, full=True)  # its workers import torch while blue is measured and the model loads
    alias = served_alias(cfg, "migration")
    run_id = run_id or default_run_id(cfg, "migrate")
    blue_snapshot = open_blue_task(storage, cfg.index_name, alias, run_id)
    golden = load_golden_set(cfg, blue_snapshot.manifest)
    gate, k = cfg.publish.gate, cfg.evaluation.k
    # Blue first: a blue that cannot be measured (no such search mode, a missing file) stops before the build.
    blue = measure_task.with_options(name="measure blue (live) on the golden set")(
        blue_snapshot, golden, k, gate.mode, storage, cfg.run)
    # the precision is part of the fingerprint compared here
    cfg, _ = kernels_for_actors(cfg, storage, run_id, corpus_bytes(cfg))
    card = cached_encoder(cfg.model).card
    if blue_snapshot.manifest["model"].get("fingerprint") == card.fingerprint:
        raise ConfigError(f"migration of {cfg.index_name}: the live version {blue.version} already uses model "
                          f"{card.name} ({card.fingerprint}); nothing to migrate (reindex rebuilds with the same "
                          "model)")

    why = f"full build with {card.name}: migration from {blue.model} (live version {blue.version})"
    with resumable(run_id):  # from here an error names the run id, which resumes it
        green_cfg = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"alias": None})})
        if green_version := unreported_green(storage, cfg.index_name, run_id):
            logger.info("run %s committed green %s before it stopped: measuring and promoting it", run_id,
                        green_version)
            built = committed_summary(cfg, storage, "migrate", run_id, green_version, {})
        else:
            built = build_snapshot(green_cfg, storage, run_id, "migrate",
                                   partial(plan_full_build, cfg=cfg, why=why, base=blue.version), full=True)
        green_snapshot = Snapshot.of(storage, cfg.index_name, built.version)
        green = measure_task.with_options(name="measure green (candidate) on the golden set")(
            green_snapshot, golden, k, gate.mode, storage, cfg.run)

        result = gate_check(gate, blue, green)
        promotion = promote_green_task(cfg, storage, alias, blue, green, result.passed, "; ".join(result.reasons))
        report = migration_report(alias, golden, gate, result, promotion, blue, green)
        markdown = migration_markdown(report)
        png = blue_green_png(blue.stats, green.stats)
        report_url = write_report_task(storage, built.run_id, report, markdown, png)

        def artifacts() -> None:
            create_markdown_artifact(markdown + f"\n\nReport JSON: `{report_url}`",
                                     key=artifact_key("migration", cfg.index_name),
                                     description=f"migration of {cfg.index_name}: {blue.model} -> {green.model}, "
                                                 f"{'promoted' if promotion.promoted else 'refused'}")
            png_artifact(png, key=artifact_key("blue-green", cfg.index_name),
                         description=f"blue {blue.model} ({blue.version}) vs green {green.model} ({green.version})")

        after_the_fact(f"the migration's report is at {report_url}", artifacts)
        return MigrationSummary(cfg.index_name, alias, built.run_id, str(flow_run.id), blue, green, built.snapshot,
                                built.counts, gate, result, promotion, report, report_url, built.timings_s)
