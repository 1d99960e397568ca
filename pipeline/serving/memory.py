"""Giving freed memory back to the operating system, so a released version shows in the process's RSS."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def return_freed_memory() -> bool:
    """glibc keeps freed heap pages for reuse; malloc_trim(0) returns them. False where there is no glibc."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc else None
    if trim is None:
        return False
    trim(0)
    return True
