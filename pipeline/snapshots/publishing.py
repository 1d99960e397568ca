"""Publishing a version: claim it, write its files, commit it with `manifest.json` written last with put-if-absent
(its existence is the commit: a version without it is invisible; snapshot.py reads what is committed)."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

from pipeline.errors import PreconditionFailed, SnapshotError, StorageError
from pipeline.snapshots.snapshot import FORMAT_VERSION, sha256
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from pipeline.storage.layout import CLAIM, MANIFEST


def new_version(now: datetime | None = None) -> str:
    """Unique and sortable: UTC time to the microsecond, then random hex against same-instant collisions."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def claim(storage: Storage, index_name: str, version: str, publisher: str, now: datetime | None = None) -> None:
    """Claim a version before writing any of its files: only the claim's holder writes them, so a second publisher
    of the same version fails before it can touch the winner's; the same `publisher` may claim again after a
    crash, to complete it. The claim records when it was made or renewed: gc ages an upload by it (a run resumed
    days after it chose its version is uploading now)."""
    prefix = layout.snapshot_prefix(index_name, version)
    if storage.exists(f"{prefix}/{MANIFEST}"):
        raise SnapshotError(f"snapshot {index_name}/{version} already exists; versions are immutable")
    body = json.dumps({"publisher": publisher, "at": (now or datetime.now(UTC)).isoformat()}).encode()
    try:
        storage.put_if_absent(f"{prefix}/{CLAIM}", body)
    except PreconditionFailed:
        holder = json.loads(storage.read_bytes(f"{prefix}/{CLAIM}"))["publisher"]
        if holder != publisher:
            raise SnapshotError(f"snapshot {index_name}/{version} is being published by another publisher "
                                f"({holder}); versions are immutable") from None
        storage.write_bytes(f"{prefix}/{CLAIM}", body)  # renewed


def claimed_at(storage: Storage, index_name: str, version: str) -> datetime | None:
    """When an uncommitted version was last claimed, or None (no claim, or one from before claims had times)."""
    try:
        return datetime.fromisoformat(json.loads(storage.read_bytes(
            f"{layout.snapshot_prefix(index_name, version)}/{CLAIM}"))["at"])
    except (StorageError, ValueError, KeyError, TypeError):
        return None


def commit(storage: Storage, index_name: str, version: str, files: dict[str, dict], manifest: dict) -> str:
    """Commit a claimed version whose files are written: its manifest (with `files`, each file's sha256 and size)
    written if absent, once every file is there with its size (a version's files may not vanish before it is
    visible: a gc, say). Returns the version folder's URL."""
    prefix = layout.snapshot_prefix(index_name, version)
    held = storage.sizes(prefix)
    if lost := sorted(name for name, f in files.items() if held.get(name) != f["bytes"]):
        raise SnapshotError(f"snapshot {index_name}/{version} not committed: {len(lost)} of its files are not in "
                            f"storage as written ({', '.join(lost[:3])}); was it garbage-collected? Run the build "
                            "again")
    body = {**manifest, "format": FORMAT_VERSION, "index_name": index_name, "version": version,
            "created_at": datetime.now(UTC).isoformat(), "files": dict(sorted(files.items()))}
    try:
        storage.put_if_absent(f"{prefix}/{MANIFEST}", json.dumps(body, indent=2, sort_keys=True).encode())
    except PreconditionFailed:
        raise SnapshotError(f"snapshot {index_name}/{version} was committed by another publisher") from None
    return storage.url_of(prefix)


def publish(storage: Storage, index_name: str, version: str, files: dict[str, bytes], manifest: dict,
            publisher: str | None = None) -> str:
    """Claim, write and commit a version whose files are given as bytes (small snapshots, tests)."""
    claim(storage, index_name, version, publisher or secrets.token_hex(8))
    prefix = layout.snapshot_prefix(index_name, version)
    for name, data in sorted(files.items()):
        storage.write_bytes(f"{prefix}/{name}", data)
    return commit(storage, index_name, version, {name: {"sha256": sha256(data), "bytes": len(data)}
                                                 for name, data in files.items()}, manifest)
