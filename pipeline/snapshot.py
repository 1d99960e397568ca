"""Versioned, immutable snapshots: files first, `manifest.json` last with put-if-absent.

Layout under the storage root (README, "What a snapshot holds"):
    snapshots/<index_name>/<version>/index/<variant>.faiss   plain faiss.read_index files
    snapshots/<index_name>/<version>/ids.parquet             faiss row -> chunk_id, doc_id, offsets, title
    snapshots/<index_name>/<version>/manifest.json           the commit: a version without it is invisible
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property

import faiss
import numpy as np
import polars as pl

from pipeline.errors import PreconditionFailed, SnapshotError, StorageError
from pipeline.index_build import from_bytes
from pipeline.models import ModelCard
from pipeline.storage import Storage, redact

MANIFEST = "manifest.json"
CLAIM = "_CLAIM"  # who is publishing this version; written first, with put_if_absent
_ALIAS_URL = re.compile(r"^(?P<root>.+)/aliases/(?P<index>[^/]+)/(?P<alias>[^/]+?)(\.json)?$")
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
    prefix = f"snapshots/{index_name}/{version}"
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
        alias = _ALIAS_URL.match(url.rstrip("/"))
        if alias:
            from pipeline.aliases import read_alias  # aliases imports this module

            root = Storage(alias["root"])
            state = read_alias(root, alias["index"], alias["alias"])
            if state.version is None:
                raise SnapshotError(f"alias {alias['index']}/{alias['alias']} is not set at {redact(alias['root'])}")
            url = root.url_of(f"snapshots/{alias['index']}/{state.version}")
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
        return cls.at(root.child(f"snapshots/{index_name}/{version}"))

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

    def variant_params(self, variant: str) -> dict:
        if variant not in self.variants:
            raise SnapshotError(f"{redact(self.url)} has no variant {variant!r}; it has {self.variants}")
        return self.manifest["index"]["variants"][variant]

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
        return from_bytes(self.read_verified(params["file"]), binary=params["kind"].startswith("binary"))

    def rescore_store(self) -> np.ndarray | None:
        """The fp16 vectors (FAISS row order) used for rescoring, or None when the snapshot has none."""
        spec = self.manifest["index"].get("rescore")
        if not spec:
            return None
        return np.load(io.BytesIO(self.read_verified(spec["file"])), allow_pickle=False)

    @cached_property
    def ids(self) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(self.read_verified("ids.parquet")))
