"""`embedpipe run | backfill | migrate | monitor`: the jobs, each running its Prefect flow in this process.

PREFECT_API_URL names the server that records the run; without it a temporary local server starts. The config
and inputs are checked before Prefect or Ray start. `migrate` exits 0 whether the gate promoted green or refused
it (the table says which; --json has `promotion.promoted`); `monitor` exits 1 when a watched metric dropped
beyond its threshold, 2 on an error.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table as RichTable

from flows.cli.common import (
    Config,
    JsonFlag,
    SetFlag,
    compact_table,
    console,
    flow_output,
    parse_sets,
    reports_errors,
    rich_table,
)
from flows.cli.snapshots import print_search
from pipeline.reports.tables import MAIN_COUNTS, figure, num, quality_table, timings_table


def _run_id(value: str | None) -> str | None:
    """A run id names a folder under runs/: checked by the storage layout before anything starts, with the flag
    named."""
    from pipeline.errors import SnapshotError
    from pipeline.storage import layout

    try:
        return None if value is None else layout.check_name("run id", value, layout.RUN_ID)
    except SnapshotError as exc:
        raise typer.BadParameter(str(exc)) from None


RunIdFlag = Annotated[str | None, typer.Option(callback=_run_id,
                                               help="reuse a run id to resume it (finished shards skipped)")]
ExampleFlag = Annotated[bool, typer.Option(help="after publishing, search the snapshot with a golden query")]


def _run_flow(config: str, overrides: dict[str, Any], as_json: bool, flow: Callable[[], Callable[[], Any]],
              full: bool | None = None, check: Callable | None = None) -> Any:
    """Check the config and inputs (`check`, given the config and its storage; a build's check_inputs by default)
    before Prefect or Ray start, then run the flow (`flow` imports its modules and returns its call) with progress
    bars. A build (`full`: of every document; False: of those its plan finds changed or selected) starts Ray first
    where it is sure to use it, so that Ray's workers get ready meanwhile (flows/engine.py start_ray_ahead).
    A Prefect server of the run's own, when PREFECT_API_URL names none, starts meanwhile (flows/prefect_api.py
    local_server), while this process imports the flow's modules and, for a build, loads the model
    (load_model_ahead)."""
    from flows.engine import load_model_ahead, start_ray_ahead
    from flows.prefect_api import check_prefect_api, local_server, reporting_to
    from pipeline.config_loader import load_config
    from pipeline.jobs.preflight import check_inputs
    from pipeline.startup import collector_paused
    from pipeline.storage.backend import Storage

    cfg = load_config(config, overrides)
    storage = Storage.of(cfg.storage)
    (check or check_inputs)(cfg, storage)
    check_prefect_api()
    # the watchdog (flow_output) covers this run's Prefect server and a local Ray started here too
    with flow_output(as_json), local_server() as server:
        # torch, the model and the flow's modules: ~1 s of collections walking the growing heap on the way, with
        # the collector on (Zen 4)
        with collector_paused():
            if full is not None:
                start_ray_ahead(cfg, storage, full)
                if server:  # else the flow loads it: a failure to load then shows in its run on the server
                    load_model_ahead(cfg)
            call = flow()  # imports the flow's modules
        with reporting_to(server) if server else contextlib.nullcontext():
            result = call()
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    return result


def _print_summary(summary, example: bool, config: str, overrides: dict[str, Any]) -> None:
    """A build's summary (pipeline.jobs.build.BuildSummary) for the terminal; the example search reads the snapshot
    with the config's `storage.options` (an endpoint given only there, say)."""
    from pipeline.jobs.build import NOT_EVALUATED
    from pipeline.jobs.executor import RAY_TASKS
    from pipeline.quality.golden import coverage_note

    if summary.published:
        console.print(f"\n[bold green]published[/] {summary.index_name} version [bold]{summary.version}[/] "
                      f"({summary.job}; {summary.delta})", soft_wrap=True)
    else:
        console.print(f"\n[bold]nothing published[/]: {summary.index_name} {summary.delta}", soft_wrap=True)
    console.print(f"  snapshot: {summary.snapshot}", soft_wrap=True)
    console.print(f"  run: {summary.run_id}", soft_wrap=True)
    shown = (*MAIN_COUNTS, "docs_redone") if summary.job == "backfill" else MAIN_COUNTS  # the selection, redone
    counts = [f"{k} {summary.counts[k]}" for k in shown if k in summary.counts]
    if skipped := summary.counts.get("shards_skipped"):  # their chunks count, their vectors were made before
        counts.append(f"shards_skipped {skipped} (committed by an earlier attempt)")
    console.print("  counts: " + ", ".join(counts), soft_wrap=True)
    if kernels := summary.counts.get("kernels"):
        console.print("  embedded with: " + "; ".join(f"{k} x {n} shards" for k, n in kernels.items()),
                      soft_wrap=True)
    elif summary.published and summary.counts.get("reused_from_cache"):
        console.print("  embedded with: nothing embedded now (every vector from the embedding cache)", soft_wrap=True)
    for note in summary.training_notes():
        console.print(f"  training of {note}", soft_wrap=True)
    console.print(compact_table(timings_table(summary.timings_s)))
    if promotion := summary.promotion:
        outcome = "[green]promoted to this version[/]" if promotion.promoted else \
            f"[yellow]stays at {promotion.live}[/]: {promotion.reason}"
        console.print(f"  alias {promotion.alias}: {outcome}", soft_wrap=True)
        for note in promotion.gate.notes if promotion.gate else []:
            console.print(f"    gate: {note}", soft_wrap=True)
    if not (modes := summary.evaluation.get("modes")):
        console.print(f"  quality: not measured ({NOT_EVALUATED})", soft_wrap=True)
        return
    if note := coverage_note(summary.evaluation):
        console.print(f"  [yellow]golden set[/]: {note}", soft_wrap=True)
    queries = next(iter(modes.values()))["queries"]
    title = f"quality on {queries} golden queries (trec_eval)" + ("" if summary.published else
                                                                   f", {summary.version}'s")
    console.print(rich_table(quality_table(title, modes, short=True)))
    if example and summary.counts.get("executor") == RAY_TASKS:  # its indexes grow with the corpus: not loaded here
        console.print(f"  example search: skipped for a version built on Ray (embedpipe search {summary.snapshot} "
                      "QUERY searches it)", soft_wrap=True)
    elif example:
        from pipeline.config_loader import load_config
        from pipeline.corpus.readers import golden_set_urls, read_queries

        cfg = load_config(config, overrides)
        # the config's URL: the summary's is redacted (a token in a signed URL would be gone)
        urls = golden_set_urls(cfg.corpus, cfg.evaluation.queries, cfg.evaluation.qrels)
        query = next(iter(read_queries(urls[0] if urls else summary.evaluation["queries"]).values()))
        print_search(summary.snapshot, query, 5, "hybrid:exact" if "hybrid:exact" in modes else "exact",
                     storage_options=cfg.storage.options)


@reports_errors
def run(
    config: Config,
    set_: SetFlag = [],  # noqa: B006
    run_id: RunIdFlag = None,
    full: Annotated[bool, typer.Option(help="redo every document, even those the live snapshot has")] = False,
    example: ExampleFlag = True,
    as_json: JsonFlag = False,
) -> None:
    """Run the reindex flow (Prefect + Ray) and print the snapshot it published and how good it is.
    Incremental against the live alias (publish.alias) when there is one: only new and changed documents
    are embedded, deleted ones dropped."""
    overrides = parse_sets(set_)

    def flow():
        from flows.reindex import reindex

        return lambda: reindex(config, overrides, run_id, full)

    summary = _run_flow(config, overrides, as_json, flow, full)
    if not as_json:
        _print_summary(summary, example, config, overrides)


@reports_errors
def backfill(
    config: Annotated[str, typer.Argument(help="YAML config, as changed for the subset (e.g. a new chunker)")],
    doc_id: Annotated[list[str], typer.Option("--doc-id", help="a document to redo (repeatable)")] = [],  # noqa: B006
    shard: Annotated[list[int], typer.Option("--shard", help="a shard to redo (repeatable)")] = [],  # noqa: B006
    where: Annotated[str | None, typer.Option(help="polars SQL filter on corpus.metadata_fields, e.g. "
                                                   "\"published >= '2024-01-01'\"")] = None,
    set_: SetFlag = [],  # noqa: B006
    run_id: RunIdFlag = None,
    example: ExampleFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Re-chunk and re-embed a subset of documents and publish a version that differs from the live one
    only there (everything else is kept as it is live)."""
    from pipeline.config_loader import load_config
    from pipeline.corpus.delta import Selection

    overrides = parse_sets(set_)
    # an empty or malformed selection, or a shard the run does not have, fails here, before any engine starts
    Selection(frozenset(doc_id), frozenset(shard), where).check_shards(load_config(config, overrides).run.shards)

    def flow():
        from flows.backfill import backfill as backfill_flow

        return lambda: backfill_flow(config, doc_id, shard, where, overrides, run_id)

    summary = _run_flow(config, overrides, as_json, flow, full=False)
    if not as_json:
        _print_summary(summary, example, config, overrides)


def _delta(now: float | None, before: float | None) -> str:
    return "" if now is None or before is None else f"{now - before:+.4f}"


@reports_errors
def migrate(
    config: Annotated[str, typer.Argument(help="YAML config: the index, storage, corpus and golden set")],
    model: Annotated[str, typer.Option(help="the new model: all-MiniLM-L6-v2, all-mpnet-base-v2, "
                                            "wordllama-l2-supercat, or a local transformers folder")],
    set_: SetFlag = [],  # noqa: B006
    run_id: Annotated[str | None, typer.Option(callback=_run_id, help="reuse a run id to resume the green build")
                      ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Build a green snapshot with a new model beside the live one, compare both on the golden set, and move the
    alias (publish.alias) to green only if the quality gate (publish.gate) passes."""
    from pipeline.config_loader import load_config
    from pipeline.models.catalog import model_section
    from pipeline.storage.backend import Storage

    overrides = parse_sets(set_)
    cfg = load_config(config, {"model": model_section(model)} | overrides)  # before Prefect is imported
    from flows.live import live_version
    from flows.migrate import served_alias

    live_version(Storage.of(cfg.storage), cfg.index_name, served_alias(cfg, "migration"), "migration")  # before Prefect

    def flow():
        from flows.migrate import migrate as migrate_flow

        return lambda: migrate_flow(config, model, overrides, run_id)

    summary = _run_flow(config, {"model": model_section(model)} | overrides, as_json, flow, full=True)
    if as_json:
        return
    blue, green, promotion = summary.blue, summary.green, summary.promotion
    table = RichTable(title=f"{summary.index_name}: blue (live) vs green, search mode {summary.gate.mode}")
    for col, justify in (("", "left"), ("blue", "right"), ("green", "right"), ("delta", "right")):
        table.add_column(col, justify=justify)
    table.add_row("version", blue.version, green.version, "")
    table.add_row("model", blue.model, green.model, "")
    table.add_row("dims", str(blue.dims), str(green.dims), "")
    for metric, b in blue.metrics.items():
        g = green.metrics.get(metric)
        table.add_row(metric, num(b), num(g, ""), _delta(g, b))
    if overlap := summary.report["drift"].get("topk_overlap"):
        table.add_row(f"top-{overlap['k']} overlap", "", f"{overlap['mean']:.4f}", "")
    console.print(table)
    if promotion.promoted:
        console.print(f"[bold green]promoted[/]: alias {summary.alias} now serves {green.version} ({green.model})",
                      soft_wrap=True)
    else:
        console.print(f"[bold yellow]refused[/]: alias {summary.alias} stays on {promotion.live}: {promotion.reason}",
                      soft_wrap=True)
    console.print(f"report: {summary.report_url}", soft_wrap=True)


@reports_errors
def monitor(config: Config, set_: SetFlag = [], as_json: JsonFlag = False) -> None:  # noqa: B006
    """Measure the snapshot the alias serves on the golden set against the metrics recorded when it was
    published; exit 1 when one fell more than monitor.max_drop allows, or a drift statistic moved more than
    monitor.max_drift allows."""
    from pipeline.errors import MonitoringFailed

    overrides = parse_sets(set_)

    def check(cfg, storage) -> None:  # a version to watch (the corpus need not be on this machine)
        from flows.live import live_version
        from flows.monitor import watched_alias

        live_version(storage, cfg.index_name, watched_alias(cfg), "monitoring")

    def flow():
        from flows.monitor import monitor as monitor_flow

        def call():
            try:
                return monitor_flow(config, overrides)
            except MonitoringFailed as exc:  # its flow run failed; the table shows what it measured
                return exc.result
        return call

    result = _run_flow(config, overrides, as_json, flow, check=check)
    if not as_json:
        table = RichTable(title=f"{result.index_name}/{result.alias} version {result.version} "
                                f"({result.model}, mode {result.mode}): now vs at publish time")
        for col in ("metric", "baseline", "current", "drop", "max drop", "status"):
            table.add_column(col, justify="left" if col in ("metric", "status") else "right")
        for r in result.rows:
            table.add_row(r.metric, num(r.baseline, ""), num(r.current, ""), num(r.drop, ""), num(r.max_drop, ""),
                          "[green]ok[/]" if r.ok else "[bold red]DROPPED[/]")
        console.print(table)
        if result.drift_rows:
            drift = RichTable(title="drift statistics: now vs at publish time")
            for col in ("statistic", "at publish", "now", "change", "max change", "status"):
                drift.add_column(col, justify="left" if col in ("statistic", "status") else "right")
            for c in result.drift_rows:
                drift.add_row(c.statistic, figure(c.reference, ""), figure(c.current, ""), figure(c.change, ""),
                              c.limit, "[green]ok[/]" if c.ok else "[bold red]MOVED[/]")
            console.print(drift)
        for note in result.notes:
            console.print(f"note: {note}", soft_wrap=True)
        console.print("[bold green]passed[/]" if result.passed else
                      "[bold red]FAILED[/]: " + "; ".join(result.violations), soft_wrap=True)
    if not result.passed:
        raise typer.Exit(code=1)
