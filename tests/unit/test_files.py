"""Which input files an incremental reindex may leave unread, and the files table a build records
(pipeline/corpus/files.py)."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.corpus.files import (
    FILES_SCHEMA,
    file_sha256,
    files_table,
    hash_batches,
    to_hash,
    unread_files,
    with_sha256,
)
from pipeline.corpus.pieces import InputFile
from pipeline.errors import InputError


def live_row(url: str, size: int = 10, stamp: str = "etag 1", quarantined: int = 0, sha256: str | None = None
             ) -> dict:
    return {"url": url, "size": size, "stamp": stamp, "sha256": sha256, "read": 5, "accepted": 5 - quarantined,
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
    assert to_hash(listed, live) == []  # an ETag names the content
    assert unread_files(listed, live, {})["url"].to_list() == ["s3://b/a.jsonl"]
    no_stamp = [InputFile("s3://b/a.jsonl", "jsonl", 10, stamp="")]  # the backend says nothing of its content
    assert unread_files(no_stamp, pl.DataFrame([live_row("s3://b/a.jsonl", stamp="")], schema=FILES_SCHEMA),
                        {}).is_empty()


def test_a_file_written_again_with_the_same_bytes_is_left_unread_by_its_sha256(tmp_path):
    files = {}
    for name, text in [("same", "x"), ("edited", "y"), ("touched", "z"), ("new", "n")]:
        (tmp_path / f"{name}.jsonl").write_text(text)
        files[name] = str(tmp_path / f"{name}.jsonl")
    digest = {name: file_sha256(url) for name, url in files.items()}
    live = pl.DataFrame([live_row(files["same"], 1, "mtime 1", sha256=digest["same"]),
                         live_row(files["edited"], 1, "mtime 1", sha256=file_sha256(files["same"])),
                         live_row(files["touched"], 1, "mtime 1", sha256=digest["touched"])], schema=FILES_SCHEMA)
    listed = [InputFile(files["same"], "jsonl", 1, stamp="mtime 1"),  # as live recorded it, its sha256 known
              InputFile(files["edited"], "jsonl", 1, stamp="mtime 2"),  # written again with other bytes
              InputFile(files["touched"], "jsonl", 1, stamp="mtime 2"),  # written again with the same bytes
              InputFile(files["new"], "jsonl", 1, stamp="mtime 2")]
    hashed = to_hash(listed, live)
    assert [f.url for f in hashed] == [files["edited"], files["touched"], files["new"]]
    decided = unread_files(listed, live, {f.url: file_sha256(f.url) for f in hashed})
    assert decided.select("url", "sha256", "unread").rows() == [
        (files["same"], digest["same"], True), (files["touched"], digest["touched"], True),
        (files["edited"], digest["edited"], False), (files["new"], digest["new"], False)]
    # the next version records every file's sha256, and the new stamps: the touched file is not hashed again
    table = files_table(listed, {f: {"read": 1, "accepted": 1} for f in (files["edited"], files["new"])}, decided, {})
    assert table["sha256"].to_list() == [digest[name] for name in ("same", "edited", "touched", "new")]
    assert to_hash(listed, table) == []


def test_a_stamp_that_stayed_put_through_a_write_loses_to_the_bytes(tmp_path):
    (tmp_path / "a.jsonl").write_text("new")  # copied over with its times kept
    url = str(tmp_path / "a.jsonl")
    live = pl.DataFrame([live_row(url, 3, "mtime 1", sha256="0" * 64)], schema=FILES_SCHEMA)
    listed = [InputFile(url, "jsonl", 3, stamp="mtime 1")]
    assert unread_files(listed, live, {url: file_sha256(url)}).filter(pl.col("unread")).is_empty()
    # a version recorded before files were hashed: its stamps decide, and every file is hashed once
    older = with_sha256(live.drop("sha256"))
    assert [f.url for f in to_hash(listed, older)] == [url]
    assert unread_files(listed, older, {})["unread"].to_list() == [True]


def test_the_files_table_counts_each_file_from_its_pieces_or_from_live_less_the_later_copies_dropped():
    listed = [InputFile("/c/a.jsonl", "jsonl", 10, stamp="s1"), InputFile("/c/b.jsonl", "jsonl", 20, stamp="s2")]
    decided = pl.DataFrame([live_row("/c/b.jsonl", size=20, stamp="s2") | {"unread": True}], schema=FILES_SCHEMA)
    read = {"/c/a.jsonl": {"read": 7, "accepted": 6, "quarantined": 1, "blank_lines": 2}}
    table = files_table(listed, read, decided, dropped={"/c/a.jsonl": 2, "/c/b.jsonl": 1})
    assert table.select("url", "read", "accepted", "quarantined", "blank_lines", "unread").rows() == [
        ("/c/a.jsonl", 7, 4, 3, 2, False), ("/c/b.jsonl", 5, 4, 1, 0, True)]


def test_credentials_in_a_url_never_reach_the_table():
    listed = [InputFile("https://user:secret@host/c/a.jsonl", "jsonl", 10, stamp="s1")]
    read = {"https://***@host/c/a.jsonl": {"read": 1, "accepted": 1}}  # pieces count files by redacted url
    table = files_table(listed, read, pl.DataFrame(schema=FILES_SCHEMA), {})
    assert "secret" not in table["url"][0] and table["read"][0] == 1


def test_a_file_gone_between_listing_and_hashing_is_named(tmp_path):
    with pytest.raises(InputError, match=r"corpus\.source: .*gone\.jsonl was listed but is gone"):
        file_sha256(str(tmp_path / "gone.jsonl"))


def test_files_are_hashed_in_batches_of_about_a_piece_in_listing_order():
    files = [InputFile(f"/c/{i}.jsonl", "jsonl", size) for i, size in enumerate([10, 30, 70, 5, 200, 1])]
    assert hash_batches(files, 100) == [["/c/0.jsonl", "/c/1.jsonl", "/c/2.jsonl"], ["/c/3.jsonl", "/c/4.jsonl"],
                                        ["/c/5.jsonl"]]
    assert hash_batches([], 100) == []
