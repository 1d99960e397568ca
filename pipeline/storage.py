"""One storage abstraction over fsspec, for every backend (local paths, file://, s3://, ...).

Keys are '/'-separated paths relative to the root. Writes are atomic (temp name + rename on local
filesystems; a single PUT is already atomic on object stores) and `put_if_absent` is the commit
primitive: the manifest of a snapshot is written with it, so its existence is the commit.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import PreconditionFailed, StorageError

_USERINFO = re.compile(r"(?<=://)[^/@]+@")


def redact(url: str) -> str:
    """Drop credentials embedded in a URL (s3://KEY:SECRET@bucket) before it reaches a log or error."""
    return _USERINFO.sub("***@", url)


class Storage:
    def __init__(self, root: str, **options: object) -> None:
        self.url = root.rstrip("/")
        try:
            self.fs, path = fsspec.core.url_to_fs(self.url, **options)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"cannot open storage root {redact(self.url)}: {exc}") from None
        self.root = path.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            self.url = self.root  # absolute, so Ray workers with another working directory agree on it

    def __repr__(self) -> str:
        return f"Storage({redact(self.url)!r})"

    def path(self, key: str) -> str:
        return f"{self.root}/{key.lstrip('/')}" if key else self.root

    def url_of(self, key: str) -> str:
        return f"{self.url}/{key.lstrip('/')}" if key else self.url

    def child(self, key: str) -> Storage:
        """A Storage rooted at a sub-folder, sharing this one's filesystem."""
        sub = Storage.__new__(Storage)
        sub.url, sub.fs, sub.root, sub.is_local = self.url_of(key), self.fs, self.path(key), self.is_local
        return sub

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError:
            raise StorageError(f"not found: {redact(self.url_of(key))}") from None
        except PermissionError as exc:
            raise StorageError(f"permission denied on {redact(self.url_of(key))}: {exc.strerror}") from None
        except OSError as exc:
            if isinstance(exc, FileExistsError):
                raise
            raise StorageError(f"storage error on {redact(self.url_of(key))}: {type(exc).__name__}") from None

    def exists(self, key: str) -> bool:
        with self._errors(key):
            return self.fs.exists(self.path(key))

    def read_bytes(self, key: str) -> bytes:
        with self._errors(key):
            return self.fs.cat_file(self.path(key))

    def _local_temp(self, target: str, data: bytes) -> str:
        """Write `data` durably to a fresh temp name beside `target`; the caller renames or links it."""
        self.fs.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def write_bytes(self, key: str, data: bytes) -> None:
        """Atomic: a reader sees the old object or the new one, never a part."""
        target = self.path(key)
        with self._errors(key):
            if not self.is_local:
                self.fs.pipe_file(target, data)
                return
            os.replace(self._local_temp(target, data), target)

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Create `key` only if no object has that name; the loser gets PreconditionFailed."""
        target = self.path(key)
        with self._errors(key):
            if self.is_local:
                # Write a temp file, then hard-link it: link() fails if the name exists, so the
                # committed file is always complete and only one writer can win.
                tmp = self._local_temp(target, data)
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    raise PreconditionFailed(f"already exists: {redact(self.url_of(key))}") from None
                finally:
                    os.unlink(tmp)
                return
            try:
                with self.fs.open(target, "xb") as fh:
                    fh.write(data)
            except FileExistsError:
                raise PreconditionFailed(f"already exists: {redact(self.url_of(key))}") from None

    def list(self, prefix: str = "") -> list[str]:
        """Keys of the objects directly under `prefix` (folders included), sorted; [] if it is absent."""
        base = self.path(prefix)
        with self._errors(prefix):
            if not self.fs.exists(base):
                return []
            names = self.fs.ls(base, detail=False)
        return sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in names)

    def delete(self, key: str, recursive: bool = False) -> None:
        with self._errors(key):
            self.fs.rm(self.path(key), recursive=recursive)
