"""A corpus glob on object storage (the S3 server on loopback) and on the filesystem: each listing sees the files as
they are then, so a later run in the same process finds what was added or changed since, and a plan of pieces has
every Parquet file's row groups in name order, small files read together."""

import io

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import CorpusConfig
from pipeline.corpus.files import FILES_SCHEMA, counts_by_url, file_sha256, files_table, to_hash, unread_files
from pipeline.corpus.pieces import InputFile, listing_digest
from pipeline.corpus.readers import corpus_pieces, iter_piece, list_corpus
from tests.conftest import write_elsewhere


def parquet(rows: int) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"_id": [f"d{r}" for r in range(rows)], "text": ["x"] * rows}), buf, row_group_size=10)
    return buf.getvalue()


def test_a_later_listing_sees_files_added_and_changed_since(storage_root):
    base = storage_root.rstrip("/") + "/corpus"
    first = b'{"_id": "1", "text": "x"}\n'
    write_elsewhere(f"{base}/a.jsonl", first)
    glob, single = CorpusConfig(source=f"{base}/*.jsonl"), CorpusConfig(source=f"{base}/a.jsonl")
    assert [f.size for f in list_corpus(glob)] == [len(first)] == [f.size for f in list_corpus(single)]

    longer = b'{"_id": "1", "text": "x, edited"}\n'
    write_elsewhere(f"{base}/a.jsonl", longer)
    write_elsewhere(f"{base}/b.jsonl", first)
    assert [(f.url.rsplit("/", 1)[1], f.size) for f in list_corpus(glob)] == [("a.jsonl", len(longer)),
                                                                              ("b.jsonl", len(first))]
    assert list_corpus(single)[0].size == len(longer)


def test_the_listing_digest_moves_with_any_write_and_only_then(storage_root):
    """What lets an unchanged corpus skip its read (pipeline/jobs/current.py): the digest of a listing stays while
    nothing is written, and moves when a file is added, removed, or rewritten, even to the same size."""
    base = storage_root.rstrip("/") + "/stamped"
    write_elsewhere(f"{base}/a.jsonl", b'{"_id": "1", "text": "x"}\n')
    write_elsewhere(f"{base}/b.jsonl", b'{"_id": "2", "text": "y"}\n')
    glob = CorpusConfig(source=f"{base}/*.jsonl")
    first = listing_digest(list_corpus(glob))
    assert first is not None and listing_digest(list_corpus(glob)) == first

    write_elsewhere(f"{base}/a.jsonl", b'{"_id": "1", "text": "z"}\n')  # the same size, another letter
    edited = listing_digest(list_corpus(glob))
    write_elsewhere(f"{base}/c.jsonl", b"")
    added = listing_digest(list_corpus(glob))
    write_elsewhere(f"{base}/c.jsonl", None)
    assert len({first, edited, added}) == 3 and listing_digest(list_corpus(glob)) == edited


def decide(listed: list[InputFile], live: pl.DataFrame) -> pl.DataFrame:
    """What a run decides of its files (pipeline/jobs/unread.py), hashing in this process."""
    return unread_files(listed, live, {f.url: file_sha256(f.url) for f in to_hash(listed, live)})


def unread_names(decided: pl.DataFrame) -> list[str]:
    return [u.rsplit("/", 1)[1] for u in decided.filter(pl.col("unread"))["url"]]


def test_a_reindex_would_leave_unread_exactly_the_files_whose_bytes_are_the_same(storage_root):
    """What a version's files table and a later listing decide (pipeline/corpus/files.py): on both backends a file
    written again with other bytes, even of the same size, is read; one written again with the same bytes, and the
    others, are left unread. Local files are hashed (their stamps are times); S3 objects are not (an ETag is the
    bytes' MD5)."""
    base = storage_root.rstrip("/") + "/unread"
    for name in ("a", "b", "c"):
        write_elsewhere(f"{base}/{name}.jsonl", f'{{"_id": "{name}", "text": "x"}}\n'.encode())
    glob = CorpusConfig(source=f"{base}/*.jsonl")
    listed = list_corpus(glob)
    first = decide(listed, pl.DataFrame(schema=FILES_SCHEMA))
    live = files_table(listed, {f.url: {"read": 1, "accepted": 1} for f in listed}, first, {})
    on_s3 = base.startswith("s3://")
    assert live["sha256"].null_count() == (3 if on_s3 else 0)
    assert unread_names(decide(list_corpus(glob), live)) == ["a.jsonl", "b.jsonl", "c.jsonl"]
    write_elsewhere(f"{base}/b.jsonl", b'{"_id": "b", "text": "y"}\n')  # the same size
    write_elsewhere(f"{base}/c.jsonl", b'{"_id": "c", "text": "x"}\n')  # the same bytes
    now = list_corpus(glob)
    assert [f.stamp == old for f, old in zip(now, live["stamp"], strict=True)] == [True, False, on_s3]
    assert unread_names(decide(now, live)) == ["a.jsonl", "c.jsonl"]


def test_a_parquet_glob_is_planned_from_every_footer_in_name_order(storage_root):
    base = storage_root.rstrip("/") + "/pq"
    for i, rows in enumerate([30, 10, 20]):
        write_elsewhere(f"{base}/part-{i}.parquet", parquet(rows))
    spans = [("part-0.parquet", 0, 3), ("part-1.parquet", 0, 1), ("part-2.parquet", 0, 2)]
    for piece_files, pieces in ((256, [spans]), (2, [spans[:2], spans[2:]])):  # small files share a piece
        planned = corpus_pieces(CorpusConfig(source=f"{base}/*.parquet"), piece_bytes=1 << 20, piece_files=piece_files)
        assert [[(s.url.rsplit("/", 1)[1], s.start, s.end) for s in p.spans] for p in planned] == pieces
    (together,) = corpus_pieces(CorpusConfig(source=f"{base}/*.parquet"), piece_bytes=1 << 20)
    counts = counts_by_url(i for batch in iter_piece(CorpusConfig(source=base), together) for i in batch.files.items())
    # each file's ids are d0, d1, ...: those of parts 1 and 2 are later copies of part 0's, found in the piece
    assert {url.rsplit("/", 1)[1]: (c["accepted"], c["quarantined"]) for url, c in counts.items()} == {
        "part-0.parquet": (30, 0), "part-1.parquet": (0, 10), "part-2.parquet": (0, 20)}
