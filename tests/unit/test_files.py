"""Which input files an incremental reindex may leave unread, and the files table a build records
(pipeline/corpus/files.py)."""

from __future__ import annotations

import polars as pl

from pipeline.corpus.files import FILES_SCHEMA, files_table, unread_files
from pipeline.corpus.pieces import InputFile


def live_row(url: str, size: int = 10, stamp: str = "etag 1", quarantined: int = 0) -> dict:
    return {"url": url, "size": size, "stamp": stamp, "read": 5, "accepted": 5 - quarantined,
            "quarantined": quarantined, "blank_lines": 0, "unread": False}


def test_only_files_listed_as_live_recorded_them_with_no_quarantined_record_are_left_unread():
    live = pl.DataFrame([live_row("s3://b/a.jsonl"), live_row("s3://b/b.jsonl"), live_row("s3://b/c.jsonl"),
                         live_row("s3://b/d.jsonl", quarantined=1), live_row("s3://b/gone.jsonl")],
                        schema=FILES_SCHEMA)
    listed = [InputFile("s3://b/a.jsonl", "jsonl", 10, stamp="etag 1"),  # as live recorded it
              InputFile("s3://b/b.jsonl", "jsonl", 11, stamp="etag 1"),  # another size
              InputFile("s3://b/c.jsonl", "jsonl", 10, stamp="etag 2"),  # written again
              InputFile("s3://b/d.jsonl", "jsonl", 10, stamp="etag 1"),  # a record of it was quarantined
              InputFile("s3://b/e.jsonl", "jsonl", 10, stamp="etag 1")]  # new
    assert unread_files(listed, live)["url"].to_list() == ["s3://b/a.jsonl"]
    no_stamp = [InputFile("s3://b/a.jsonl", "jsonl", 10, stamp="")]  # the backend says nothing of its content
    assert unread_files(no_stamp, pl.DataFrame([live_row("s3://b/a.jsonl", stamp="")], schema=FILES_SCHEMA)).is_empty()


def test_the_files_table_counts_each_file_from_its_pieces_or_from_live_less_the_later_copies_dropped():
    listed = [InputFile("/c/a.jsonl", "jsonl", 10, stamp="s1"), InputFile("/c/b.jsonl", "jsonl", 20, stamp="s2")]
    unread = pl.DataFrame([live_row("/c/b.jsonl", size=20, stamp="s2")], schema=FILES_SCHEMA)
    read = {"/c/a.jsonl": {"read": 7, "accepted": 6, "quarantined": 1, "blank_lines": 2}}
    table = files_table(listed, read, unread, dropped={"/c/a.jsonl": 2, "/c/b.jsonl": 1})
    assert table.select("url", "read", "accepted", "quarantined", "blank_lines", "unread").rows() == [
        ("/c/a.jsonl", 7, 4, 3, 2, False), ("/c/b.jsonl", 5, 4, 1, 0, True)]


def test_credentials_in_a_url_never_reach_the_table():
    listed = [InputFile("https://user:secret@host/c/a.jsonl", "jsonl", 10, stamp="s1")]
    table = files_table(listed, {listed[0].url: {"read": 1, "accepted": 1}}, pl.DataFrame(schema=FILES_SCHEMA), {})
    assert "secret" not in table["url"][0] and table["read"][0] == 1
