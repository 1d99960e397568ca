"""Object keys made safe: keys built from user-given names cannot leave the storage root."""

from __future__ import annotations

import re

from pipeline.errors import StorageError

_BAD_KEY = re.compile(r"(^/)|(^|/)\.\.?(/|$)|//|[\\\x00-\x1f]")


def check_key(key: str) -> str:
    """Keys are built from user-given names: refuse any that could leave the root."""
    if _BAD_KEY.search(key):
        raise StorageError(f"refusing object key {key!r}: expected a relative path without '..', '.', '//', "
                           "backslashes or control characters")
    return key
