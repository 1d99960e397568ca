"""`embedpipe search | evaluate | tune-fusion | show | verify`: reading published snapshots (flows/cli/versions.py
manages them). No Prefect, no Ray.

ROOT is the storage root (a path or URL; S3 credentials and endpoint come from the environment). A SNAPSHOT URL is
a version folder, snapshots/<index> (its newest committed version) or aliases/<index>/<alias>.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table as RichTable

from flows.cli.common import JsonFlag, console, reports_errors, rich_table
from pipeline.redaction import redact
from pipeline.reports.tables import quality_table

Root = Annotated[str, typer.Argument(help="storage root: a path or URL (s3://bucket/prefix)")]
Index = Annotated[str, typer.Argument(help="index name")]
SnapshotUrl = Annotated[str, typer.Argument(help="snapshot URL: a version folder, snapshots/<index> (newest) or "
                                                 "aliases/<index>/<alias>")]
Weight = Annotated[float | None, typer.Option(min=0, max=1, help="hybrid modes: BM25's share in convex fusion "
                                                                 "(default: the one the manifest records)")]
Queries = Annotated[str | None, typer.Option(help="BEIR queries.jsonl (default: the snapshot's golden set)")]
QrelsOpt = Annotated[str | None, typer.Option("--qrels", help="BEIR qrels TSV (default: the snapshot's golden set)")]


def _hits_table(query: str, hits, where: str) -> RichTable:
    table = RichTable(title=f"query: {query}", caption=where)
    for col, justify in (("rank", "right"), ("score", "right"), ("doc_id", "left"), ("title", "left")):
        table.add_column(col, justify=justify)
    for rank, hit in enumerate(hits, start=1):
        table.add_row(str(rank), f"{hit.score:.4f}", hit.doc_id, hit.title[:90])
    return table


def _check_weight(weight: float | None, modes: list[str] | None) -> str:
    """--weight is BM25's share in convex fusion (hybrid:<mode>): given for other modes alone it would change
    nothing, silently. Returns how to name it beside the results ("" without one)."""
    from pipeline.errors import InputError
    from pipeline.quality.fusion import CONVEX, parse_hybrid

    if weight is None:
        return ""
    if modes is not None and not any((parse_hybrid(m) or ("",))[0] == CONVEX for m in modes):
        raise InputError(f"--weight {weight:g} applies to convex fusion (hybrid:<mode>), and --mode names none: "
                         f"{', '.join(modes)}")
    return f", hybrid weight {weight:g}"


def _searcher(snapshot, weight: float | None):
    """A Searcher of the snapshot; `weight` overrides the recorded fusion weight. Loaded without the cyclic
    collector walking the growing heap (torch's import: ~0.25 s of collections, Zen 4): this process searches and
    ends."""
    from dataclasses import replace

    from pipeline.quality.fusion import Fusion
    from pipeline.quality.search import Searcher
    from pipeline.startup import collector_paused

    fusion = None
    if weight is not None:
        fusion = replace(Fusion.from_dict(snapshot.manifest["index"].get("fusion")), weight=weight)
    with collector_paused():
        return Searcher.from_snapshot(snapshot, fusion=fusion)


def _golden(snap, queries: str | None, qrels: str | None) -> tuple[dict, dict]:
    from pipeline.errors import InputError
    from pipeline.quality.golden import read_golden_set

    recorded = snap.manifest.get("evaluation") or {}
    queries, qrels = queries or recorded.get("queries"), qrels or recorded.get("qrels")
    if not (queries and qrels):
        raise InputError("no golden set recorded in this snapshot: pass --queries and --qrels")
    golden = read_golden_set(queries, qrels)
    return golden.queries, golden.qrels


def print_search(snapshot_url: str, query: str, k: int, mode: str, as_json: bool = False,
                 weight: float | None = None, storage_options: dict | None = None) -> None:
    from pipeline.quality.search import check_query
    from pipeline.snapshots.snapshot import Snapshot

    weighted = _check_weight(weight, [mode])
    snapshot = Snapshot.open(snapshot_url, **(storage_options or {}))
    searcher = _searcher(snapshot, weight)
    checked = check_query(searcher.encoder, query)
    hits = searcher.search([query], k, mode)[0]
    if as_json:
        print(json.dumps({"snapshot": redact(snapshot.url), "version": snapshot.version, "mode": mode, "query": query,
                          "weight": weight, "query_tokens": checked.tokens,
                          "truncated_to_tokens": checked.limit if checked.truncated else None,
                          "hits": [{"rank": rank, **asdict(h)} for rank, h in enumerate(hits, start=1)]}, indent=2))
    else:
        console.print(_hits_table(query if len(query) <= 200 else query[:200] + "...", hits,
                                  f"version {snapshot.version}, mode {mode}{weighted}"))
        if note := checked.note():
            console.print(f"note: {note}", soft_wrap=True)


@reports_errors
def search(
    snapshot: SnapshotUrl,
    query: Annotated[str, typer.Argument(help="the query text")],
    k: Annotated[int, typer.Option("-k", min=1, help="documents to return")] = 10,
    mode: Annotated[str, typer.Option(help="index variant (exact, ivfpq, int8, binary, exact@64...), optionally "
                                           "+rescore (fp16 re-ranking) or +hamming (binary); bm25; hybrid:<mode> "
                                           "(convex fusion with bm25) or hybrid-rrf:<mode>")] = "exact",
    weight: Weight = None,
    as_json: JsonFlag = False,
) -> None:
    """Search a snapshot; the query is encoded with the model recorded in its manifest (and, for bm25 and hybrid
    modes, analysed as its manifest records)."""
    print_search(snapshot, query, k, mode, as_json, weight)


@reports_errors
def evaluate(
    snapshot: SnapshotUrl,
    queries: Queries = None,
    qrels: QrelsOpt = None,
    k: Annotated[int, typer.Option("-k", min=100, help="documents retrieved per query: at least 100, the depth "
                                                       "of recall@100")] = 100,
    mode: Annotated[list[str] | None, typer.Option("--mode", help="only these search modes (repeat it); default: "
                                                                  "every mode of the snapshot")] = None,
    weight: Weight = None,
    as_json: JsonFlag = False,
) -> None:
    """nDCG@10, MAP@10, Recall@10/100 and MRR@10 of every search mode of a snapshot."""
    from pipeline.quality.golden import coverage
    from pipeline.snapshots.snapshot import Snapshot

    weighted = _check_weight(weight, mode or None)
    snap = Snapshot.open(snapshot)
    searcher, golden = _searcher(snap, weight), _golden(snap, queries, qrels)
    report = searcher.evaluate(*golden, k, modes=mode or None)
    covered = coverage(*golden, searcher.doc_ids)
    if as_json:
        print(json.dumps({"snapshot": redact(snap.url), "version": snap.version, "weight": weight,
                          "coverage": covered.to_dict(), "modes": report}, indent=2))
        return
    console.print(rich_table(quality_table(f"{snap.manifest['index_name']} {snap.version}{weighted}", report,
                                           short=True)))
    if note := covered.note():
        console.print(f"[yellow]golden set[/]: {note}", soft_wrap=True)


@reports_errors
def tune_fusion(
    snapshot: SnapshotUrl,
    queries: Queries = None,
    qrels: QrelsOpt = None,
    mode: Annotated[str, typer.Option(help="the dense mode fused with bm25 (hybrid:<mode>)")] = "exact",
    metric: Annotated[str, typer.Option(help="the metric to maximise")] = "ndcg@10",
    folds: Annotated[int, typer.Option(min=2, help="k of the k-fold cross-validation over the queries")] = 5,
    step: Annotated[float, typer.Option(min=0.001, max=1, help="the weight grid's step, from 0 to 1")] = 0.05,
    seed: Annotated[int, typer.Option(help="seed of the queries' split into folds")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Choose hybrid search's BM25 weight on a golden set by k-fold cross-validation over its queries: prints the
    chosen weight and its held-out score. Changes nothing: set index.fusion.weight to use it (or --weight)."""
    from pipeline.quality.tuning import tune_weight
    from pipeline.reports.tables import Table
    from pipeline.snapshots.snapshot import Snapshot

    snap = Snapshot.open(snapshot)
    tuned = tune_weight(_searcher(snap, None), *_golden(snap, queries, qrels), mode, metric, folds, step, seed)
    if as_json:
        print(json.dumps({"snapshot": redact(snap.url), "version": snap.version, **tuned.to_dict()}, indent=2))
        return
    rows = [[str(i + 1), str(f.queries), f"{f.weight:g}", f"{f.train:.4f}", f"{f.held_out:.4f}"]
            for i, f in enumerate(tuned.folds)]
    console.print(rich_table(Table(f"hybrid:{mode} {metric}, {folds} folds", ["fold", "queries", "weight",
                                                                             "other folds", "held out"], rows)))
    console.print(f"chosen weight {tuned.weight:g} (BM25's share): {metric} {tuned.in_sample:.4f} on every query, "
                  f"[bold]{tuned.held_out:.4f} held out[/] (cross-validated); the default {tuned.default_weight:g} "
                  f"gives {tuned.default:.4f}", soft_wrap=True)
    console.print(f"to use it: set index.fusion.weight: {tuned.weight:g} in the config (the next build records it), "
                  f"or search with --weight {tuned.weight:g}", soft_wrap=True)


@reports_errors
def show(snapshot: SnapshotUrl) -> None:
    """Print a snapshot's manifest (JSON)."""
    from pipeline.snapshots.snapshot import Snapshot

    print(json.dumps(Snapshot.open(snapshot).manifest, indent=2))


@reports_errors
def verify(snapshot: SnapshotUrl) -> None:
    """Check every file of a snapshot against the sha256 and size in its manifest (exit 2 on a mismatch)."""
    from pipeline.snapshots.snapshot import Snapshot

    snap = Snapshot.open(snapshot)
    checked = snap.verify()
    console.print(f"[green]ok[/] {snap.manifest['index_name']} {snap.version}: {len(checked)} files match",
                  soft_wrap=True)
