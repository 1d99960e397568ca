"""What a version records of its input, so that a later incremental reindex can leave unchanged files unread:

- files.parquet: one row per input file: its url (redacted), size and change stamp as listed, the sha256 of its
  bytes where the stamp does not already name its content (a local file's times), and its records by fate (read,
  accepted, quarantined, blank_lines; a record dropped as a later copy of an id counts as quarantined);
- documents.parquet: one row per accepted document: its bucket, the file and record it came from, its content hash
  (in bucket order, so a shard reads only its own range, as it does the id table).

A file is left unread when the live version lists it with the same size and change stamp, or the same sha256 (a
file written again with the same bytes: hashing it costs a fraction of reading it), and none of its records was
quarantined: a quarantined record's fate can turn on another file (the earlier copy of its id may have gone
with a change there), an accepted one's cannot, except by a new copy of its id in an earlier file, which the
shard that owns the id sees (pipeline/jobs/prepare.py). Its documents are then live's, and its counts live's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import fsspec
import polars as pl

from pipeline.corpus.pieces import InputFile
from pipeline.corpus.records import unreadable
from pipeline.redaction import redact

FILE_COUNTS = ("read", "accepted", "quarantined", "blank_lines")
FILES_SCHEMA = {"url": pl.String, "size": pl.Int64, "stamp": pl.String, "sha256": pl.String} | dict.fromkeys(
    FILE_COUNTS, pl.Int64) | {"unread": pl.Boolean}  # left unread: its counts and documents are the version before's
# stamps that change only with the bytes (an S3 ETag is their MD5, or their parts' for a multipart upload; GCS's
# md5Hash): a file with one needs no digest of its own
CONTENT_STAMPS = ("ETag ", "etag ", "md5Hash ")
DOCUMENTS_SCHEMA = {"doc_id": pl.String, "bucket": pl.UInt16, "source": pl.String, "position": pl.Int64,
                    "content_hash": pl.String}


def documents_of(docs: pl.DataFrame) -> pl.DataFrame:
    """documents.parquet rows of accepted documents (read with their source and position, hashed and bucketed)."""
    return docs.select("doc_id", "bucket", "source", "position", "content_hash").cast(DOCUMENTS_SCHEMA)


def file_sha256(url: str, block: int = 8 << 20) -> str:
    """sha256 of a file's bytes as stored (a compressed file's compressed bytes), streamed a block at a time."""
    digest = hashlib.sha256()
    try:
        with fsspec.open(url, "rb") as fh:
            while data := fh.read(block):
                digest.update(data)
    except OSError as exc:
        raise unreadable(url, exc) from None
    return digest.hexdigest()


def files_sha256(urls: list[str]) -> list[str]:
    """file_sha256 of each of a batch of files (one unit of work: a task per small file would cost more than
    hashing it)."""
    return [file_sha256(url) for url in urls]


def hash_batches(files: list[InputFile], batch_bytes: int) -> list[list[str]]:
    """The files' urls in batches of consecutive files holding about `batch_bytes` each (a larger file alone)."""
    batches: list[list[str]] = []
    size = batch_bytes
    for f in files:
        if size >= batch_bytes:
            batches.append([])
            size = 0
        batches[-1].append(f.url)
        size += f.size
    return batches


def with_sha256(files: pl.DataFrame) -> pl.DataFrame:
    """A files table in this schema; one recorded before files were hashed gets a null sha256."""
    if "sha256" not in files.columns:
        files = files.with_columns(pl.lit(None, pl.String).alias("sha256"))
    return files.select(list(FILES_SCHEMA)).cast(FILES_SCHEMA)


def _listing(listed: list[InputFile]) -> pl.DataFrame:
    return pl.DataFrame({"url": [redact(f.url) for f in listed], "size": [f.size for f in listed],
                         "stamp": [f.stamp for f in listed]},
                        schema={"url": pl.String, "size": pl.Int64, "stamp": pl.String})


def to_hash(listed: list[InputFile], live: pl.DataFrame) -> list[InputFile]:
    """The listed files to hash against `live`'s files table (with_sha256): those whose stamp does not name their
    content, less those left unread by their stamp whose sha256 live holds (hashed once, then known)."""
    stamped = _listing([f for f in listed if f.stamp])
    known = set(live.filter(pl.col("sha256").is_not_null(), pl.col("quarantined") == 0).join(
        stamped, on=["url", "size", "stamp"], how="semi")["url"].to_list())
    return [f for f in listed if not f.stamp.startswith(CONTENT_STAMPS) and redact(f.url) not in known]


def unread_files(listed: list[InputFile], live: pl.DataFrame, digests: dict[str, str]) -> pl.DataFrame:
    """What a reindex decides of its files, against `live`'s files table (with_sha256) and the `digests` of the
    files it hashed (by redacted url): a row per file left unread (live's row, `unread` true, its sha256 known
    where either side hashed it), and a row per other hashed file (`unread` false, only its url and sha256).
    Left unread: listed with live's size, and live's stamp or sha256, none of its records quarantined."""
    now = _listing(listed).with_columns(
        pl.col("url").replace_strict(digests, default=None, return_dtype=pl.String).alias("digest"))
    both = live.filter(pl.col("quarantined") == 0).join(now, on=["url", "size"], suffix="_now")
    # the bytes where both sides hashed them (a stamp may stay put through a write: a copy keeping times), else
    # the stamp
    same_stamp = (pl.col("stamp") == pl.col("stamp_now")) & (pl.col("stamp") != "")
    same = pl.when(pl.col("sha256").is_not_null() & pl.col("digest").is_not_null()).then(
        pl.col("sha256") == pl.col("digest")).otherwise(same_stamp)
    unread = both.filter(same).with_columns(pl.coalesce("digest", "sha256").alias("sha256"),
                                            pl.lit(True).alias("unread"))
    read = now.filter(pl.col("digest").is_not_null(), ~pl.col("url").is_in(unread["url"].implode())).select(
        "url", pl.col("digest").alias("sha256"), pl.lit(False).alias("unread"))
    return pl.concat([unread.select(list(FILES_SCHEMA)), read], how="diagonal").cast(FILES_SCHEMA)


def files_table(listed: list[InputFile], read: dict[str, dict[str, int]], decided: pl.DataFrame,
                dropped: dict[str, int]) -> pl.DataFrame:
    """This build's files.parquet: each listed file's counts, from its read pieces (`read`) or live's row (`decided`'s
    unread rows; unread_files), less the records the shards dropped as later copies of an id (`dropped`); its sha256
    where `decided` holds one. Files are named by redacted url throughout."""
    known = {row["url"]: row for row in decided.iter_rows(named=True)}
    rows = []
    for f in listed:
        url = redact(f.url)
        row = known.get(url, {})
        kept = bool(row.get("unread"))
        counts = {k: row[k] for k in FILE_COUNTS} if kept else dict(read.get(url, {}))
        lost = dropped.get(url, 0)
        rows.append({"url": url, "size": f.size, "stamp": f.stamp, "sha256": row.get("sha256"),
                     "read": counts.get("read", 0), "accepted": counts.get("accepted", 0) - lost,
                     "quarantined": counts.get("quarantined", 0) + lost, "blank_lines": counts.get("blank_lines", 0),
                     "unread": kept})
    return pl.DataFrame(rows, schema=FILES_SCHEMA)


def counts_by_url(pieces: Iterable[tuple[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Counts summed per file (a file may be read in several pieces, and in several batches of one)."""
    out: dict[str, dict[str, int]] = {}
    for url, counts in pieces:
        into = out.setdefault(url, dict.fromkeys(FILE_COUNTS, 0))
        for k in FILE_COUNTS:
            into[k] += counts.get(k, 0)
    return out
