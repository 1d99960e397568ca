"""`embedpipe search | evaluate | tune-fusion | versions | show | verify | promote | rollback | gc`: reading and
managing published snapshots. No Prefect, no Ray.

ROOT is the storage root (a path or URL; S3 credentials and endpoint come from the environment). A SNAPSHOT URL is
a version folder, snapshots/<index> (its newest committed version) or aliases/<index>/<alias>.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import timedelta
from typing import Annotated

import typer
from rich.table import Table as RichTable

from flows.cli.common import JsonFlag, console, reports_errors, rich_table
from pipeline.reports.tables import quality_table

Root = Annotated[str, typer.Argument(help="storage root: a path or URL (s3://bucket/prefix)")]
Index = Annotated[str, typer.Argument(help="index name")]
SnapshotUrl = Annotated[str, typer.Argument(help="snapshot URL: a version folder, snapshots/<index> (newest) or "
                                                 "aliases/<index>/<alias>")]
AliasOpt = Annotated[str, typer.Option("--alias", help="alias name")]
Expect = Annotated[str | None, typer.Option(help="the version you saw the alias at ('none' if unset); default: "
                                                 "read it now")]
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


def _searcher(snapshot, weight: float | None):
    """A Searcher of the snapshot; `weight` overrides the recorded fusion weight."""
    from dataclasses import replace

    from pipeline.quality.fusion import Fusion
    from pipeline.quality.search import Searcher

    fusion = None
    if weight is not None:
        fusion = replace(Fusion.from_dict(snapshot.manifest["index"].get("fusion")), weight=weight)
    return Searcher.from_snapshot(snapshot, fusion=fusion)


def _index_root(root: str, index: str):
    """The Storage of `root`, once it holds `index` (a version or an alias of it); otherwise the error names the
    indexes it does hold, so a typo in either argument does not read as an empty index."""
    from pipeline.errors import SnapshotError
    from pipeline.storage import layout
    from pipeline.storage.backend import Storage
    from pipeline.storage.keys import redact

    s = Storage(root)
    if s.list(layout.index_prefix(index)) or s.list(layout.aliases_prefix(index)):
        return s
    held = s.list("snapshots")
    raise SnapshotError(f"no index {index!r} under {redact(s.url)}: " +
                        (f"it holds {', '.join(held)}" if held else "nothing was published there"))


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

    snapshot = Snapshot.open(snapshot_url, **(storage_options or {}))
    searcher = _searcher(snapshot, weight)
    checked = check_query(searcher.encoder, query)
    hits = searcher.search([query], k, mode)[0]
    if as_json:
        print(json.dumps({"snapshot": snapshot.url, "version": snapshot.version, "mode": mode, "query": query,
                          "query_tokens": checked.tokens, "truncated_to_tokens": checked.limit if checked.truncated
                          else None, "hits": [asdict(h) for h in hits]}, indent=2))
    else:
        console.print(_hits_table(query if len(query) <= 200 else query[:200] + "...", hits,
                                  f"version {snapshot.version}, mode {mode}"))
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
    k: Annotated[int, typer.Option("-k", min=10, help="documents retrieved per query")] = 100,
    mode: Annotated[list[str] | None, typer.Option("--mode", help="only these search modes (repeat it); default: "
                                                                  "every mode of the snapshot")] = None,
    weight: Weight = None,
    as_json: JsonFlag = False,
) -> None:
    """nDCG@10, MAP@10, Recall@10/100 and MRR@10 of every search mode of a snapshot."""
    from pipeline.quality.golden import coverage
    from pipeline.snapshots.snapshot import Snapshot

    snap = Snapshot.open(snapshot)
    searcher, golden = _searcher(snap, weight), _golden(snap, queries, qrels)
    report = searcher.evaluate(*golden, k, modes=mode or None)
    covered = coverage(*golden, searcher.doc_ids)
    if as_json:
        print(json.dumps({"snapshot": snap.url, "version": snap.version, "coverage": covered.to_dict(),
                          "modes": report}, indent=2))
        return
    console.print(rich_table(quality_table(f"{snap.manifest['index_name']} {snap.version}", report, short=True)))
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
        print(json.dumps({"snapshot": snap.url, "version": snap.version, **tuned.to_dict()}, indent=2))
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
def versions(root: Root, index: Index, as_json: JsonFlag = False) -> None:
    """List an index's versions with model, counts, quality, size and the aliases pointing at them."""
    from pipeline.snapshots.aliases import list_aliases, read_alias
    from pipeline.snapshots.snapshot import committed_versions
    from pipeline.storage import layout

    s = _index_root(root, index)
    pointed: dict[str | None, list[str]] = {}
    for alias in list_aliases(s, index):
        pointed.setdefault(read_alias(s, index, alias).version, []).append(alias)
    rows = []
    for version, snap in committed_versions(s, index):
        if snap is None:
            rows.append({"version": version, "committed": False})
            continue
        m = snap.manifest
        rows.append({"version": version, "committed": True, "model": m.get("model", {}).get("name", "?"),
                     "chunks": m.get("counts", {}).get("chunks"), "ndcg@10": snap.metric("exact", "ndcg@10"),
                     "bytes": snap.bytes, "aliases": pointed.get(version, []),
                     "retiring": s.exists(layout.retiring_key(index, version))})  # marked by a gc: takes no alias
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = RichTable(title=f"{index} at {root}")
    for col in ("version", "model", "chunks", "nDCG@10", "MiB", "aliases"):
        table.add_column(col, no_wrap=col == "version")
    for r in rows:
        if not r["committed"]:
            table.add_row(r["version"], "[dim]uncommitted[/]", "", "", "", "")
            continue
        ndcg = f"{r['ndcg@10']:.4f}" if r["ndcg@10"] is not None else ""
        table.add_row(r["version"], r["model"], str(r["chunks"]), ndcg, f"{r['bytes'] / 2**20:.2f}",
                      ", ".join(r["aliases"]) + (" [yellow](gc is deleting it)[/]" if r["retiring"] else ""))
    console.print(table)


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


def _seen(expect: str | None, root: str, index: str, alias: str) -> str | None:
    from pipeline.snapshots.aliases import read_alias
    from pipeline.storage.backend import Storage

    if expect is None:
        return read_alias(Storage(root), index, alias).version
    return None if expect.lower() == "none" else expect


def _statistic_changes(pairs: list[str]) -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    for pair in pairs:
        name, _, change = (part.strip() for part in pair.partition("="))
        try:
            out[name] = change if change.endswith("%") else float(change)
        except ValueError:
            raise ValueError(f"--max-drift {pair!r}: expected STATISTIC=CHANGE, e.g. vectors.isotropy=0.05 or "
                             "vectors.rows=20%") from None
    return out


@reports_errors
def promote(
    root: Root, index: Index, version: Annotated[str, typer.Argument(help="the version to promote")],
    alias: AliasOpt = "live", expect: Expect = None,
    metric: Annotated[str, typer.Option(help="gate metric")] = "ndcg@10",
    mode: Annotated[str, typer.Option(help="gate search mode")] = "exact",
    min_value: Annotated[float, typer.Option(help="gate: the metric must be at least this")] = 0.0,
    max_drop: Annotated[float, typer.Option(help="gate: and at most this below live's")] = 0.0,
    max_drift: Annotated[list[str], typer.Option(
        help="gate: STATISTIC=CHANGE, a drift statistic may differ from live's by at most CHANGE either way "
             "(vectors.isotropy=0.05, or vectors.rows=20% of live's); repeatable")] = [],  # noqa: B006
    no_gate: Annotated[bool, typer.Option("--no-gate", help="skip the quality gate")] = False,
    force: Annotated[bool, typer.Option(help="promote even if the gate refuses (recorded in the history)")] = False,
    by: Annotated[str, typer.Option(help="who promotes (recorded)")] = "cli",
) -> None:
    """Move an alias to a committed version by compare-and-swap, through the quality gate."""
    from pydantic import ValidationError

    from pipeline.config import GateConfig
    from pipeline.config_loader import invalid
    from pipeline.quality.golden_runs import shared_judgments
    from pipeline.snapshots.aliases import promote as do_promote
    from pipeline.storage.backend import Storage

    try:
        gate = None if no_gate else GateConfig(metric=metric, mode=mode, min_value=min_value, max_drop=max_drop,
                                               max_drift=_statistic_changes(max_drift))
    except ValidationError as exc:
        raise invalid(exc, "the gate (--metric, --mode, --min-value, --max-drop, --max-drift)") from None
    storage, seen = Storage(root), _seen(expect, root, index, alias)
    shared = shared_judgments(storage, index, version, seen, gate) if gate else None
    state, result = do_promote(storage, index, alias, version, seen, gate, force, by, shared=shared)
    forced = " (forced past the gate)" if result and not result.passed else ""
    console.print(f"[green]promoted[/] {index}/{alias}: {state.previous} -> {state.version}{forced}", soft_wrap=True)
    for note in result.notes if result else []:
        console.print(f"  gate: {note}", soft_wrap=True)


@reports_errors
def rollback(root: Root, index: Index, alias: AliasOpt = "live", expect: Expect = None,
             by: Annotated[str, typer.Option(help="who rolls back (recorded)")] = "cli") -> None:
    """Move an alias back to what was live before its current version was promoted."""
    from pipeline.snapshots.aliases import rollback as do_rollback
    from pipeline.storage.backend import Storage

    state = do_rollback(Storage(root), index, alias, _seen(expect, root, index, alias), by)
    console.print(f"[green]rolled back[/] {index}/{alias}: {state.previous} -> {state.version}", soft_wrap=True)


@reports_errors
def gc(root: Root, index: Index,
       keep_last: Annotated[int, typer.Option(min=1, help="newest committed versions to keep")] = 3,
       grace_hours: Annotated[float, typer.Option(min=0, help="keep what an alias pointed at, and uploads "
                                                             "in progress, this recently")] = 24.0,
       dry_run: Annotated[bool, typer.Option("--dry-run", help="only show what would be deleted")] = False,
       as_json: JsonFlag = False) -> None:
    """Delete old versions and abandoned uploads; never what an alias points at."""
    from pipeline.snapshots.retention import apply_gc, plan_gc

    s = _index_root(root, index)
    plan = plan_gc(s, index, keep_last, timedelta(hours=grace_hours))
    deleted = [] if dry_run else apply_gc(s, plan)
    if as_json:
        print(json.dumps({"keep": plan.keep, "delete": plan.delete, "deleted": deleted, "dry_run": dry_run}, indent=2))
        return
    for v, why in sorted(plan.keep.items()):
        console.print(f"  keep   {v}  ({why})", soft_wrap=True)
    for v, why in sorted(plan.delete.items()):
        console.print(f"  {'would delete' if dry_run else 'deleted'} {v}  ({why})", soft_wrap=True)


@reports_errors
def gc_cache(root: Root,
             dry_run: Annotated[bool, typer.Option("--dry-run", help="only count what would be dropped")] = False,
             as_json: JsonFlag = False) -> None:
    """Drop cached vectors and bm25 terms that no committed snapshot needs (run after gc, while no build runs)."""
    from pipeline.errors import SnapshotError
    from pipeline.snapshots.retention import collect_cache
    from pipeline.storage.backend import Storage
    from pipeline.storage.keys import redact

    storage = Storage(root)
    if not (storage.list("snapshots") or storage.list("cache")):  # a mistyped root: say so, not "nothing to drop"
        raise SnapshotError(f"nothing under {redact(storage.url)}: no snapshots and no cache (expected the storage "
                            "root a build wrote to)")
    results = collect_cache(storage, dry_run)
    if as_json:
        print(json.dumps([asdict(r) | {"dry_run": dry_run} for r in results], indent=2))
        return
    if not results:
        console.print(f"no cached vectors or bm25 terms under {redact(storage.url)}: nothing to drop", soft_wrap=True)
    for r in results:
        what = "vectors of model" if r.kind == "embeddings" else "bm25 terms of analyzer"
        console.print(f"  {what} {r.fingerprint}: {r.partitions} partitions, kept {r.kept:,} chunks, "
                      f"{'would drop' if dry_run else 'dropped'} {r.dropped:,}", soft_wrap=True)
