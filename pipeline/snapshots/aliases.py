"""Aliases (`live`, or any name) that point at a committed snapshot version and move only by compare-and-swap:
blue-green promotion through the quality gate, and rollback.

The alias object (storage/layout.py: aliases/<index>/<alias>.json) carries its own history, so the pointer and
the history can never disagree; one write-once event object per move is a second record for auditors.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pipeline.config import GateConfig
from pipeline.errors import AliasMoved, GateRefused, PreconditionFailed, SnapshotError, StorageError
from pipeline.snapshots.gate import GateResult, SharedJudgments, check_gate
from pipeline.storage import layout
from pipeline.storage.backend import Storage


@dataclass(frozen=True)
class AliasState:
    index: str
    alias: str
    version: str | None
    previous: str | None = None
    history: list[dict] = field(default_factory=list)
    tag: str | None = None  # compare-and-swap tag of what was read


@dataclass(frozen=True)
class Promotion:
    """What a job's promote did: moved the alias, or left it where it is now (`live`) and why."""

    alias: str
    promoted: bool
    live: str | None
    gate: GateResult | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        if self.promoted:
            return {"alias": self.alias, "promoted": True, "live": self.live,
                    "gate": self.gate.to_dict() if self.gate else None}
        return {"alias": self.alias, "promoted": False, "live": self.live, "reason": self.reason}


def list_aliases(storage: Storage, index: str) -> list[str]:
    """Alias names of an index (local storage keeps each as a folder of records, `<alias>.json.v`)."""
    names = (n.removesuffix(".v") for n in storage.list(layout.aliases_prefix(index)))
    return sorted({n.removesuffix(".json") for n in names if n.endswith(".json")})


def read_alias(storage: Storage, index: str, alias: str) -> AliasState:
    """The alias as it is now; version None if it was never set."""
    got = storage.read_versioned(layout.alias_key(index, alias))
    if got is None:
        return AliasState(index, alias, None)
    body, tag = got
    record = json.loads(body)
    return AliasState(index, alias, record["version"], record.get("previous"), record.get("history", []), tag)


def _manifest_key(storage: Storage, index: str, version: str) -> str:
    key = f"{layout.snapshot_prefix(index, version)}/{layout.MANIFEST}"
    if not storage.exists(key):
        raise SnapshotError(f"{index} version {version} is not committed (no {layout.MANIFEST}); refusing to point "
                            "an alias at it")
    return key


def check_target(storage: Storage, index: str, version: str) -> str:
    """A version an alias may move to: committed, and not being garbage-collected; returns its manifest's key."""
    key = _manifest_key(storage, index, version)
    if storage.exists(layout.retiring_key(index, version)):
        raise SnapshotError(f"{index} version {version} is being garbage-collected ({layout.RETIRING} is there); "
                            "refusing to point an alias at it (a gc that stopped half-way leaves the mark: `embedpipe "
                            "gc` again deletes the version, or clears the mark if the version is kept)")
    return key


def manifest_of(storage: Storage, index: str, version: str) -> dict:
    return json.loads(storage.read_bytes(_manifest_key(storage, index, version)))


def _move(storage: Storage, current: AliasState, to_version: str | None, action: str, by: str, **extra) -> AliasState:
    now = datetime.now(UTC).isoformat()
    event = {"action": action, "alias": current.alias, "version": to_version, "from": current.version, "at": now,
             "by": by, **extra}
    history = [*current.history, event]
    record = {"index": current.index, "alias": current.alias, "version": to_version, "previous": current.version,
              "at": now, "by": by, "history": history}
    try:
        tag = storage.compare_and_swap(layout.alias_key(current.index, current.alias),
                                       json.dumps(record, indent=2).encode(), current.tag)
    except PreconditionFailed:
        raise AliasMoved(f"alias {current.index}/{current.alias} moved while {action} ran (it was at "
                         f"{current.version}); re-read it and retry") from None
    try:  # audit copy; the alias record is the truth
        storage.put_if_absent(layout.alias_event_key(current.index, current.alias, now), json.dumps(event).encode())
    except StorageError as exc:  # the move already happened: reporting it as failed would invite a retry
        logging.getLogger(__name__).warning("alias %s/%s moved, but its audit event was not written: %s",
                                            current.index, current.alias, exc)
    return AliasState(current.index, current.alias, to_version, current.version, history, tag)


def _move_to_target(storage: Storage, current: AliasState, to_version: str, action: str, by: str,
                    **extra) -> AliasState:
    """Move the alias to a version that passed check_target, then check it again: a gc that marked it after the
    first check may have read the aliases before this move (snapshots/retention.apply_gc), and so may delete it.
    Then the alias moves back, which is safe: gc keeps every version an alias pointed at within its grace period."""
    moved = _move(storage, current, to_version, action, by, **extra)
    try:
        check_target(storage, current.index, to_version)
    except SnapshotError as exc:
        with contextlib.suppress(AliasMoved):  # moved on since: whoever moved it checked their own target
            _move(storage, moved, current.version, "revert", by, reason=f"{to_version} is being garbage-collected")
        raise SnapshotError(f"alias {current.index}/{current.alias} moved back to {current.version}: {exc}") from None
    return moved


def promote(storage: Storage, index: str, alias: str, version: str, seen: str | None, gate: GateConfig | None = None,
            force: bool = False, by: str = "embedpipe", live_evaluation: dict | None = None,
            shared: SharedJudgments | None = None) -> tuple[AliasState, GateResult | None]:
    """Move `alias` from `seen` (the version the caller saw, None if unset) to `version`, through the gate.

    The gate compares with the live version's manifest, or with `live_evaluation` (its metrics recomputed
    on the candidate's golden set, as a migration does, in the manifest's "evaluation" shape), and `shared`: the two
    on the judgments both can find (pipeline/quality/golden_runs.py, for `seen`). Promoting the version the alias is
    at changes nothing and returns (its state, None)."""
    current = read_alias(storage, index, alias)
    if current.version != seen:
        raise AliasMoved(f"alias {index}/{alias} is at {current.version}, not {seen} as the caller saw; nothing "
                         "changed")
    candidate = json.loads(storage.read_bytes(check_target(storage, index, version)))
    if version == current.version:  # a retried promote: a history event from a version to itself would be
        return current, None        # what a later rollback steps back to
    result = None
    if gate is not None:
        live = None
        if current.version:
            live = live_evaluation or manifest_of(storage, index, current.version).get("evaluation") or {}
        result = check_gate(gate, candidate.get("evaluation"), live, shared)
        if not result.passed and not force:
            raise GateRefused(f"quality gate refused {index} {version} for alias {alias}: " + "; ".join(result.reasons))
    extra = {"gate": result.to_dict()} if result else {}
    if force and result and not result.passed:
        extra["forced"] = True
    return _move_to_target(storage, current, version, "promote", by, **extra), result


def promote_or_stay(storage: Storage, index: str, alias: str, version: str, seen: str | None, gate: GateConfig,
                    by: str, live_evaluation: dict | None = None, shared: SharedJudgments | None = None) -> Promotion:
    """`promote` as a job reports it: a gate refusal or an alias moved by another run is an outcome (the alias
    stays where it is now), not an error. A version the alias was promoted to before (a job retried after its
    promote) is not promoted again: where the alias moved on since (a rollback), that was someone's choice."""
    current = read_alias(storage, index, alias)
    if any(e["action"] == "promote" and e["version"] == version for e in current.history):
        if current.version == version:
            return Promotion(alias, True, version)
        if current.version == seen:  # else promote says the alias moved from where the caller saw it
            return Promotion(alias, False, current.version, reason=f"{version} was promoted before and the alias "
                             f"has moved back to {current.version} since: not promoted again")
    try:
        state, result = promote(storage, index, alias, version, seen, gate, by=by, live_evaluation=live_evaluation,
                                shared=shared)
    except (GateRefused, AliasMoved) as exc:
        return Promotion(alias, False, read_alias(storage, index, alias).version, reason=str(exc))
    return Promotion(alias, True, state.version, gate=result)


def rollback(storage: Storage, index: str, alias: str, seen: str | None, by: str = "embedpipe") -> AliasState:
    """Move `alias` back to what was live before its current version was promoted (repeatable: each
    rollback steps one promotion further back)."""
    current = read_alias(storage, index, alias)
    if current.version != seen:
        raise AliasMoved(f"alias {index}/{alias} is at {current.version}, not {seen} as the caller saw; nothing "
                         "changed")
    if current.version is None:
        raise SnapshotError(f"alias {index}/{alias} is not set: nothing to roll back (promote a version first)")
    target = next((e["from"] for e in reversed(current.history)  # promotes to itself: histories before 2026-12-07
                   if e["action"] == "promote" and e["version"] == current.version != e["from"]), None)
    if not target:
        raise SnapshotError(f"alias {index}/{alias} has no earlier promoted version to roll back to")
    check_target(storage, index, target)  # still committed, and not being garbage-collected?
    return _move_to_target(storage, current, target, "rollback", by)
