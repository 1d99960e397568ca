"""A write stream that hashes what passes through it: a file's sha256 and size, known as it is written (a snapshot's
manifest records both) rather than by reading it back."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import BinaryIO


class HashingWriter(io.RawIOBase):
    """A write-only stream that computes the sha256 and size of what passes through it (closing it leaves the
    stream it writes to open: its owner commits that)."""

    def __init__(self, sink: BinaryIO, digest: bool = True,
                 errors: Callable[[], AbstractContextManager] = contextlib.nullcontext) -> None:
        super().__init__()
        self.sink, self.size, self._hash, self._errors = sink, 0, hashlib.sha256() if digest else None, errors

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        if self._hash is not None:
            self._hash.update(data)
        self.size += len(data)
        with self._errors():  # the sink's failures (a full disk, a lost connection) as the storage reports them
            self.sink.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    @property
    def sha256(self) -> str:
        if self._hash is None:
            raise ValueError("written with digest=False: no sha256")
        return self._hash.hexdigest()
