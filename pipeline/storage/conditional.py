"""The two commit primitives fsspec lacks, on the backends that have them (local and S3):

- `put_if_absent`: S3 `PutObject` with `IfNoneMatch='*'`; locally a hard link, which fails if the name
  exists. Snapshot manifests are written with it: their existence is the commit.
- `compare_and_swap` on a version tag: S3 `PutObject` with `IfMatch=<etag>`; locally, lock-free, each
  value is a new numbered record `<key>.v/<n>` created with put_if_absent, so only one writer can create
  record n+1 after seeing n. Aliases move only through it.

They are a mixin of `Storage` (pipeline/storage/backend.py), whose paths, error mapping and temp files they use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from pipeline.errors import PreconditionFailed, StorageError
from pipeline.redaction import redact

_RECORDS = ".v"  # local compare-and-swap records live in <key>.v/


@dataclass(frozen=True)
class VersionedRead:
    """A conditional read of a compare-and-swap key. `changed` False: its tag is still the one the reader had, and
    nothing was transferred; otherwise its value and tag now (both None: the key is absent)."""

    changed: bool
    data: bytes | None = None
    tag: str | None = None


class CommitPrimitives:
    """put_if_absent, compare_and_swap and their reads; a Storage supplies path, _errors, _local_temp, list,
    read_bytes, fs, options, url, url_of, is_local and is_s3."""

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
            elif self.is_s3:
                self._s3_put(key, data, IfNoneMatch="*")
            else:
                raise StorageError(f"put_if_absent is not supported on {redact(self.url)} (local and s3 are)")

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """(value, tag) of a compare-and-swap key, or None if it was never written."""
        with self._errors(key):
            if self.is_s3:
                bucket, name = self._bucket_key(key)
                try:
                    got = self._s3.get_object(Bucket=bucket, Key=name, **self._s3_extra("GetObject"))
                except self._s3.exceptions.NoSuchKey:
                    return None
                return got["Body"].read(), got["ETag"]
            records = [r for r in self.list(key + _RECORDS) if r.isdigit()]
            if not records:
                return None
            return self.read_bytes(f"{key}{_RECORDS}/{records[-1]}"), records[-1]

    def read_versioned_if_changed(self, key: str, tag: str | None) -> VersionedRead:
        """`read_versioned` for a reader that polls: cheap when the value still has `tag` (S3: GetObject with
        IfNoneMatch, answered 304 without a body; locally: the highest record number, no read)."""
        with self._errors(key):
            if self.is_s3:
                if tag is None:
                    got = self.read_versioned(key)
                    return VersionedRead(True, *got) if got else VersionedRead(False)
                from botocore.exceptions import ClientError

                bucket, name = self._bucket_key(key)
                try:
                    obj = self._s3.get_object(Bucket=bucket, Key=name, IfNoneMatch=tag, **self._s3_extra("GetObject"))
                except self._s3.exceptions.NoSuchKey:
                    return VersionedRead(True)
                except ClientError as exc:
                    if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 304:
                        return VersionedRead(False)
                    raise
                return VersionedRead(True, obj["Body"].read(), obj["ETag"])
            records = [r for r in self.list(key + _RECORDS) if r.isdigit()]
            if not records:
                return VersionedRead(tag is not None)
            if records[-1] == tag:
                return VersionedRead(False)
            return VersionedRead(True, self.read_bytes(f"{key}{_RECORDS}/{records[-1]}"), records[-1])

    def compare_and_swap(self, key: str, data: bytes, expected: str | None) -> str:
        """Replace the value of `key` only if its tag is still `expected` (None: only if absent).
        Returns the new tag; a writer that lost the race gets PreconditionFailed."""
        with self._errors(key):
            if self.is_s3:
                condition = {"IfMatch": expected} if expected else {"IfNoneMatch": "*"}
                return self._s3_put(key, data, **condition)
            if not self.is_local:
                raise StorageError(f"compare_and_swap is not supported on {redact(self.url)} (local and s3 are)")
            tag = f"{(int(expected) + 1) if expected else 0:012d}"
            self.put_if_absent(f"{key}{_RECORDS}/{tag}", data)
            return tag

    # --- S3 through boto3 -----------------------------------------------------------------------------------------

    @cached_property
    def _s3(self):
        """boto3 for the conditional writes s3fs cannot make, from the same storage.options s3fs takes: its
        credentials (key, secret, token, profile, anon), endpoint, client_kwargs and config_kwargs."""
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        options = self.options
        client_kwargs = dict(options.get("client_kwargs") or {})
        for name in ("endpoint_url", "use_ssl"):
            if options.get(name) is not None:
                client_kwargs[name] = options[name]
        config = Config(**(options.get("config_kwargs") or {}))
        if options.get("anon"):
            config = config.merge(Config(signature_version=UNSIGNED))
        credentials = {"aws_access_key_id": options.get("key"), "aws_secret_access_key": options.get("secret"),
                       "aws_session_token": options.get("token")}
        session = boto3.Session(profile_name=options.get("profile"))
        return session.client("s3", config=config, **{k: v for k, v in credentials.items() if v}, **client_kwargs)

    def _s3_extra(self, operation: str) -> dict:
        """storage.options' s3_additional_kwargs that `operation` takes (server-side encryption, say), as s3fs
        adds them to its own calls."""
        extra = self.options.get("s3_additional_kwargs") or {}
        members = self._s3.meta.service_model.operation_model(operation).input_shape.members
        return {k: v for k, v in extra.items() if k in members}

    def _bucket_key(self, key: str) -> tuple[str, str]:
        bucket, _, prefix = self.path(key).partition("/")
        return bucket, prefix

    def _s3_put(self, key: str, data: bytes, **condition: str) -> str:
        from botocore.exceptions import ClientError

        bucket, name = self._bucket_key(key)
        try:
            etag = self._s3.put_object(Bucket=bucket, Key=name, Body=data, **condition,
                                       **self._s3_extra("PutObject"))["ETag"]
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                raise PreconditionFailed(f"precondition failed (someone else wrote first): "
                                         f"{redact(self.url_of(key))}") from None
            raise
        self.fs.invalidate_cache(self.path(key))
        return etag
