"""Planning read pieces (pure) and reading one that holds several files."""

from pathlib import Path

import pytest

from pipeline.config import CorpusConfig
from pipeline.corpus.files import counts_by_url
from pipeline.corpus.pieces import InputFile, Span, plan_pieces
from pipeline.corpus.readers import iter_piece
from pipeline.errors import InputError
from tests.conftest import write_jsonl


def jsonl(name: str, size: int, compressed: bool = False) -> InputFile:
    return InputFile(f"/c/{name}", "jsonl", size, compressed)


def spans(pieces) -> list[list[tuple]]:
    return [[(s.url.removeprefix("/c/"), s.start, s.end) for s in p.spans] for p in pieces]


def test_small_files_share_pieces_up_to_the_bytes_and_files_allowed_and_a_large_file_is_cut_alone():
    files = [jsonl("a", 40), jsonl("b", 40), jsonl("c", 30), jsonl("d", 250), jsonl("e", 10), jsonl("f", 10),
             jsonl("g", 10), jsonl("h.gz", 300, compressed=True), jsonl("i", 100)]
    pieces = plan_pieces(files, piece_bytes=100, piece_files=2)
    assert spans(pieces) == [
        [("a", 0, None), ("b", 0, None)],  # c would pass 100 bytes
        [("c", 0, None)],  # d is cut: its ranges are pieces of their own
        [("d", 0, 100)], [("d", 100, 200)], [("d", 200, None)],
        [("e", 0, None), ("f", 0, None)],  # at most 2 files
        [("g", 0, None)],
        [("h.gz", 0, None)],  # compressed: read whole, and alone, being larger than a piece
        [("i", 0, None)],  # exactly a piece
    ]
    assert [p.index for p in pieces] == list(range(len(pieces)))
    assert spans(plan_pieces(files[:3], piece_bytes=1 << 20, piece_files=256)) == [
        [("a", 0, None), ("b", 0, None), ("c", 0, None)]]


def test_parquet_files_share_a_piece_when_read_whole_and_are_cut_at_row_groups_when_large():
    small = InputFile("/c/s.parquet", "parquet", 50, row_groups=((10, 40),))
    large = InputFile("/c/l.parquet", "parquet", 250, row_groups=((10, 90), (20, 40), (30, 50)))
    pieces = plan_pieces([small, small, large, small], piece_bytes=100, piece_files=8)
    assert [list(p.spans) for p in pieces] == [
        [Span("/c/s.parquet", "parquet", 0, 1), Span("/c/s.parquet", "parquet", 0, 1)],
        [Span("/c/l.parquet", "parquet", 0, 1, 0)], [Span("/c/l.parquet", "parquet", 1, 3, 10)],
        [Span("/c/s.parquet", "parquet", 0, 1)]]


def test_a_piece_of_several_files_counts_each_file_and_finds_a_duplicate_across_them(tmp_path):
    """Its files are fetched ahead (one compressed here) and read in order."""
    a = write_jsonl(tmp_path / "a.jsonl", [{"_id": "1", "text": "one"}, "", {"_id": "2", "text": "two"}])
    b = write_jsonl(tmp_path / "b.jsonl.gz", [{"_id": "3", "text": "three"}, {"_id": "1", "text": "again"}, "{bad"])
    files = [InputFile(str(p), "jsonl", p.stat().st_size, p.suffix == ".gz") for p in (a, b)]
    (piece,) = plan_pieces(files, piece_bytes=1 << 20, piece_files=8)
    batches = list(iter_piece(CorpusConfig(source=str(tmp_path / "*.jsonl*")), piece, batch_records=2))
    assert len(batches) > 2  # batches run across the files
    assert counts_by_url(item for batch in batches for item in batch.files.items()) == {
        str(a): {"read": 2, "accepted": 2, "quarantined": 0, "blank_lines": 1},
        str(b): {"read": 3, "accepted": 1, "quarantined": 2, "blank_lines": 0}}
    docs = [row for batch in batches for row in batch.docs.select("doc_id", "source", "position").rows()]
    assert docs == [("1", str(a), 1), ("2", str(a), 3), ("3", str(b), 1)]  # positions are lines of their file
    bad = [row for batch in batches for row in batch.quarantine.select("source", "position", "reason").rows()]
    assert [(s, p) for s, p, _ in bad] == [(str(b), 2), (str(b), 3)] and bad[0][2].startswith("duplicate id")


def test_credentials_in_a_url_reach_neither_the_piece_marker_nor_the_records():
    from pipeline.corpus.readers import _Collector

    url = "https://user:secret@host/c/a.jsonl"
    (piece,) = plan_pieces([InputFile(url, "jsonl", 10)], piece_bytes=1 << 20, piece_files=8)
    assert "secret" not in str(piece.to_dict()) and piece.spans[0].url == url  # read with them, recorded without
    collector = _Collector(CorpusConfig(source=url), url, positions=True)
    collector.add(1, {"_id": "1", "text": "one"}, "")
    collector.add(2, {"_id": "1", "text": "again"}, "")
    batch = collector.flush()
    assert batch.docs["source"].to_list() == batch.quarantine["source"].to_list() == ["https://***@host/c/a.jsonl"]
    assert list(batch.files) == ["https://***@host/c/a.jsonl"]


def test_a_file_gone_before_its_piece_is_read_is_named(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"_id": "1", "text": "one"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"_id": "2", "text": "two"}])
    (piece,) = plan_pieces([InputFile(str(p), "jsonl", p.stat().st_size) for p in (a, b)], 1 << 20, 8)
    b.unlink()
    with pytest.raises(InputError, match=r"corpus\.source: .*b\.jsonl was listed but is gone"):
        list(iter_piece(CorpusConfig(source=str(tmp_path / "*.jsonl")), piece))


def test_a_compressed_file_is_known_whatever_the_case_of_its_extension(tmp_path):
    """fsspec decompresses 'X.JSONL.GZ' as it does 'x.jsonl.gz': planned as byte ranges, each piece would have
    decompressed the file from its start."""
    import gzip

    from pipeline.corpus.pieces import list_inputs

    for name in ("a.jsonl.gz", "B.JSONL.GZ", "c.jsonl"):
        (tmp_path / name).write_bytes(gzip.compress(b'{"_id": "1", "text": "x"}\n') if name != "c.jsonl" else b"")
    found = {Path(f.url).name: f.compressed for f in list_inputs(str(tmp_path / "*"), "jsonl")}
    assert found == {"B.JSONL.GZ": True, "a.jsonl.gz": True, "c.jsonl": False}
