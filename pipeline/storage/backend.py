"""One storage abstraction over fsspec, for every backend (local paths, file://, s3://, ...).

Keys are '/'-separated paths relative to the root; a key that could escape the root is refused
(pipeline/storage/keys.py). Writes are atomic (temp name + rename locally; a single PUT or a completed multipart
upload on object stores). A local writer killed between its temp file and the rename leaves the temp file behind,
complete; listings never show one (a shard's reader would read that part twice). The two commit primitives fsspec
lacks, put_if_absent and compare_and_swap, are in pipeline/storage/conditional.py.

Credentials come from the environment (AWS_ACCESS_KEY_ID, ..., AWS_ENDPOINT_URL) or the `options`
given to fsspec, and never appear in errors: URLs are redacted and exception texts are not echoed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.config import StorageConfig
from pipeline.errors import ObjectMissing, StorageError
from pipeline.redaction import redact
from pipeline.storage.conditional import CommitPrimitives
from pipeline.storage.hashing import HashingWriter
from pipeline.storage.keys import check_key
from pipeline.storage.layout import probe_key

_TEMP_NAME = re.compile(r".+\.tmp-[0-9a-f]{32}")  # <name>.tmp-<uuid hex>: a local write not yet renamed


def _temp_path(target: str) -> str:
    return f"{target}.tmp-{uuid.uuid4().hex}"


def _reopen(url: str, options: dict) -> Storage:
    return Storage(url, **options)


class Storage(CommitPrimitives):
    def __init__(self, root: str, **options: object) -> None:
        self.url, self.options = root.rstrip("/"), options
        try:
            self.fs, path = fsspec.core.url_to_fs(self.url, **options)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"cannot open storage root {redact(self.url)}: {type(exc).__name__}") from None
        self.root = path.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.is_s3 = "s3" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.is_local:
            self.url = self.root  # absolute, so Ray workers with another working directory agree on it

    @classmethod
    def of(cls, cfg: StorageConfig) -> Storage:
        """The storage root a config names, with its fsspec options."""
        return cls(cfg.root, **cfg.options)

    def __repr__(self) -> str:
        return f"Storage({redact(self.url)!r})"

    def __reduce__(self):  # to a worker: rebuilt from its URL and options (clients are not picklable)
        return _reopen, (self.url, self.options)

    def path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}" if key else self.root

    def url_of(self, key: str) -> str:
        return f"{self.url}/{key.lstrip('/')}" if key else self.url

    def child(self, key: str) -> Storage:
        """A Storage rooted at a sub-folder, sharing this one's filesystem."""
        sub = Storage.__new__(Storage)
        sub.__dict__.update(self.__dict__)
        sub.url, sub.root = self.url_of(key), self.path(key)
        return sub

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Backend failures as one StorageError naming the object and what to check; the backend's own message
        is not echoed (it can hold a signed URL)."""
        try:
            yield
        except FileNotFoundError:
            raise ObjectMissing(f"not found: {redact(self.url_of(key))}") from None
        except PermissionError as exc:
            check = (f"this user cannot write or read there ({exc.strerror})" if self.is_local else
                     "check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the bucket's policy")
            raise StorageError(f"permission denied on {redact(self.url_of(key))}: {check}") from None
        except FileExistsError:
            raise
        except OSError as exc:  # a local file system's reason is safe to show (a path at most); a service's is not
            why = exc.strerror if self.is_local and exc.strerror else type(exc).__name__
            raise StorageError(f"storage error on {redact(self.url_of(key))}: {why}") from None
        except Exception as exc:
            reason = self._backend_failure(exc)
            if reason is None:
                raise
            raise StorageError(f"storage root {redact(self.url)}: {reason} (while accessing {key or '/'})") from None

    def _endpoint(self) -> str:
        client_kwargs = self.options.get("client_kwargs") or {}
        endpoint = self.options.get("endpoint_url") or client_kwargs.get("endpoint_url") or \
            os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return redact(endpoint) if endpoint else "AWS's default endpoint"

    def _backend_failure(self, exc: Exception) -> str | None:
        """What an S3 client failure (botocore's errors, which are not OSErrors) means for the user; a backend that
        cannot take its `storage.options` fails on first use, with a TypeError or AttributeError."""
        if self.options and isinstance(exc, TypeError | AttributeError):
            # the message names an option (never its value) only when it is an unexpected keyword argument
            named = f": {exc}" if "unexpected keyword argument" in str(exc) else ""
            return (f"the backend does not take these storage.options ({type(exc).__name__}{named}); check their "
                    "names, and that client_kwargs and config_kwargs are mappings")
        try:
            from botocore import exceptions as boto
        except ImportError:
            return None
        if isinstance(exc, boto.ReadTimeoutError | boto.ConnectTimeoutError):
            return f"the storage endpoint {self._endpoint()} timed out; is it reachable from here?"
        if isinstance(exc, boto.ConnectionError | boto.HTTPClientError):
            return (f"cannot connect to the storage endpoint {self._endpoint()}; is the server running, and are "
                    "AWS_ENDPOINT_URL (or storage.options.endpoint_url) and the network right?")
        if isinstance(exc, boto.NoCredentialsError | boto.PartialCredentialsError):
            return "no storage credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile)"
        if isinstance(exc, boto.ClientError):
            code = exc.response.get("Error", {}).get("Code", "unknown")
            if code == "NoSuchBucket":
                return f"the bucket {self.root.split('/')[0]!r} does not exist"
            return f"the storage service refused the request ({code}); check the credentials and the bucket's policy"
        if isinstance(exc, boto.BotoCoreError):
            return f"S3 client error {type(exc).__name__}"
        return None

    def probe(self) -> None:
        """Fail fast when the root cannot be reached or written: a small object is put, read back and deleted."""
        key, payload = probe_key(), b"embedpipe storage probe"
        try:
            self.write_bytes(key, payload)
            readable = self.read_bytes(key) == payload
            self.delete(key)
        except ObjectMissing:  # writing creates folders, not buckets
            why = "no folder can be created there" if self.is_local else "its bucket does not exist"
            raise StorageError(f"storage root {redact(self.url)}: cannot write there: {why}") from None
        if not readable:
            raise StorageError(f"storage root {redact(self.url)}: an object written there reads back different")

    # --- plain operations -------------------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        with self._errors(key):
            return self.fs.exists(self.path(key))

    def read_bytes(self, key: str) -> bytes:
        with self._errors(key):
            return self.fs.cat_file(self.path(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        """Atomic: a reader sees the old object or the new one, never a part."""
        target = self.path(key)
        with self._errors(key):
            if not self.is_local:
                self.fs.pipe_file(target, data)
                return
            os.replace(self._local_temp(target, data), target)

    def copy(self, src: str, dst: str) -> None:
        """`dst` becomes a copy of the immutable object `src`, atomically, without its bytes passing through here:
        locally a hard link (objects are replaced, never changed in place, so the two never diverge), on S3 a
        server-side copy."""
        with self._errors(src):
            if not self.is_local:
                self.fs.copy(self.path(src), self.path(dst))
                return
            target = self.path(dst)
            self.fs.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = _temp_path(target)
            try:
                os.link(self.path(src), tmp)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copyfile(self.path(src), tmp)  # a file system without hard links
            os.replace(tmp, target)

    @contextmanager
    def open_write(self, key: str, digest: bool = True) -> Iterator[HashingWriter]:
        """A stream to write `key` with, atomically (a reader sees it only once the block ends without an error:
        locally a temp name renamed at the end, on S3 an upload completed at close, aborted on an error). Nothing
        is held whole in memory; the writer's size, and sha256 unless `digest` is False (a run's work file), are
        known at the end. The stream's failures are StorageErrors; the block's own errors pass through as they are."""
        target, errors = self.path(key), partial(self._errors, key)
        if self.is_local:
            with errors():
                self.fs.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = _temp_path(target)
                fh = open(tmp, "wb")  # noqa: SIM115 (closed below, before the rename)
            try:
                yield HashingWriter(fh, digest, errors)
                with errors():
                    fh.flush()
                    os.fsync(fh.fileno())
                    fh.close()
                    os.replace(tmp, target)
            finally:
                fh.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return
        with errors():
            fh = self.fs.open(target, "wb")
        try:
            yield HashingWriter(fh, digest, errors)
        except BaseException:
            # closing would upload what was written: abort the multipart upload (a smaller write is a single put
            # at close, so nothing was sent) and mark the file closed so that its finalizer does not close it
            with contextlib.suppress(Exception):
                fh.discard()
            fh.closed = True
            raise
        with errors():
            fh.close()
        self.fs.invalidate_cache(target)

    def put_file(self, key: str, local: str | os.PathLike) -> tuple[str, int]:
        """Upload a local file by streaming; returns its (sha256, size)."""
        with open(local, "rb") as src, self.open_write(key) as out:
            shutil.copyfileobj(src, out, 8 << 20)
        return out.sha256, out.size

    def get_file(self, key: str, local: str | os.PathLike) -> None:
        """Download `key` into a local file by streaming. The storage's failures are StorageErrors naming `key`;
        the local file's (a full disk) are OSErrors naming that file."""
        with open(local, "wb") as dst:
            with self._errors(key):
                src = self.fs.open(self.path(key), "rb")
            with src:
                while True:
                    with self._errors(key):
                        block = src.read(8 << 20)
                    if not block:
                        break
                    dst.write(block)

    def open_read(self, key: str):
        """A stream to read `key` with (a file object: use it in a `with` block)."""
        with self._errors(key):
            return self.fs.open(self.path(key), "rb")

    def list(self, prefix: str = "") -> list[str]:
        """Names directly under `prefix` (folders included, temp files of unfinished local writes not), sorted; []
        if it is absent. Listed afresh and not kept: s3fs would answer later `exists` checks under `prefix` from a
        kept listing, blind to what other processes wrote or deleted since (a worker's shard marker)."""
        return [name for name in self._names(prefix) if not _TEMP_NAME.fullmatch(name)]

    def unfinished(self, prefix: str) -> list[str]:
        """The temp files directly under `prefix` that local writes left: a writer killed between writing one and
        renaming it (a write in progress shows here too: delete them only while nothing writes there)."""
        return [name for name in self._names(prefix) if _TEMP_NAME.fullmatch(name)]

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every object under `prefix` (names relative to it, at any depth) and its size, from one listing."""
        base, found = self._find(prefix)
        start = len(base.rstrip("/")) + 1
        return {path[start:]: info["size"] for path, info in found.items() if info["type"] == "file"}

    def last_modified(self, prefix: str) -> datetime | None:
        """When anything under `prefix` was last written (one listing of all of it); None if nothing is there."""
        times = [info["LastModified"] if "LastModified" in info else datetime.fromtimestamp(info["mtime"], UTC)
                 for info in self._find(prefix)[1].values()]
        return max(times, default=None)

    def _find(self, prefix: str) -> tuple[str, dict[str, dict]]:
        """The path of `prefix` and everything under it (path -> details), from one fresh listing."""
        with self._afresh(prefix) as base:
            return base, self.fs.find(base, detail=True) if self.fs.exists(base) else {}

    def delete(self, key: str, recursive: bool = False) -> None:
        with self._errors(key):
            self.fs.rm(self.path(key), recursive=recursive)

    # --- backend details ------------------------------------------------------------------------------------------

    def _names(self, prefix: str) -> list[str]:
        with self._afresh(prefix) as base:
            names = self.fs.ls(base, detail=False) if self.fs.exists(base) else []
        return sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in names)

    @contextmanager
    def _afresh(self, prefix: str) -> Iterator[str]:
        """The path of `prefix`, with what fsspec kept of its listings dropped before and after (see `list`)."""
        base = self.path(prefix)
        with self._errors(prefix):
            self.fs.invalidate_cache(base)
            try:
                yield base
            finally:
                self.fs.invalidate_cache(base)

    def _local_temp(self, target: str, data: bytes) -> str:
        """Write `data` durably to a fresh temp name beside `target`; the caller renames or links it."""
        self.fs.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = _temp_path(target)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:  # an error or an interrupt (a worker told to exit): no temp file left behind
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return tmp
