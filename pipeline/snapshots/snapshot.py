"""Versioned, immutable snapshots: files first, `manifest.json` last with put-if-absent (its existence is the
commit: a version without it is invisible). Where each file goes: pipeline/storage/layout.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property

import faiss
import numpy as np
import polars as pl

from pipeline.config import BM25
from pipeline.errors import PreconditionFailed, SnapshotError, StorageError
from pipeline.index.bm25 import Bm25Index
from pipeline.index.faiss_ops import from_bytes
from pipeline.index.variants import KINDS
from pipeline.models.card import ModelCard
from pipeline.snapshots.aliases import read_alias
from pipeline.storage import layout
from pipeline.storage.backend import Storage, redact
from pipeline.storage.layout import CLAIM, MANIFEST

FORMAT_VERSION = 2  # 2: index variants as a mapping with per-variant files, params and quality


def new_version(now: datetime | None = None) -> str:
    """Unique and sortable: UTC time to the microsecond, then random hex against same-instant collisions."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def publish(storage: Storage, index_name: str, version: str, files: dict[str, bytes], manifest: dict,
            publisher: str | None = None) -> str:
    """Claim the version, upload every file, then commit by writing the manifest (with each file's sha256
    and size) if absent. Only the claim's holder writes files, so a second publisher of the same version
    fails before it can touch the winner's; the same `publisher` may rerun after a crash to complete."""
    prefix = layout.snapshot_prefix(index_name, version)
    if storage.exists(f"{prefix}/{MANIFEST}"):
        raise SnapshotError(f"snapshot {index_name}/{version} already exists; versions are immutable")
    publisher = publisher or secrets.token_hex(8)
    try:
        storage.put_if_absent(f"{prefix}/{CLAIM}", json.dumps({"publisher": publisher}).encode())
    except PreconditionFailed:
        holder = json.loads(storage.read_bytes(f"{prefix}/{CLAIM}"))["publisher"]
        if holder != publisher:
            raise SnapshotError(f"snapshot {index_name}/{version} is being published by another publisher "
                                f"({holder}); versions are immutable") from None
    entries = {}
    for name, data in sorted(files.items()):
        storage.write_bytes(f"{prefix}/{name}", data)
        entries[name] = {"sha256": sha256(data), "bytes": len(data)}
    body = {**manifest, "format": FORMAT_VERSION, "index_name": index_name, "version": version,
            "created_at": datetime.now(UTC).isoformat(), "files": entries}
    try:
        storage.put_if_absent(f"{prefix}/{MANIFEST}", json.dumps(body, indent=2, sort_keys=True).encode())
    except PreconditionFailed:
        raise SnapshotError(f"snapshot {index_name}/{version} was committed by another publisher") from None
    return storage.url_of(prefix)


@dataclass
class Snapshot:
    """A committed snapshot, opened for reading. Files are checked against the manifest when loaded."""

    storage: Storage  # rooted at the version folder
    manifest: dict
    _cache: dict[str, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, url: str) -> Snapshot:
        """`url` is a version folder, an index folder (snapshots/<name>: its newest committed version), or
        an alias (<root>/aliases/<index>/<alias>: the version it points at)."""
        alias = layout.ALIAS_URL.match(url.rstrip("/"))
        if alias:
            root = Storage(alias["root"])
            state = read_alias(root, alias["index"], alias["alias"])
            if state.version is None:
                raise SnapshotError(f"alias {alias['index']}/{alias['alias']} is not set at {redact(alias['root'])}")
            url = root.url_of(layout.snapshot_prefix(alias["index"], state.version))
        storage = Storage(url)
        if not storage.exists(MANIFEST):
            committed = [v for v in storage.list() if storage.exists(f"{v}/{MANIFEST}")]
            if not committed:
                raise SnapshotError(f"no committed snapshot at {redact(url)} (expected {MANIFEST} there or in a "
                                    "version folder under it)")
            storage = storage.child(committed[-1])
        return cls.at(storage)

    @classmethod
    def of(cls, root: Storage, index_name: str, version: str) -> Snapshot:
        """A committed version of an index under a storage root (keeps the root's storage options)."""
        return cls.at(root.child(layout.snapshot_prefix(index_name, version)))

    @classmethod
    def at(cls, storage: Storage) -> Snapshot:
        """The committed snapshot whose version folder `storage` is rooted at (keeps its storage options)."""
        if not storage.exists(MANIFEST):
            raise SnapshotError(f"no committed snapshot at {redact(storage.url)} (expected {MANIFEST} there)")
        try:
            manifest = json.loads(storage.read_bytes(MANIFEST))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SnapshotError(f"{redact(storage.url)}/{MANIFEST} is not valid JSON") from None
        if manifest.get("format") != FORMAT_VERSION:
            raise SnapshotError(f"{redact(storage.url)}: manifest format {manifest.get('format')!r}, expected "
                                f"{FORMAT_VERSION}")
        return cls(storage, manifest)

    @property
    def url(self) -> str:
        return self.storage.url

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def model_card(self) -> ModelCard:
        return ModelCard.from_dict(self.manifest["model"])

    @property
    def variants(self) -> list[str]:
        return list(self.manifest["index"]["variants"])

    @property
    def vector_variants(self) -> list[str]:
        """The FAISS variants (every variant but bm25)."""
        return [v for v, p in self.manifest["index"]["variants"].items() if p["kind"] != BM25]

    def variant_params(self, variant: str) -> dict:
        if variant not in self.variants:
            raise SnapshotError(f"{redact(self.url)} has no variant {variant!r}; it has {self.variants}")
        return self.manifest["index"]["variants"][variant]

    @property
    def bytes(self) -> int:
        """The size of its files, manifest aside."""
        return sum(f["bytes"] for f in self.manifest["files"].values())

    def metric(self, mode: str, metric: str) -> float | None:
        """A golden-set metric of a search mode as measured at publish time, if it was."""
        return ((self.manifest.get("evaluation") or {}).get("modes") or {}).get(mode, {}).get(metric)

    def read_verified(self, name: str) -> bytes:
        if name not in self._cache:
            expected = self.manifest["files"].get(name)
            if expected is None:
                raise SnapshotError(f"{redact(self.url)}: {name} is not listed in the manifest")
            try:
                data = self.storage.read_bytes(name)
            except StorageError as exc:
                raise SnapshotError(f"{redact(self.url)}: {name} is missing ({exc})") from None
            if len(data) != expected["bytes"] or sha256(data) != expected["sha256"]:
                raise SnapshotError(f"{redact(self.url)}: {name} fails its checksum (sha256 {sha256(data)[:12]}..., "
                                    f"{len(data)} bytes; manifest says {expected['sha256'][:12]}..., "
                                    f"{expected['bytes']} bytes)")
            self._cache[name] = data
        return self._cache[name]

    def verify(self) -> dict[str, str]:
        """Check every file; returns {name: "ok"} or raises SnapshotError naming the first bad one."""
        return {name: "ok" for name in self.manifest["files"] if self.read_verified(name)}

    def index(self, variant: str) -> faiss.Index | faiss.IndexBinary:
        params = self.variant_params(variant)
        if params["kind"] == BM25:
            raise SnapshotError(f"{redact(self.url)}: variant {variant!r} is not a FAISS index; Snapshot.bm25() "
                                "loads it")
        return from_bytes(self.read_verified(params["file"]), binary=KINDS[params["kind"]].binary)

    def bm25(self) -> Bm25Index | None:
        """The bm25 variant, its files checked against the manifest; None when the snapshot has none."""
        params = self.manifest["index"]["variants"].get(BM25)
        return None if params is None else Bm25Index.from_files(self.read_verified, params,
                                                                f"{redact(self.url)} variant {BM25}")

    def rescore_store(self) -> np.ndarray | None:
        """The fp16 vectors (FAISS row order) used for rescoring, or None when the snapshot has none."""
        spec = self.manifest["index"].get("rescore")
        if not spec:
            return None
        return np.load(io.BytesIO(self.read_verified(spec["file"])), allow_pickle=False)

    @cached_property
    def ids(self) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(self.read_verified(layout.IDS)))


def committed_versions(root: Storage, index_name: str) -> list[tuple[str, Snapshot | None]]:
    """Every version folder of an index, oldest first, opened when committed (None: no manifest, an upload in
    progress or abandoned)."""
    prefix = layout.index_prefix(index_name)
    return [(v, Snapshot.of(root, index_name, v) if root.exists(f"{prefix}/{v}/{MANIFEST}") else None)
            for v in root.list(prefix)]
