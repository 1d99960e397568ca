"""Credentials dropped from URLs before they reach a log, an error or a manifest (the lowest layer: the config's
errors use it too)."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?<=://)[^/@]+@")
# the parts of a signed or token-bearing URL's query that grant access (S3 and GCS presigned, Azure SAS, tokens)
_QUERY_SECRET = re.compile(r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
                           r"x-goog-credential|sig|signature|token|access_token|api_key|apikey|key|password|secret)=)"
                           r"[^&#]*")


def redact(url: str) -> str:
    """Drop credentials embedded in a URL (s3://KEY:SECRET@bucket, a signed URL's ?X-Amz-Signature=..., a SAS
    token's sig=...) before it reaches a log, an error or a manifest."""
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub("***@", url))
