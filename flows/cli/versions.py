"""`embedpipe versions | promote | rollback | gc | gc-cache | gc-runs`: managing an index's published versions, its
aliases, and what builds leave behind.
No Prefect, no Ray.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import timedelta
from typing import Annotated

import typer
from rich.table import Table as RichTable

from flows.cli.common import JsonFlag, console, reports_errors
from flows.cli.snapshots import Index, Root
from pipeline.redaction import redact

AliasOpt = Annotated[str, typer.Option("--alias", help="alias name")]
Expect = Annotated[str | None, typer.Option(help="the version you saw the alias at ('none' if unset); default: "
                                                 "read it now")]


def _index_root(root: str, index: str):
    """The Storage of `root`, once it holds `index` (a version or an alias of it); otherwise the error names the
    indexes it does hold, so a typo in either argument does not read as an empty index."""
    from pipeline.errors import SnapshotError
    from pipeline.redaction import redact
    from pipeline.storage import layout
    from pipeline.storage.backend import Storage

    s = Storage(root)
    if s.list(layout.index_prefix(index)) or s.list(layout.aliases_prefix(index)):
        return s
    held = [name for name in s.list("snapshots") if s.list(layout.index_prefix(name))]  # an emptied folder: none
    raise SnapshotError(f"no index {index!r} under {redact(s.url)}: " +
                        (f"it holds {', '.join(held)}" if held else "nothing was published there"))


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
    table = RichTable(title=f"{index} at {redact(root)}")
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
    if state.version == seen:
        console.print(f"{index}/{alias} is at {version} already: nothing changed", soft_wrap=True)
        return
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
        if dry_run:
            console.print(f"  would delete {v}  ({why})", soft_wrap=True)
        elif v in deleted:
            console.print(f"  deleted {v}  ({why})", soft_wrap=True)
        else:  # apply_gc keeps a version an alias moved to after the plan read the aliases
            console.print(f"  keep   {v}  (an alias moved to it while gc ran)", soft_wrap=True)


def _build_root(root: str, kept: str):
    """The Storage of `root`, once it holds snapshots or `kept` (cache, runs): a mistyped root is an error, not
    "nothing to delete"."""
    from pipeline.errors import SnapshotError
    from pipeline.redaction import redact
    from pipeline.storage.backend import Storage

    storage = Storage(root)
    if not (storage.list("snapshots") or storage.list(kept)):
        raise SnapshotError(f"nothing under {redact(storage.url)}: no snapshots and no {kept} (expected the storage "
                            "root a build wrote to)")
    return storage


@reports_errors
def gc_cache(root: Root,
             dry_run: Annotated[bool, typer.Option("--dry-run", help="only count what would be dropped")] = False,
             as_json: JsonFlag = False) -> None:
    """Drop cached vectors and bm25 terms that no committed snapshot needs (run after gc, while no build runs)."""
    from pipeline.redaction import redact
    from pipeline.snapshots.retention import collect_cache

    storage = _build_root(root, "cache")
    results = collect_cache(storage, dry_run)
    if as_json:
        print(json.dumps([asdict(r) | {"dry_run": dry_run} for r in results], indent=2))
        return
    if not results:
        console.print(f"no cached vectors or bm25 terms under {redact(storage.url)}: nothing to drop", soft_wrap=True)
    for r in results:
        what = "vectors of model" if r.kind == "embeddings" else "bm25 terms of analyzer"
        temps = f", {'would delete' if dry_run else 'deleted'} {r.unfinished_writes} temp file(s) of killed writes" \
            if r.unfinished_writes else ""
        console.print(f"  {what} {r.fingerprint}: {r.partitions} partitions, kept {r.kept:,} chunks, "
                      f"{'would drop' if dry_run else 'dropped'} {r.dropped:,}{temps}", soft_wrap=True)


@reports_errors
def gc_runs(root: Root,
            grace_hours: Annotated[float, typer.Option(min=0, help="keep the work files of a run whose folder was "
                                                                  "written this recently (it may be running or "
                                                                  "resumed)")] = 168.0,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="only show what would be deleted")] = False,
            as_json: JsonFlag = False) -> None:
    """Delete the work files (pieces, shards, index shares) that runs left behind: a run that never finished, or
    one an older embedpipe kept. Their records stay."""
    from pipeline.jobs.run_folder import plan_runs_gc, remove_work
    from pipeline.redaction import redact

    storage = _build_root(root, "runs")
    plan = plan_runs_gc(storage, timedelta(hours=grace_hours))
    if not dry_run:
        for run_id in plan.delete:
            remove_work(storage, run_id)
    if as_json:
        print(json.dumps({"keep": plan.keep, "delete": plan.delete, "dry_run": dry_run}, indent=2))
        return
    if not (plan.keep or plan.delete):
        console.print(f"no run under {redact(storage.url)} holds work files: nothing to delete", soft_wrap=True)
    for run_id, why in sorted(plan.keep.items()):
        console.print(f"  keep   {run_id}  ({why})", soft_wrap=True)
    for run_id, why in sorted(plan.delete.items()):
        console.print(f"  {'would delete the work files of' if dry_run else 'deleted the work files of'} {run_id}  "
                      f"({why})", soft_wrap=True)
