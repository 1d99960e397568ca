"""The `migrate model` flow: a new model builds a green snapshot beside the live blue one, both are measured on
the same golden set, and the alias moves to green only if the quality gate passes.

- Blue is what the alias (`publish.alias`) serves now. A migration needs one: with no live snapshot there is
  nothing to compare with or fall back to, so it stops and says to build the first version with `reindex`.
- Green is a full build with the new model (same index name, a new version), through the same stages as
  `reindex` (flows/build.py) with promotion off. Nothing is reused across models: the embedding cache is
  keyed by the model's fingerprint, so every chunk is embedded again with the new model.
- Both are measured from their published files, each with the model its manifest records (blue's numbers
  are recomputed, not read from its manifest), and the drift between them is summarised (pipeline/drift.py).
  Nothing assumes equal dims: each side is searched and summarised on its own.
- A gate refusal is an outcome, not an error: the flow run completes with `promotion.promoted == False`,
  the alias stays on blue, green stays published (not live; `embedpipe gc` retires it), and the report
  says why. Errors (no live alias, a model that cannot load, a build failure) fail the run.

The report goes to the run folder on storage (runs/<run_id>/migration/: report.json, report.md,
blue_green.png) and to two Prefect artifacts: the markdown report and the blue/green chart.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.artifacts import png_artifact
from flows.build import artifact_key, build_snapshot, default_run_id
from flows.live import measure_task, open_live
from flows.tasks import local_task
from pipeline.aliases import promote_or_stay, read_alias
from pipeline.config import PipelineConfig, load_config
from pipeline.delta import Delta
from pipeline.encoder import cached_encoder
from pipeline.errors import ConfigError
from pipeline.measure import Measurement, load_golden_set
from pipeline.migration import gate_check, migration_markdown, migration_report
from pipeline.model_catalog import model_section
from pipeline.plots import blue_green_png
from pipeline.snapshot import Snapshot
from pipeline.stages import check_inputs
from pipeline.storage import redact


def served_alias(cfg: PipelineConfig, job: str) -> str:
    if not cfg.publish.alias:
        raise ConfigError(f"{job} of {cfg.index_name}: publish.alias is not set; expected the alias that serves the "
                          "index (e.g. --set publish.alias=live)")
    return cfg.publish.alias


@local_task(name="open the live (blue) snapshot")
def open_blue_task(cfg: PipelineConfig, alias: str) -> Snapshot:
    return open_live(cfg.storage_client(), cfg.index_name, alias, "migration")


@local_task(name="promote green through the quality gate")
def promote_green_task(cfg: PipelineConfig, alias: str, blue: Measurement, green: Measurement, passed: bool,
                       reason: str) -> dict:
    """Move the alias from blue to green by compare-and-swap; the gate is checked again there on the same
    numbers (blue's recomputed ones), and a concurrent move of the alias wins over this one."""
    logger = get_run_logger()
    storage = cfg.storage_client()
    if passed:
        outcome = promote_or_stay(storage, cfg.index_name, alias, green.version, blue.version, cfg.publish.gate,
                                  by=f"migrate {blue.model} -> {green.model}", live_evaluation=blue.evaluation())
    else:
        outcome = {"alias": alias, "promoted": False, "live": read_alias(storage, cfg.index_name, alias).version,
                   "reason": reason}
    if outcome["promoted"]:
        logger.info("alias %s moved from %s to %s", alias, blue.version, green.version)
    else:
        logger.warning("alias %s stays on %s: %s", alias, outcome["live"], outcome["reason"])
    return outcome


@local_task(name="write the migration report")
def write_report_task(cfg: PipelineConfig, run_id: str, report: dict, markdown: str, png: bytes) -> str:
    storage = cfg.storage_client()
    prefix = f"runs/{run_id}/migration"
    storage.write_bytes(f"{prefix}/report.json", json.dumps(report, indent=2).encode())
    storage.write_bytes(f"{prefix}/report.md", markdown.encode())
    storage.write_bytes(f"{prefix}/blue_green.png", png)
    return redact(storage.url_of(f"{prefix}/report.json"))


@flow(name="migrate model", log_prints=True)
def migrate(config_path: str, model: str | None = None, overrides: dict[str, Any] | None = None,
            run_id: str | None = None) -> dict:
    """Build a green snapshot of the config's corpus with `model` (a known model name or a local folder; None:
    the config's own model section), measure blue and green on the golden set, and promote green through
    the config's quality gate (publish.gate). `overrides` (dotted keys) apply after the model."""
    overrides = ({"model": model_section(model)} if model else {}) | (overrides or {})
    cfg = load_config(config_path, overrides)
    check_inputs(cfg)
    alias = served_alias(cfg, "migration")
    blue_snapshot = open_blue_task(cfg, alias)
    golden = load_golden_set(cfg, blue_snapshot.manifest)
    gate, k = cfg.publish.gate, cfg.evaluation.k
    # Blue first: a blue that cannot be measured (no such search mode, a missing file) stops before the build.
    blue = measure_task.with_options(name="measure blue (live) on the golden set")(blue_snapshot, golden, k, gate.mode,
                                                                                  cfg.storage_client())
    card = cached_encoder(cfg.model).card
    if blue_snapshot.manifest["model"].get("fingerprint") == card.fingerprint:
        raise ConfigError(f"migration of {cfg.index_name}: the live version {blue.version} already uses model "
                          f"{card.name} ({card.fingerprint}); nothing to migrate (reindex rebuilds with the same "
                          "model)")

    why = f"full build with {card.name}: migration from {blue.model} (live version {blue.version})"
    green_cfg = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"alias": None})})
    built = build_snapshot(green_cfg, run_id or default_run_id(cfg, "migrate"), "migrate",
                           lambda: (Delta(live=None), blue.version, why))
    green_snapshot = Snapshot.of(cfg.storage_client(), cfg.index_name, built["version"])
    green = measure_task.with_options(name="measure green (candidate) on the golden set")(
        green_snapshot, golden, k, gate.mode, cfg.storage_client())

    result = gate_check(gate, blue, green)
    promotion = promote_green_task(cfg, alias, blue, green, result.passed, "; ".join(result.reasons))
    report = migration_report(alias, golden, gate, result, promotion, blue, green)
    markdown = migration_markdown(report)
    png = blue_green_png(blue.stats, green.stats)
    report_url = write_report_task(cfg, built["run_id"], report, markdown, png)
    create_markdown_artifact(markdown + f"\n\nReport JSON: `{report_url}`",
                             key=artifact_key("migration", cfg.index_name),
                             description=f"migration of {cfg.index_name}: {blue.model} -> {green.model}, "
                                         f"{'promoted' if promotion['promoted'] else 'refused'}")
    png_artifact(png, key=artifact_key("blue-green", cfg.index_name),
                 description=f"blue {blue.model} ({blue.version}) vs green {green.model} ({green.version})")
    return {"job": "migrate", "index_name": cfg.index_name, "alias": alias, "run_id": built["run_id"],
            "flow_run_id": str(flow_run.id),
            "blue": {"version": blue.version, "model": blue.model, "dims": blue.dims, "metrics": blue.metrics},
            "green": {"version": green.version, "model": green.model, "dims": green.dims, "metrics": green.metrics,
                      "snapshot": built["snapshot"], "counts": built["counts"]},
            "mode": gate.mode, "gate": {**gate.model_dump(), "passed": result.passed, "reasons": result.reasons},
            "promotion": promotion, "topk_overlap": report["drift"].get("topk_overlap"),
            "drift_notes": report["drift"]["notes"], "report": report_url, "timings_s": built["timings_s"]}
