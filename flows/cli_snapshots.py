"""`embedpipe versions | show | verify | promote | rollback | gc`: managing published snapshots.

ROOT is the storage root (a path or URL; S3 credentials and endpoint come from the environment).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

import typer
from rich.table import Table

from flows.cli_common import JsonFlag, console, fail
from pipeline.errors import EmbedpipeError

Root = Annotated[str, typer.Argument(help="storage root: a path or URL (s3://bucket/prefix)")]
Index = Annotated[str, typer.Argument(help="index name")]
AliasOpt = Annotated[str, typer.Option("--alias", help="alias name")]
Expect = Annotated[str | None, typer.Option(help="the version you saw the alias at ('none' if unset); default: "
                                                 "read it now")]


def versions(root: Root, index: Index, as_json: JsonFlag = False) -> None:
    """List an index's versions with model, counts, quality, size and the aliases pointing at them."""
    from pipeline.aliases import list_aliases, read_alias
    from pipeline.snapshot import MANIFEST
    from pipeline.storage import Storage

    try:
        s = Storage(root)
        pointed = {}
        for alias in list_aliases(s, index):
            pointed.setdefault(read_alias(s, index, alias).version, []).append(alias)
        rows = []
        for v in s.list(f"snapshots/{index}"):
            key = f"snapshots/{index}/{v}/{MANIFEST}"
            if not s.exists(key):
                rows.append({"version": v, "committed": False})
                continue
            m = json.loads(s.read_bytes(key))
            exact = (m.get("evaluation") or {}).get("modes", {}).get("exact", {})
            rows.append({"version": v, "committed": True, "model": m.get("model", {}).get("name", "?"),
                         "chunks": m.get("counts", {}).get("chunks"), "ndcg@10": exact.get("ndcg@10"),
                         "bytes": sum(f["bytes"] for f in m["files"].values()), "aliases": pointed.get(v, [])})
    except EmbedpipeError as exc:
        fail(exc)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{index} at {root}")
    for col in ("version", "model", "chunks", "nDCG@10", "MiB", "aliases"):
        table.add_column(col, no_wrap=col == "version")
    for r in rows:
        if not r["committed"]:
            table.add_row(r["version"], "[dim]uncommitted[/]", "", "", "", "")
            continue
        ndcg = f"{r['ndcg@10']:.4f}" if r["ndcg@10"] is not None else ""
        table.add_row(r["version"], r["model"], str(r["chunks"]), ndcg, f"{r['bytes'] / 2**20:.2f}",
                      ", ".join(r["aliases"]))
    console.print(table)


def show(snapshot: Annotated[str, typer.Argument(help="snapshot URL: version folder, snapshots/<index> or "
                                                       "aliases/<index>/<alias>")]) -> None:
    """Print a snapshot's manifest (JSON)."""
    from pipeline.snapshot import Snapshot

    try:
        print(json.dumps(Snapshot.open(snapshot).manifest, indent=2))
    except EmbedpipeError as exc:
        fail(exc)


def verify(snapshot: Annotated[str, typer.Argument(help="snapshot URL")]) -> None:
    """Check every file of a snapshot against the sha256 and size in its manifest (exit 2 on a mismatch)."""
    from pipeline.snapshot import Snapshot

    try:
        snap = Snapshot.open(snapshot)
        checked = snap.verify()
    except EmbedpipeError as exc:
        fail(exc)
    console.print(f"[green]ok[/] {snap.manifest['index_name']} {snap.version}: {len(checked)} files match",
                  soft_wrap=True)


def _seen(expect: str | None, root: str, index: str, alias: str) -> str | None:
    from pipeline.aliases import read_alias
    from pipeline.storage import Storage

    if expect is None:
        return read_alias(Storage(root), index, alias).version
    return None if expect.lower() == "none" else expect


def promote(
    root: Root, index: Index, version: Annotated[str, typer.Argument(help="the version to promote")],
    alias: AliasOpt = "live", expect: Expect = None,
    metric: Annotated[str, typer.Option(help="gate metric")] = "ndcg@10",
    mode: Annotated[str, typer.Option(help="gate search mode")] = "exact",
    min_value: Annotated[float, typer.Option(help="gate: the metric must be at least this")] = 0.0,
    max_drop: Annotated[float, typer.Option(help="gate: and at most this below live's")] = 0.0,
    no_gate: Annotated[bool, typer.Option("--no-gate", help="skip the quality gate")] = False,
    force: Annotated[bool, typer.Option(help="promote even if the gate refuses (recorded in the history)")] = False,
    by: Annotated[str, typer.Option(help="who promotes (recorded)")] = "cli",
) -> None:
    """Move an alias to a committed version by compare-and-swap, through the quality gate."""
    from pipeline.aliases import promote as do_promote
    from pipeline.config import GateConfig
    from pipeline.storage import Storage

    try:
        gate = None if no_gate else GateConfig(metric=metric, mode=mode, min_value=min_value, max_drop=max_drop)
        state, result = do_promote(Storage(root), index, alias, version, _seen(expect, root, index, alias), gate,
                                   force, by)
    except (EmbedpipeError, ValueError) as exc:
        fail(exc)
    forced = " (forced past the gate)" if result and not result.passed else ""
    console.print(f"[green]promoted[/] {index}/{alias}: {state.previous} -> {state.version}{forced}", soft_wrap=True)


def rollback(root: Root, index: Index, alias: AliasOpt = "live", expect: Expect = None,
             by: Annotated[str, typer.Option(help="who rolls back (recorded)")] = "cli") -> None:
    """Move an alias back to what was live before its current version was promoted."""
    from pipeline.aliases import rollback as do_rollback
    from pipeline.storage import Storage

    try:
        state = do_rollback(Storage(root), index, alias, _seen(expect, root, index, alias), by)
    except EmbedpipeError as exc:
        fail(exc)
    console.print(f"[green]rolled back[/] {index}/{alias}: {state.previous} -> {state.version}", soft_wrap=True)


def gc(root: Root, index: Index,
       keep_last: Annotated[int, typer.Option(min=1, help="newest committed versions to keep")] = 3,
       grace_hours: Annotated[float, typer.Option(min=0, help="keep what an alias pointed at, and uploads "
                                                             "in progress, this recently")] = 24.0,
       dry_run: Annotated[bool, typer.Option("--dry-run", help="only show what would be deleted")] = False,
       as_json: JsonFlag = False) -> None:
    """Delete old versions and abandoned uploads; never what an alias points at."""
    from pipeline.retention import apply_gc, plan_gc
    from pipeline.storage import Storage

    try:
        s = Storage(root)
        plan = plan_gc(s, index, keep_last, timedelta(hours=grace_hours))
        deleted = [] if dry_run else apply_gc(s, plan)
    except EmbedpipeError as exc:
        fail(exc)
    if as_json:
        print(json.dumps({"keep": plan.keep, "delete": plan.delete, "deleted": deleted, "dry_run": dry_run}, indent=2))
        return
    for v, why in sorted(plan.keep.items()):
        console.print(f"  keep   {v}  ({why})", soft_wrap=True)
    for v, why in sorted(plan.delete.items()):
        console.print(f"  {'would delete' if dry_run else 'deleted'} {v}  ({why})", soft_wrap=True)
