"""`embedpipe migrate | monitor`: the model-upgrade migration and the live-index check, from a config.

Both run their Prefect flow in this process (PREFECT_API_URL names the server that records it; without it a
temporary local server starts). `migrate` exits 0 whether the gate promoted green or refused it (the table
says which; --json has `promotion.promoted`); `monitor` exits 1 when a watched metric dropped beyond its
threshold, 2 on an error.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from flows.cli_common import JsonFlag, SetFlag, console, fail, flow_output, parse_sets

Config = Annotated[str, typer.Argument(help="YAML config: the index, storage, corpus and golden set")]
def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _delta(now: float | None, before: float | None) -> str:
    return "" if now is None or before is None else f"{now - before:+.4f}"


def migrate(
    config: Config,
    model: Annotated[str, typer.Option(help="the new model: all-MiniLM-L6-v2, all-mpnet-base-v2, "
                                            "wordllama-l2-supercat, or a local transformers folder")],
    set_: SetFlag = [],  # noqa: B006
    run_id: Annotated[str | None, typer.Option(help="reuse a run id to resume the green build")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Build a green snapshot with a new model beside the live one, compare both on the golden set, and move the
    alias (publish.alias) to green only if the quality gate (publish.gate) passes."""
    from pipeline.config import load_config
    from pipeline.errors import EmbedpipeError
    from pipeline.model_catalog import model_section
    from pipeline.stages import check_inputs

    overrides = parse_sets(set_)
    try:
        check_inputs(load_config(config, {"model": model_section(model)} | overrides))  # before Prefect and Ray
        from flows.migrate import migrate as migrate_flow
        with flow_output(as_json):
            summary = migrate_flow(config, model, overrides, run_id)
    except EmbedpipeError as exc:
        fail(exc)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    blue, green, promotion = summary["blue"], summary["green"], summary["promotion"]
    table = Table(title=f"{summary['index_name']}: blue (live) vs green, search mode {summary['mode']}")
    for col, justify in (("", "left"), ("blue", "right"), ("green", "right"), ("delta", "right")):
        table.add_column(col, justify=justify)
    table.add_row("version", blue["version"], green["version"], "")
    table.add_row("model", blue["model"], green["model"], "")
    table.add_row("dims", str(blue["dims"]), str(green["dims"]), "")
    for metric in blue["metrics"]:
        b, g = blue["metrics"].get(metric), green["metrics"].get(metric)
        table.add_row(metric, f"{b:.4f}", f"{g:.4f}" if g is not None else "", _delta(g, b))
    if overlap := summary.get("topk_overlap"):
        table.add_row(f"top-{overlap['k']} overlap", "", f"{overlap['mean']:.4f}", "")
    console.print(table)
    if promotion["promoted"]:
        console.print(f"[bold green]promoted[/]: alias {summary['alias']} now serves {green['version']} "
                      f"({green['model']})", soft_wrap=True)
    else:
        console.print(f"[bold yellow]refused[/]: alias {summary['alias']} stays on {promotion['live']}: "
                      f"{promotion['reason']}", soft_wrap=True)
    console.print(f"report: {summary['report']}", soft_wrap=True)


def monitor(config: Config, set_: SetFlag = [], as_json: JsonFlag = False) -> None:  # noqa: B006
    """Measure the snapshot the alias serves on the golden set against the metrics recorded when it was
    published; exit 1 when one fell more than monitor.max_drop allows."""
    from pipeline.config import load_config
    from pipeline.errors import EmbedpipeError, MonitoringFailed

    overrides = parse_sets(set_)
    try:
        load_config(config, overrides)  # a bad config fails before Prefect starts
        from flows.monitor import monitor as monitor_flow

        with flow_output(as_json):
            result = monitor_flow(config, overrides)
    except MonitoringFailed as exc:
        result = exc.result
    except EmbedpipeError as exc:
        fail(exc)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        table = Table(title=f"{result['index_name']}/{result['alias']} version {result['version']} "
                            f"({result['model']}, mode {result['mode']}): now vs at publish time")
        for col in ("metric", "baseline", "current", "drop", "max drop", "status"):
            table.add_column(col, justify="left" if col in ("metric", "status") else "right")
        for r in result["rows"]:
            table.add_row(r["metric"], _num(r["baseline"]), _num(r["current"]), _num(r["drop"]), _num(r["max_drop"]),
                          "[green]ok[/]" if r["ok"] else "[bold red]DROPPED[/]")
        console.print(table)
        for note in result["notes"]:
            console.print(f"note: {note}", soft_wrap=True)
        console.print("[bold green]passed[/]" if result["passed"] else
                      "[bold red]FAILED[/]: " + "; ".join(result["violations"]), soft_wrap=True)
    if not result["passed"]:
        raise typer.Exit(code=1)
