"""`embedpipe`: run a flow from a YAML config, search a snapshot, evaluate a snapshot.

Heavy imports (torch, ray, prefect) happen inside commands so `--help` stays instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from flows import cli_jobs, cli_snapshots
from flows.cli_common import DEBUG_ENV, PROCESS_ENV, JsonFlag, SetFlag, console, fail, flow_output, parse_sets

app = typer.Typer(help="Batch embedding and indexing pipeline: corpus -> chunks -> vectors -> FAISS snapshots.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="on an error, print its traceback, and Prefect's "
                                                             "records of failed runs")] = False) -> None:
    for key, value in PROCESS_ENV.items():
        os.environ.setdefault(key, value)
    if debug:
        os.environ[DEBUG_ENV] = "1"


# What fits 80 columns; --json prints every metric (MAP@10, ms per query...).
_HEADERS = {"ndcg@10": "nDCG@10", "recall@10": "R@10", "recall@100": "R@100", "mrr@10": "MRR@10",
            "recall@10_vs_exact": "R@10/exact", "ndcg@10_retention": "kept"}


def _metrics_table(title: str, variants: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    metrics = [m for m in _HEADERS if any(m in values for values in variants.values())]
    table.add_column("mode", no_wrap=True)
    for m in metrics:
        table.add_column(_HEADERS[m], justify="right")
    for name, values in variants.items():
        table.add_row(name, *(f"{values[m]:.4f}" if m in values else "" for m in metrics))
    return table


def _timings_table(timings: dict[str, float]) -> Table:
    """Seconds per stage, one column each: fits 80 columns where a sentence would wrap."""
    table = Table(title="seconds per stage", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for stage in timings:
        table.add_column(stage, justify="right")
    table.add_row(*(f"{seconds:.1f}" for seconds in timings.values()))
    return table


def _hits_table(query: str, hits) -> Table:
    table = Table(title=f"query: {query}")
    for col, justify in (("rank", "right"), ("score", "right"), ("doc_id", "left"), ("title", "left")):
        table.add_column(col, justify=justify)
    for rank, hit in enumerate(hits, start=1):
        table.add_row(str(rank), f"{hit.score:.4f}", hit.doc_id, hit.title[:90])
    return table


def _run_flow(config: str, overrides: dict[str, Any], as_json: bool, flow_call) -> dict:
    """Check the config and inputs before Prefect or Ray start, then run the flow with progress bars."""
    from pipeline.config import load_config
    from pipeline.errors import EmbedpipeError
    from pipeline.stages import check_inputs

    try:
        check_inputs(load_config(config, overrides))
        with flow_output(as_json):
            summary = flow_call()
    except EmbedpipeError as exc:
        fail(exc)
    if as_json:
        print(json.dumps(summary, indent=2))
    return summary


def _print_summary(summary: dict, example: bool) -> None:
    console.print(f"\n[bold green]published[/] {summary['index_name']} version [bold]{summary['version']}[/] "
                  f"({summary['job']}; {summary['delta']})", soft_wrap=True)
    console.print(f"  snapshot: {summary['snapshot']}", soft_wrap=True)
    counts = summary["counts"]
    console.print("  counts: " + ", ".join(f"{k} {counts[k]}" for k in (
        "read", "accepted", "quarantined", "blank_lines", "docs_new", "docs_changed", "docs_deleted", "docs_kept",
        "chunks", "embedded", "reused_from_cache") if k in counts), soft_wrap=True)
    console.print(_timings_table(summary["timings_s"]))
    if promotion := summary.get("promotion"):
        outcome = "[green]promoted to this version[/]" if promotion["promoted"] else \
            f"[yellow]stays at {promotion['live']}[/]: {promotion['reason']}"
        console.print(f"  alias {promotion['alias']}: {outcome}", soft_wrap=True)
    if summary["evaluation"]:
        variants = summary["evaluation"]["modes"]
        queries = next(iter(variants.values()))["queries"]
        console.print(_metrics_table(f"quality on {queries} golden queries (trec_eval)", variants))
        if example:
            from pipeline.readers import read_queries

            query = next(iter(read_queries(summary["evaluation"]["queries"]).values()))
            _print_search(summary["snapshot"], query, 5, "exact")


RunIdFlag = Annotated[str | None, typer.Option(help="reuse a run id to resume it (finished shards skipped)")]
ExampleFlag = Annotated[bool, typer.Option(help="after publishing, search the snapshot with a golden query")]


@app.command()
def run(
    config: Annotated[str, typer.Argument(help="YAML config (see configs/demo.yaml)")],
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

    def call() -> dict:
        from flows.reindex import reindex

        return reindex(config, overrides, run_id, full)

    summary = _run_flow(config, overrides, as_json, call)
    if not as_json:
        _print_summary(summary, example)


@app.command()
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
    from pipeline.delta import Selection
    from pipeline.errors import EmbedpipeError

    overrides = parse_sets(set_)
    try:
        Selection(frozenset(doc_id), frozenset(shard), where)  # an empty or malformed selection fails here
    except EmbedpipeError as exc:
        fail(exc)

    def call() -> dict:
        from flows.backfill import backfill as backfill_flow

        return backfill_flow(config, doc_id, shard, where, overrides, run_id)

    summary = _run_flow(config, overrides, as_json, call)
    if not as_json:
        _print_summary(summary, example)


def _print_search(snapshot_url: str, query: str, k: int, mode: str, as_json: bool = False) -> None:
    from pipeline.search import Searcher, check_query
    from pipeline.snapshot import Snapshot

    snapshot = Snapshot.open(snapshot_url)
    searcher = Searcher.from_snapshot(snapshot)
    checked = check_query(searcher.encoder, query)
    hits = searcher.search([query], k, mode)[0]
    if as_json:
        print(json.dumps({"snapshot": snapshot.url, "version": snapshot.version, "mode": mode, "query": query,
                          "query_tokens": checked.tokens, "truncated_to_tokens": checked.limit if checked.truncated
                          else None, "hits": [h.__dict__ for h in hits]}, indent=2))
    else:
        console.print(_hits_table(query if len(query) <= 200 else query[:200] + "...", hits))
        if note := checked.note():
            console.print(f"note: {note}", soft_wrap=True)


@app.command()
def search(
    snapshot: Annotated[str, typer.Argument(help="snapshot URL: a version folder, or snapshots/<index> (newest)")],
    query: Annotated[str, typer.Argument(help="the query text")],
    k: Annotated[int, typer.Option("-k", min=1, help="documents to return")] = 10,
    mode: Annotated[str, typer.Option(help="index variant (exact, ivfpq, int8, binary, exact@64...), optionally "
                                           "+rescore (fp16 re-ranking) or +hamming (binary)")] = "exact",
    as_json: JsonFlag = False,
) -> None:
    """Search a snapshot; the query is encoded with the model recorded in its manifest."""
    from pipeline.errors import EmbedpipeError

    try:
        _print_search(snapshot, query, k, mode, as_json)
    except EmbedpipeError as exc:
        fail(exc)


@app.command()
def evaluate(
    snapshot: Annotated[str, typer.Argument(help="snapshot URL (version folder or snapshots/<index>)")],
    queries: Annotated[str | None, typer.Option(help="BEIR queries.jsonl (default: the snapshot's golden set)")] = None,
    qrels: Annotated[str | None, typer.Option(help="BEIR qrels TSV (default: the snapshot's golden set)")] = None,
    k: Annotated[int, typer.Option("-k", min=10, help="documents retrieved per query")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """nDCG@10, MAP@10, Recall@10/100 and MRR@10 of every index variant of a snapshot."""
    from pipeline.errors import EmbedpipeError, InputError
    from pipeline.readers import read_qrels, read_queries
    from pipeline.search import Searcher
    from pipeline.snapshot import Snapshot

    try:
        snap = Snapshot.open(snapshot)
        golden = snap.manifest.get("evaluation") or {}
        queries, qrels = queries or golden.get("queries"), qrels or golden.get("qrels")
        if not (queries and qrels):
            raise InputError("no golden set recorded in this snapshot: pass --queries and --qrels")
        report = Searcher.from_snapshot(snap).evaluate(read_queries(queries), read_qrels(qrels), k)
    except EmbedpipeError as exc:
        fail(exc)
    if as_json:
        print(json.dumps({"snapshot": snap.url, "version": snap.version, "modes": report}, indent=2))
    else:
        console.print(_metrics_table(f"{snap.manifest['index_name']} {snap.version}", report))


@app.command()
def deploy(
    config: Annotated[str | None, typer.Option(help="config_path parameter of the deployments (default: "
                                                    "prefect.yaml's); relative paths resolve at the repo root")] = None,
    cron: Annotated[str | None, typer.Option(help='replace the schedules with this cron, e.g. "0 2 * * *"')] = None,
    timezone: Annotated[str, typer.Option(help="time zone of --cron")] = "UTC",
    work_pool: Annotated[str | None, typer.Option(help="process work pool (created if missing; default: "
                                                       "prefect.yaml's)")] = None,
    only: Annotated[list[str], typer.Option("--only", help="deploy only this deployment name (repeatable)")] = [],  # noqa: B006
    as_json: JsonFlag = False,
) -> None:
    """Register prefect.yaml's deployments and their schedules on the server PREFECT_API_URL names."""
    from pipeline.errors import EmbedpipeError

    try:
        from flows.deployments import REPO, load_specs, register
        from pipeline.config import load_config

        specs = [s for s in load_specs() if not only or s.name in only]
        if unknown := sorted(set(only) - {s.name for s in specs}):
            raise ValueError(f"--only {', '.join(unknown)}: not in prefect.yaml")
        if config is not None:
            load_config(str(REPO / config))  # a bad config fails now, not at 2 am
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the result
            registered = register(specs, config_path=config, cron=cron, timezone=timezone, work_pool=work_pool)
    except (EmbedpipeError, ValueError) as exc:
        fail(exc)
    if as_json:
        print(json.dumps([r.__dict__ | {"id": str(r.id), "next_run": r.next_run and r.next_run.isoformat()}
                          for r in registered], indent=2))
        return
    for r in registered:
        console.print(f"[bold]{r.name}[/] ({r.entrypoint}, work pool {r.work_pool})", soft_wrap=True)
        console.print(f"  parameters: {json.dumps(r.parameters)}", soft_wrap=True, markup=False)
        console.print(f"  schedule:   {'; '.join(r.schedules) or 'none'}", markup=False)
        console.print(f"  next run:   {r.next_run.isoformat() if r.next_run else '-'}")
    for pool in dict.fromkeys(r.work_pool for r in registered):
        console.print(f"runs start when a worker serves the pool: prefect worker start --pool {pool}", soft_wrap=True)


for _command in (cli_snapshots.versions, cli_snapshots.show, cli_snapshots.verify, cli_snapshots.promote,
                 cli_snapshots.rollback, cli_snapshots.gc, cli_jobs.migrate, cli_jobs.monitor):
    app.command()(_command)


if __name__ == "__main__":
    app()
