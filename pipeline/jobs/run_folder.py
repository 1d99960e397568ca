"""A run's folder on storage (runs/<run_id>/, keys in pipeline/storage/layout.py) over its life.

- The corpus a run id reads is the one its first attempt listed, read with the settings it had then (its
  run.json). A resumed attempt, or a rerun of a finished run, keeps the pieces and shards committed before: against
  a corpus written since it would publish old documents beside new ones (or only old ones) without a word, and
  with other settings it would mix two layouts (a document in two shards under another shard count, parts of an
  unfinished piece left beside its new ones under another batch size), so either is refused.
- Once the run published its version (or found live current), its work files go: the read pieces, the shards'
  documents, chunks, vectors and terms, and the index shares hold a copy of the corpus and of the index, and a
  scheduled reindex would otherwise leave one behind each time. Its records stay: run.json, the quarantine, each
  input file's counts (files.parquet), the plan, the workers' kernel, a migration's report. `run.keep_work` keeps
  everything (to inspect it).
- A run that never finished keeps its work files for a resume; `embedpipe gc-runs` deletes them once nothing in
  its folder was written for a grace period.
- The version a run publishes is chosen once and kept in plan.json, with the alias's version the attempt that
  chose it saw, so a resumed attempt writes into the version folder it claimed; an attempt that stopped after its
  commit (before its promote, or before it finished) is finished by a retry, not built again into a second version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pipeline.config import PipelineConfig
from pipeline.errors import InputError
from pipeline.models.card import ModelCard
from pipeline.snapshots.publishing import new_version
from pipeline.storage.backend import Storage
from pipeline.storage.layout import (
    MANIFEST,
    MARKER,
    PREPARED,
    TERMS_MARKER,
    WORK_FOLDERS,
    plan_key,
    run_key,
    run_record_key,
    shard_key,
    snapshot_prefix,
    unread_key,
)

if TYPE_CHECKING:  # prepare imports this module
    from pipeline.jobs.prepare import ShardInput


def prepared_settings(cfg: PipelineConfig, chunking: dict, against: ShardInput, card: ModelCard) -> dict:
    """What decides what a run's read pieces and shards hold and where, as run.json records it: reading and
    validation, shard count, batch and piece sizes, chunking, the live version its shards are compared with (their
    kept rows point into it), a backfill's selection, and the model (prepared shards hold its cached vectors)."""
    run = cfg.run
    return {"corpus": cfg.corpus.model_dump(mode="json", exclude={"source"}), "chunking": chunking,
            "run.shards": run.shards, "run.read_batch": run.read_batch, "run.piece_bytes": run.piece_bytes,
            "run.piece_files": run.piece_files,
            "live version": against.live.url.rsplit("/", 1)[-1] if against.live is not None else None,
            "backfill selection": against.selection.describe() if against.selection else None,
            "model fingerprint": card.fingerprint}


def check_run_unchanged(storage: Storage, run_id: str, listing: str | None, settings: dict) -> None:
    """Record the corpus listing's digest (pipeline/corpus/pieces.py listing_digest) and the prepared settings at a
    run's first attempt; raise InputError when a later attempt lists another corpus or has other settings (a run
    folder from before settings were recorded is checked for its listing alone)."""
    key = run_record_key(run_id)
    if not storage.exists(key):
        storage.write_bytes(key, json.dumps({"listing_sha256": listing, "settings": settings}).encode())
        return
    first = json.loads(storage.read_bytes(key))
    restart = "; start a new run (leave out --run-id and run.run_id)"
    if first["listing_sha256"] != listing:
        raise InputError(f"run {run_id}: the corpus's files changed since the run began (files added, removed or "
                         "written: their names, sizes or modification stamps differ), and the pieces it read then "
                         f"hold the old documents{restart}")
    settings = json.loads(json.dumps(settings))  # as JSON gives it back
    if changed := [name for name, value in first.get("settings", settings).items() if settings.get(name) != value]:
        shown = ", ".join(name if name in ("corpus", "chunking") else
                          f"{name} {first['settings'][name]} -> {settings.get(name)}" for name in changed)
        raise InputError(f"run {run_id}: settings that decide what its read pieces and shards hold changed since "
                         f"its first attempt ({shown}); expected those it began with{restart}")


@dataclass(frozen=True)
class RunVersion:
    """The version a run publishes (runs/<run>/plan.json) and the alias's version when the attempt chose it."""

    version: str
    seen: str | None


def _plan_record(storage: Storage, run_id: str) -> dict | None:
    return json.loads(storage.read_bytes(plan_key(run_id))) if storage.exists(plan_key(run_id)) else None


def _committed(storage: Storage, index_name: str, version: str) -> bool:
    return storage.exists(f"{snapshot_prefix(index_name, version)}/{MANIFEST}")


def run_version(storage: Storage, run_id: str, index_name: str, seen: str | None) -> str:
    """The version the run publishes: the one its earlier attempt chose while that is not committed (this attempt
    finishes it), else a new one (a rerun of a finished run publishes a version of its own)."""
    record = _plan_record(storage, run_id)
    version = record["version"] if record and not _committed(storage, index_name, record["version"]) else new_version()
    storage.write_bytes(plan_key(run_id), json.dumps({"version": version, "seen": seen}).encode())
    return version


def committed_version(storage: Storage, run_id: str, index_name: str) -> str | None:
    """The version this run committed (finished or not); None before its commit."""
    record = _plan_record(storage, run_id)
    return record["version"] if record and _committed(storage, index_name, record["version"]) else None


def committed_unfinished(storage: Storage, run_id: str, index_name: str, seen: str | None) -> RunVersion | None:
    """The version an earlier attempt of this run committed without finishing (it stopped before its promote or its
    end): a retry promotes it from where that attempt saw the alias instead of building a second version (`seen`,
    the alias now, stands in for a plan record from before the alias was recorded)."""
    record = _plan_record(storage, run_id)
    if not record or record.get("finished") or not _committed(storage, index_name, record["version"]):
        return None
    return RunVersion(record["version"], record.get("seen", seen))


def mark_finished(storage: Storage, run_id: str) -> None:
    """Record that the run published and promoted its version: a later attempt of its id builds a new one."""
    record = _plan_record(storage, run_id)
    if record is not None:
        storage.write_bytes(plan_key(run_id), json.dumps({**record, "finished": True}).encode())


def remove_work(storage: Storage, run_id: str) -> None:
    """Delete a run's work files, markers before what they vouch for: the pieces' markers (their folders hold
    nothing else), then each shard's, then the rest, and last the record of the files it left unread. Stopped at any
    point, every marker left still has its files, so a rerun of the run id redoes exactly what lost its marker."""
    pieces, shards, *rest = (run_key(run_id, folder) for folder in WORK_FOLDERS)
    if storage.list(pieces):
        storage.delete(pieces, recursive=True)
    for shard in storage.list(shards):
        present = set(storage.list(shard_key(run_id, int(shard))))
        for marker in (MARKER, PREPARED, TERMS_MARKER):
            if marker in present:
                storage.delete(shard_key(run_id, int(shard), marker))
    for folder in (shards, *rest):
        if storage.list(folder):
            storage.delete(folder, recursive=True)
    if storage.exists(unread_key(run_id)):
        storage.delete(unread_key(run_id))


@dataclass(frozen=True)
class RunsGc:
    keep: dict[str, str]  # run id -> why its work files stay
    delete: dict[str, str]  # run id -> why they go


def plan_runs_gc(storage: Storage, grace: timedelta) -> RunsGc:
    """The runs that still hold work files (finished runs hold none), and whether they go: those whose folder saw
    no write for `grace` (one listing of each such folder)."""
    now, keep, delete = datetime.now(UTC), {}, {}
    for run_id in storage.list("runs"):
        if not any(storage.list(run_key(run_id, folder)) for folder in WORK_FOLDERS):
            continue
        last = storage.last_modified(run_key(run_id, ""))
        idle = now - last if last else grace
        why = f"last written {idle.total_seconds() / 3600:.1f} h ago"
        (delete if idle >= grace else keep)[run_id] = why
    return RunsGc(keep, delete)
