"""Object keys and URLs made safe: keys built from user-given names cannot leave the storage root, and
credentials embedded in a URL never reach a log or an error."""

from __future__ import annotations

import re

from pipeline.errors import StorageError

_USERINFO = re.compile(r"(?<=://)[^/@]+@")
_BAD_KEY = re.compile(r"(^/)|(^|/)\.\.?(/|$)|//|[\\\x00-\x1f]")


def redact(url: str) -> str:
    """Drop credentials embedded in a URL (s3://KEY:SECRET@bucket) before it reaches a log or error."""
    return _USERINFO.sub("***@", url)


def check_key(key: str) -> str:
    """Keys are built from user-given names: refuse any that could leave the root."""
    if _BAD_KEY.search(key):
        raise StorageError(f"refusing object key {key!r}: expected a relative path without '..', '.', '//', "
                           "backslashes or control characters")
    return key
