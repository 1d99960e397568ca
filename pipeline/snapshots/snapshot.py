"""Versioned, immutable snapshots, read: a committed version's manifest and verified files (publishing.py writes
them: files first, `manifest.json` last with put-if-absent, its existence the commit). Where each file goes:
pipeline/storage/layout.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
import polars as pl

from pipeline.config import BM25
from pipeline.errors import ObjectMissing, SnapshotError, StorageError
from pipeline.index.bm25 import Bm25Index
from pipeline.index.faiss_ops import native_stdout_silenced, to_bytes
from pipeline.index.variants import KINDS
from pipeline.models.card import ModelCard
from pipeline.redaction import redact
from pipeline.snapshots.aliases import read_alias
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from pipeline.storage.layout import MANIFEST

# 2: index variants as a mapping with per-variant files, params and quality; 3: IVF lists on disk (.ivfdata),
# trained IVF indexes kept, id rows in bucket order with a bucket column
FORMAT_VERSION = 3
READABLE_FORMATS = (2, 3)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache_root() -> Path:
    return Path(os.environ.get("EMBEDPIPE_SNAPSHOT_CACHE", Path.home() / ".cache" / "embedpipe" / "snapshots"))


@dataclass
class Snapshot:
    """A committed snapshot, opened for reading. Files are checked against the manifest when loaded."""

    storage: Storage  # rooted at the version folder
    manifest: dict
    _cache: dict[str, Path] = field(default_factory=dict, repr=False)  # verified local files

    @classmethod
    def open(cls, url: str, **options: object) -> Snapshot:
        """`url` is a version folder, an index folder (snapshots/<name>: its newest committed version), or
        an alias (<root>/aliases/<index>/<alias>: the version it points at); `options` as `storage.options`."""
        alias = layout.ALIAS_URL.match(url.rstrip("/"))
        if alias:
            root = Storage(alias["root"], **options)
            state = read_alias(root, alias["index"], alias["alias"])
            if state.version is None:
                raise SnapshotError(f"alias {alias['index']}/{alias['alias']} is not set at {redact(alias['root'])}")
            url = root.url_of(layout.snapshot_prefix(alias["index"], state.version))
        storage = Storage(url, **options)
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
        if manifest.get("format") not in READABLE_FORMATS:
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
    def query_kernel(self) -> str | None:
        """The kernel the build encoded its golden queries with (e.g. "bf16-onednn"): searches use it too, so a query
        is encoded as the build's evaluation encoded it; None for snapshots without one (fp32 then)."""
        plan = (self.manifest["model"].get("kernels") or {}).get("queries") or {}
        return f"{plan['precision']}-{plan['path']}" if plan.get("path") not in (None, "numpy") else None

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

    def _expected(self, name: str) -> dict:
        expected = self.manifest["files"].get(name)
        if expected is None:
            raise SnapshotError(f"{redact(self.url)}: {name} is not listed in the manifest")
        return expected

    def _mismatch(self, name: str, digest: str, size: int) -> SnapshotError:
        expected = self._expected(name)
        return SnapshotError(f"{redact(self.url)}: {name} fails its checksum (sha256 {digest[:12]}..., {size} bytes; "
                             f"manifest says {expected['sha256'][:12]}..., {expected['bytes']} bytes)")

    def read_verified(self, name: str) -> bytes:
        """A (small) file's bytes, checked against the manifest."""
        expected = self._expected(name)
        try:
            data = self.storage.read_bytes(name)
        except ObjectMissing as exc:  # other storage errors (a timeout) are raised as they are: not the version's
            raise SnapshotError(f"{redact(self.url)}: {name} is missing ({exc})") from None
        if len(data) != expected["bytes"] or sha256(data) != expected["sha256"]:
            raise self._mismatch(name, sha256(data), len(data))
        return data

    def local_file(self, name: str) -> Path:
        """A local path to the file, checked against the manifest once (by streaming it): the file itself on a
        local root; on a remote one a copy under EMBEDPIPE_SNAPSHOT_CACHE (~/.cache/embedpipe/snapshots), kept
        beside its version's other files (an IVF index finds its .ivfdata there), written only once verified."""
        if name in self._cache:
            return self._cache[name]
        expected = self._expected(name)
        if self.storage.is_local:
            path = Path(self.storage.path(name))
            try:
                digest, size = _file_sha256(path)
            except FileNotFoundError:
                raise SnapshotError(f"{redact(self.url)}: {name} is missing") from None
        else:
            folder = _cache_root() / hashlib.sha256(self.url.encode()).hexdigest()[:24]
            path = folder / name
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
                try:
                    self.storage.get_file(name, tmp)
                    digest, size = _file_sha256(tmp)
                    if (digest, size) == (expected["sha256"], expected["bytes"]):
                        os.replace(tmp, path)
                except ObjectMissing as exc:
                    raise SnapshotError(f"{redact(self.url)}: {name} is missing ({exc})") from None
                except OSError as exc:  # the cache's own disk: full, or not writable; a storage error all the same
                    raise StorageError(f"{redact(self.url)}: {name} cannot be copied into the snapshot cache "
                                        f"{_cache_root()} ({exc.strerror or exc}); expected room for its "
                                        f"{expected['bytes']:,} bytes (EMBEDPIPE_SNAPSHOT_CACHE moves it)") from None
                finally:
                    tmp.unlink(missing_ok=True)  # a failed or mismatched copy leaves nothing behind
            else:
                digest, size = expected["sha256"], expected["bytes"]  # renamed into place only once verified
        if (digest, size) != (expected["sha256"], expected["bytes"]):
            raise self._mismatch(name, digest, size)
        self._cache[name] = path
        return path

    def localize(self) -> None:
        """Every file made local and checked against the manifest once (what a server does before loading any:
        the loads then map these files)."""
        for name in self.manifest["files"]:
            self.local_file(name)

    def verify(self) -> dict[str, str]:
        """Check every file as it is on storage now (streamed, not from a local copy); returns {name: "ok"} or
        raises SnapshotError naming the first bad one."""
        for name, expected in self.manifest["files"].items():
            try:
                with self.storage.open_read(name) as fh:
                    digest, size = _stream_sha256(fh)
            except ObjectMissing:
                raise SnapshotError(f"{redact(self.url)}: {name} is missing") from None
            if (digest, size) != (expected["sha256"], expected["bytes"]):
                raise self._mismatch(name, digest, size)
        return dict.fromkeys(self.manifest["files"], "ok")

    def index(self, variant: str) -> faiss.Index | faiss.IndexBinary:
        """A variant's index, memory-mapped where FAISS allows: IVF lists on disk (their .ivfdata beside the index
        file), flat float codes mapped from the file."""
        params = self.variant_params(variant)
        if params["kind"] == BM25:
            raise SnapshotError(f"{redact(self.url)}: variant {variant!r} is not a FAISS index; Snapshot.bm25() "
                                "loads it")
        path = str(self.local_file(params["file"]))
        read = faiss.read_index_binary if KINDS[params["kind"]].binary else faiss.read_index
        ivfdata = layout.ivfdata_file(variant)
        if ivfdata in self.manifest["files"]:
            self.local_file(ivfdata)
            with native_stdout_silenced():
                return read(path, faiss.IO_FLAG_ONDISK_SAME_DIR)
        return read(path) if KINDS[params["kind"]].binary else read(path, faiss.IO_FLAG_MMAP_IFC)

    def trained(self, variant: str) -> bytes:
        """An IVF variant's trained, empty index (what a later build of the same model may reuse)."""
        name = layout.trained_file(variant)
        if name in self.manifest["files"]:
            return self.read_verified(name)
        index = self.index(variant)  # written before trained files were kept: empty a copy
        empty = (faiss.clone_binary_index if isinstance(index, faiss.IndexBinary) else faiss.clone_index)(index)
        empty.reset()
        return to_bytes(empty)

    def bm25(self) -> Bm25Index | None:
        """The bm25 variant, memory-mapped from its files (checked against the manifest); None when the snapshot has
        none."""
        params = self.manifest["index"]["variants"].get(BM25)
        return None if params is None else Bm25Index.from_files(self.local_file, params,
                                                                f"{redact(self.url)} variant {BM25}")

    def rescore_store(self) -> np.ndarray | None:
        """The fp16 vectors (FAISS row order) used for rescoring, memory-mapped; None when the snapshot has none."""
        spec = self.manifest["index"].get("rescore")
        if not spec:
            return None
        return np.load(self.local_file(spec["file"]), mmap_mode="r", allow_pickle=False)

    def chunk_hashes(self, lo: int, hi: int) -> set[str]:
        """The chunk hashes of documents in buckets [lo, hi) (only the id table's row groups that hold them are
        read; an id table without buckets, written before format 3, is read whole)."""
        import pyarrow.parquet as pq

        path = self.local_file(layout.IDS)
        if "bucket" not in pq.read_schema(path).names:
            return set(self.ids["chunk_hash"].to_list())
        table = pq.read_table(path, columns=["chunk_hash"], filters=[("bucket", ">=", lo), ("bucket", "<", hi)])
        return set(table.column("chunk_hash").to_pylist())

    @cached_property
    def ids(self) -> pl.DataFrame:
        return pl.read_parquet(self.local_file(layout.IDS))


def _stream_sha256(fh) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    while block := fh.read(8 << 20):
        h.update(block)
        size += len(block)
    return h.hexdigest(), size


def _file_sha256(path: Path) -> tuple[str, int]:
    with open(path, "rb") as fh:
        return _stream_sha256(fh)


def committed_versions(root: Storage, index_name: str) -> list[tuple[str, Snapshot | None]]:
    """Every version folder of an index, oldest first, opened when committed (None: no manifest, an upload in
    progress or abandoned)."""
    prefix = layout.index_prefix(index_name)
    return [(v, Snapshot.of(root, index_name, v) if root.exists(f"{prefix}/{v}/{MANIFEST}") else None)
            for v in root.list(prefix)]
