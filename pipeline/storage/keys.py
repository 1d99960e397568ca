"""Object keys and URLs made safe: keys built from user-given names cannot leave the storage root, and
credentials embedded in a URL never reach a log or an error."""

from __future__ import annotations

import re

from pipeline.errors import StorageError

_USERINFO = re.compile(r"(?<=://)[^/@]+@")
# the parts of a signed or token-bearing URL's query that grant access (S3 and GCS presigned, Azure SAS, tokens)
_QUERY_SECRET = re.compile(r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
                           r"x-goog-credential|sig|signature|token|access_token|api_key|apikey|key|password|secret)=)"
                           r"[^&#]*")
_BAD_KEY = re.compile(r"(^/)|(^|/)\.\.?(/|$)|//|[\\\x00-\x1f]")


def redact(url: str) -> str:
    """Drop credentials embedded in a URL (s3://KEY:SECRET@bucket, a signed URL's ?X-Amz-Signature=..., a SAS
    token's sig=...) before it reaches a log, an error or a manifest."""
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub("***@", url))


def check_key(key: str) -> str:
    """Keys are built from user-given names: refuse any that could leave the root."""
    if _BAD_KEY.search(key):
        raise StorageError(f"refusing object key {key!r}: expected a relative path without '..', '.', '//', "
                           "backslashes or control characters")
    return key
