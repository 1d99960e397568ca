"""What a version records of its input, so that a later incremental reindex can leave unchanged files unread:

- files.parquet: one row per input file: its url (redacted), size and change stamp as listed, and its records by
  fate (read, accepted, quarantined, blank_lines; a record dropped as a later copy of an id counts as quarantined);
- documents.parquet: one row per accepted document: its bucket, the file and record it came from, its content hash
  (in bucket order, so a shard reads only its own range, as it does the id table).

A file is left unread when the live version lists it with the same size and change stamp and none of its records
was quarantined: a quarantined record's fate can turn on another file (the earlier copy of its id may have gone
with a change there), an accepted one's cannot, except by a new copy of its id in an earlier file, which the
shard that owns the id sees (pipeline/jobs/prepare.py). Its documents are then live's, and its counts live's.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from pipeline.corpus.pieces import InputFile
from pipeline.storage.keys import redact

FILE_COUNTS = ("read", "accepted", "quarantined", "blank_lines")
FILES_SCHEMA = {"url": pl.String, "size": pl.Int64, "stamp": pl.String} | dict.fromkeys(FILE_COUNTS, pl.Int64) | {
    "unread": pl.Boolean}  # left unread by this build: its counts and documents are those of the version before
DOCUMENTS_SCHEMA = {"doc_id": pl.String, "bucket": pl.UInt16, "source": pl.String, "position": pl.Int64,
                    "content_hash": pl.String}


def documents_of(docs: pl.DataFrame) -> pl.DataFrame:
    """documents.parquet rows of accepted documents (read with their source and position, hashed and bucketed)."""
    urls = {url: redact(url) for url in docs["source"].unique().to_list()}  # a piece's batch: one file
    return docs.select(pl.col("doc_id"), pl.col("bucket"), pl.col("source").replace_strict(urls),
                       pl.col("position"), pl.col("content_hash")).cast(DOCUMENTS_SCHEMA)


def unread_files(listed: list[InputFile], live: pl.DataFrame) -> pl.DataFrame:
    """The rows of `live`'s files table for the listed files to leave unread: listed with the size and change
    stamp live recorded (a file without a stamp is always read), none of their records quarantined."""
    stamped = [f for f in listed if f.stamp]
    now = pl.DataFrame({"url": [redact(f.url) for f in stamped], "size": [f.size for f in stamped],
                        "stamp": [f.stamp for f in stamped]}, schema={"url": pl.String, "size": pl.Int64,
                                                                      "stamp": pl.String})
    return live.filter(pl.col("quarantined") == 0).join(now, on=["url", "size", "stamp"], how="semi")


def files_table(listed: list[InputFile], read: dict[str, dict[str, int]], unread: pl.DataFrame,
                dropped: dict[str, int]) -> pl.DataFrame:
    """This build's files.parquet: each listed file's counts, from its read pieces (`read`, by url) or live's row
    (`unread`), less the records the shards dropped as later copies of an id (`dropped`, by redacted url)."""
    kept = {row["url"]: row for row in unread.iter_rows(named=True)}
    rows = []
    for f in listed:
        url = redact(f.url)
        counts = {k: kept[url][k] for k in FILE_COUNTS} if url in kept else dict(read.get(f.url, {}))
        lost = dropped.get(url, 0)
        rows.append({"url": url, "size": f.size, "stamp": f.stamp, "read": counts.get("read", 0),
                     "accepted": counts.get("accepted", 0) - lost, "quarantined": counts.get("quarantined", 0) + lost,
                     "blank_lines": counts.get("blank_lines", 0), "unread": url in kept})
    return pl.DataFrame(rows, schema=FILES_SCHEMA)


def counts_by_url(pieces: Iterable[tuple[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Read pieces' counts summed per file (a file may be read in several pieces)."""
    out: dict[str, dict[str, int]] = {}
    for url, counts in pieces:
        into = out.setdefault(url, dict.fromkeys(FILE_COUNTS, 0))
        for k in FILE_COUNTS:
            into[k] += counts.get(k, 0)
    return out
