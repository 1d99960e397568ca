"""Garbage collection of snapshot versions, planned first (dry run) and then applied.

Kept: the newest `keep_last` committed versions; every version an alias points at; every version an
alias pointed at within the grace period; uncommitted folders younger than the grace period (a publish
may still be uploading). Deleted: other committed versions, and abandoned uploads (no manifest) older
than the grace period. A version's age comes from its id (UTC timestamp), an upload's from its claim's time when
that is later (a run resumed days after it chose its version renews the claim); an id that does not parse is
kept. A committed version is deleted manifest first, so it turns invisible before its files go (and a publish
whose files went meanwhile does not commit: snapshot.commit checks them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipeline.config import BM25
from pipeline.index.analyzer import fingerprint as analyzer_fingerprint
from pipeline.index.term_cache import TermCache
from pipeline.models.cache import EmbeddingCache
from pipeline.snapshots.aliases import list_aliases, read_alias
from pipeline.snapshots.publishing import claimed_at
from pipeline.snapshots.snapshot import Snapshot, committed_versions
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from pipeline.storage.layout import MANIFEST


@dataclass(frozen=True)
class GcPlan:
    index: str
    keep: dict[str, str]  # version -> why it stays
    delete: dict[str, str]  # version -> why it goes


def version_time(version: str) -> datetime | None:
    try:
        return datetime.strptime(version.split("-")[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def plan_gc(storage: Storage, index: str, keep_last: int, grace: timedelta, now: datetime | None = None) -> GcPlan:
    now = now or datetime.now(UTC)
    prefix = layout.index_prefix(index)
    versions = storage.list(prefix)
    committed = [v for v in versions if storage.exists(f"{prefix}/{v}/{MANIFEST}")]
    keep: dict[str, str] = {v: f"one of the newest {keep_last}" for v in committed[-keep_last:]} if keep_last else {}
    for alias in list_aliases(storage, index):
        state = read_alias(storage, index, alias)
        if state.version:
            keep[state.version] = f"alias {alias} points at it"
        for event in state.history:
            at = datetime.fromisoformat(event["at"])
            for v in (event.get("version"), event.get("from")):
                if v and now - at < grace and v not in keep:
                    keep[v] = f"alias {alias} pointed at it within the grace period"
    delete = {}
    for v in versions:
        if v in keep:
            continue
        born = version_time(v)
        if born is not None and v not in committed:
            born = max(born, claimed_at(storage, index, v) or born)
        if born is None:
            keep[v] = "unrecognised version id"
        elif v not in committed and now - born < grace:
            keep[v] = "upload in progress (claimed within the grace period)"
        else:
            delete[v] = "abandoned upload (no manifest)" if v not in committed else "older than the kept versions"
    return GcPlan(index, keep, delete)


def _alias_targets(storage: Storage, index: str) -> set[str]:
    return {v for v in (read_alias(storage, index, a).version for a in list_aliases(storage, index)) if v}


def apply_gc(storage: Storage, plan: GcPlan) -> list[str]:
    """Delete what the plan says, except versions an alias points at, without ever leaving an alias pointing at a
    deleted version: each version is marked (`_RETIRING`) before the aliases are read again, so an alias that moved
    to it before the mark keeps it (the mark is taken off), and a promote or rollback that moves an alias to it
    after the mark finds the mark and moves the alias back (snapshots/aliases.py). Marks a stopped gc left on
    versions this plan keeps are taken off. One gc of an index at a time."""
    marks = {v: layout.retiring_key(plan.index, v) for v in [*plan.delete, *plan.keep]}
    retiring = sorted(set(plan.delete) - _alias_targets(storage, plan.index))
    for version in retiring:
        storage.write_bytes(marks[version], b"")
    pinned = _alias_targets(storage, plan.index)
    deleted = []
    for version in retiring:
        if version in pinned:
            continue
        folder = layout.snapshot_prefix(plan.index, version)
        if storage.exists(f"{folder}/{MANIFEST}"):
            storage.delete(f"{folder}/{MANIFEST}")  # invisible first
        storage.delete(folder, recursive=True)
        deleted.append(version)
    for version in set(marks) - set(deleted):
        if storage.exists(marks[version]):
            storage.delete(marks[version])
    return deleted


@dataclass(frozen=True)
class CacheGc:
    """What collecting one cache (the vectors of one model, or the bm25 terms of one analyzer) kept and dropped."""

    kind: str  # "embeddings" (keyed by model fingerprint) or "terms" (keyed by analyzer fingerprint)
    fingerprint: str
    partitions: int
    kept: int
    dropped: int
    unfinished_writes: int = 0  # temp files that killed writers left in its partitions (deleted with the rest)


def _cache_keys(snap: Snapshot) -> dict[str, str]:
    """The fingerprint of each cache a committed snapshot was built from."""
    keys = {"embeddings": snap.manifest["model"].get("fingerprint", "")}
    bm25 = snap.manifest["index"]["variants"].get(BM25)
    if bm25 is not None:
        keys["terms"] = analyzer_fingerprint(bm25.get("analyzer") or {})
    return keys


def collect_cache(storage: Storage, dry_run: bool = False) -> list[CacheGc]:
    """Drop the cache entries (vectors, bm25 terms) that no committed snapshot of any index needs (the chunk hashes
    in their id tables, for their model or analyzer), partition by partition: each partition reads only the id rows
    of its bucket range. Run it after `gc` retired old versions, while no build of the root runs (a running build
    would embed or analyse again what it loses)."""
    needed: dict[tuple[str, str], list[Snapshot]] = {}
    for index in storage.list("snapshots"):
        for _, snap in committed_versions(storage, index):
            if snap is not None:
                for kind, key in _cache_keys(snap).items():
                    needed.setdefault((kind, key), []).append(snap)
    out = []
    for kind, open_cache in (("embeddings", EmbeddingCache), ("terms", TermCache)):
        for fingerprint in storage.list(layout.cache_prefix(kind, "")):
            cache = open_cache(storage, fingerprint)
            partitions = kept = dropped = unfinished = 0
            for lo, hi in cache.partitions():
                keep = set().union(*(snap.chunk_hashes(lo, hi) for snap in needed.get((kind, fingerprint), [])))
                before, after, temps = cache.collect(lo, hi, keep, dry_run)
                partitions, kept, dropped = partitions + 1, kept + after, dropped + before - after
                unfinished += temps
            out.append(CacheGc(kind, fingerprint, partitions, kept, dropped, unfinished))
    return out
