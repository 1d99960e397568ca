"""Aliases (`live`, or any name) that point at a committed snapshot version and move only by
compare-and-swap: blue-green promotion, rollback, and a quality gate.

    aliases/<index>/<alias>.json           {version, previous, at, by, history: [...]}  (compare-and-swap)
    aliases/<index>/history/<event>.json   one object per promotion or rollback, append-only (audit log)

The alias object carries its own history, so the pointer and the history can never disagree; the
event objects are a second, write-once record for auditors.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pipeline.config import GateConfig
from pipeline.errors import AliasMoved, GateRefused, PreconditionFailed, SnapshotError, StorageError
from pipeline.snapshot import MANIFEST
from pipeline.storage import Storage

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_name(kind: str, name: str, pattern: re.Pattern = NAME) -> str:
    """Names become object keys: only a safe alphabet, never '..'."""
    if not pattern.fullmatch(name) or ".." in name:
        raise SnapshotError(f"{kind} name {name!r}: expected letters, digits, '.', '_' or '-' (no '..')")
    return name


@dataclass(frozen=True)
class AliasState:
    index: str
    alias: str
    version: str | None
    previous: str | None = None
    history: list[dict] = field(default_factory=list)
    tag: str | None = None  # compare-and-swap tag of what was read


def alias_key(index: str, alias: str) -> str:
    return f"aliases/{_check_name('index', index)}/{_check_name('alias', alias)}.json"


def list_aliases(storage: Storage, index: str) -> list[str]:
    """Alias names of an index (local storage keeps each as a folder of records, `<alias>.json.v`)."""
    names = (n.removesuffix(".v") for n in storage.list(f"aliases/{_check_name('index', index)}"))
    return sorted({n.removesuffix(".json") for n in names if n.endswith(".json")})


def read_alias(storage: Storage, index: str, alias: str) -> AliasState:
    """The alias as it is now; version None if it was never set."""
    got = storage.read_versioned(alias_key(index, alias))
    if got is None:
        return AliasState(index, alias, None)
    body, tag = got
    record = json.loads(body)
    return AliasState(index, alias, record["version"], record.get("previous"), record.get("history", []), tag)


def manifest_of(storage: Storage, index: str, version: str) -> dict:
    key = f"snapshots/{_check_name('index', index)}/{_check_name('version', version, VERSION)}/{MANIFEST}"
    if not storage.exists(key):
        raise SnapshotError(f"{index} version {version} is not committed (no {MANIFEST}); refusing to point an "
                            "alias at it")
    return json.loads(storage.read_bytes(key))


@dataclass(frozen=True)
class GateResult:
    passed: bool
    candidate: float | None
    live: float | None
    reasons: list[str]


def check_gate(gate: GateConfig, candidate: dict, live: dict | None) -> GateResult:
    """Compare the candidate's golden-set metric with the threshold and with the live version's."""
    def metric(manifest: dict) -> float | None:
        return (manifest.get("evaluation") or {}).get("modes", {}).get(gate.mode, {}).get(gate.metric)

    cand, live_value, reasons = metric(candidate), metric(live) if live else None, []
    if cand is None:
        reasons.append(f"candidate has no {gate.metric} for mode {gate.mode!r} (was it evaluated?)")
    else:
        if cand < gate.min_value:
            reasons.append(f"{gate.metric} {cand:.4f} is below the minimum {gate.min_value:.4f}")
        if live_value is not None and cand < live_value - gate.max_drop:
            reasons.append(f"{gate.metric} {cand:.4f} is more than {gate.max_drop:.4f} below live's {live_value:.4f}")
    return GateResult(not reasons, cand, live_value, reasons)


def _move(storage: Storage, current: AliasState, to_version: str, action: str, by: str, **extra) -> AliasState:
    now = datetime.now(UTC).isoformat()
    event = {"action": action, "alias": current.alias, "version": to_version, "from": current.version, "at": now,
             "by": by, **extra}
    history = [*current.history, event]
    record = {"index": current.index, "alias": current.alias, "version": to_version, "previous": current.version,
              "at": now, "by": by, "history": history}
    try:
        tag = storage.compare_and_swap(alias_key(current.index, current.alias), json.dumps(record, indent=2).encode(),
                                       current.tag)
    except PreconditionFailed:
        raise AliasMoved(f"alias {current.index}/{current.alias} moved while {action} ran (it was at "
                         f"{current.version}); re-read it and retry") from None
    event_key = f"aliases/{current.index}/history/{now.replace(':', '')}-{current.alias}-{secrets.token_hex(3)}.json"
    try:
        storage.put_if_absent(event_key, json.dumps(event).encode())  # audit copy; the alias record is the truth
    except StorageError as exc:  # the move already happened: reporting it as failed would invite a retry
        logging.getLogger(__name__).warning("alias %s/%s moved, but its audit event was not written: %s",
                                            current.index, current.alias, exc)
    return AliasState(current.index, current.alias, to_version, current.version, history, tag)


def promote(storage: Storage, index: str, alias: str, version: str, seen: str | None, gate: GateConfig | None = None,
            force: bool = False, by: str = "embedpipe", live_evaluation: dict | None = None
            ) -> tuple[AliasState, GateResult | None]:
    """Move `alias` from `seen` (the version the caller saw, None if unset) to `version`, through the gate.

    The gate compares with the live version's manifest, or with `live_evaluation` (its metrics recomputed
    on the candidate's golden set, as a migration does, in the manifest's "evaluation" shape)."""
    current = read_alias(storage, index, alias)
    if current.version != seen:
        raise AliasMoved(f"alias {index}/{alias} is at {current.version}, not {seen} as the caller saw; nothing "
                         "changed")
    candidate = manifest_of(storage, index, version)
    result = None
    if gate is not None:
        live = manifest_of(storage, index, current.version) if current.version else None
        if live is not None and live_evaluation is not None:
            live = {**live, "evaluation": live_evaluation}
        result = check_gate(gate, candidate, live)
        if not result.passed and not force:
            raise GateRefused(f"quality gate refused {index} {version} for alias {alias}: " + "; ".join(result.reasons))
    extra = {"gate": result.__dict__} if result else {}
    if force and result and not result.passed:
        extra["forced"] = True
    return _move(storage, current, version, "promote", by, **extra), result


def promote_or_stay(storage: Storage, index: str, alias: str, version: str, seen: str | None, gate: GateConfig,
                    by: str, live_evaluation: dict | None = None) -> dict:
    """`promote` as a job reports it: a gate refusal or an alias moved by another run is an outcome (the alias
    stays where it is now), not an error. Returns {"alias", "promoted", "live", "gate" or "reason"}."""
    try:
        state, result = promote(storage, index, alias, version, seen, gate, by=by, live_evaluation=live_evaluation)
    except (GateRefused, AliasMoved) as exc:
        return {"alias": alias, "promoted": False, "live": read_alias(storage, index, alias).version,
                "reason": str(exc)}
    return {"alias": alias, "promoted": True, "live": state.version, "gate": result.__dict__ if result else None}


def rollback(storage: Storage, index: str, alias: str, seen: str | None, by: str = "embedpipe") -> AliasState:
    """Move `alias` back to what was live before its current version was promoted (repeatable: each
    rollback steps one promotion further back)."""
    current = read_alias(storage, index, alias)
    if current.version != seen:
        raise AliasMoved(f"alias {index}/{alias} is at {current.version}, not {seen} as the caller saw; nothing "
                         "changed")
    target = next((e["from"] for e in reversed(current.history)
                   if e["action"] == "promote" and e["version"] == current.version), None)
    if not target:
        raise SnapshotError(f"alias {index}/{alias} has no earlier promoted version to roll back to")
    manifest_of(storage, index, target)  # still committed (not garbage-collected)?
    return _move(storage, current, target, "rollback", by)
