import gzip
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import CorpusConfig
from pipeline.corpus.readers import golden_set_urls, read_corpus, read_qrels, read_queries
from pipeline.errors import InputError
from tests.conftest import SAMPLE, write_jsonl

GOOD = {"_id": "d1", "title": "T", "text": "body one"}


def reasons(result) -> dict[int, str]:
    return dict(zip(result.quarantine["position"].to_list(), result.quarantine["reason"].to_list(), strict=True))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ({"title": "no id", "text": "x"}, "missing id"),
        ({"_id": "", "text": "x"}, "missing id"),
        ({"_id": "d2", "title": "t"}, "empty text"),
        ({"_id": "d2", "text": "   \n"}, "empty text"),
        ({"_id": "d2", "title": "t", "text": "\u200b\ufeff\x00\u2060 "}, "empty text: field 'text' is missing, blank "
         "or holds only invisible characters"),  # tokenizers drop them: a chunk of no tokens, a junk vector
        ({"_id": "d2", "text": 42}, "bad text"),
        ({"_id": "d2", "title": ["t"], "text": "x"}, "bad title"),
        ({"_id": "d2", "title": 0, "text": "x"}, "bad title"),  # not read as no title
        ({"_id": "d2", "title": [], "text": "x"}, "bad title"),
        ('{"_id": "d2", "text": "unterminated', "invalid JSON"),
        ('{"_id": "d2", "text": "x", "n": ' + "9" * 5000 + "}", "unreadable JSON: Exceeds the limit (4300 digits)"),
        ('{"_id": "d2", "text": ' + "[" * 5000 + "]" * 5000 + "}", "unreadable JSON: maximum recursion depth"),
        ('["an", "array"]', "not an object"),
        ("null", "not an object: got NoneType"),  # a record, not a blank line
        ('{"_id": "d2", "text": "one", "text": "two"}', "key 'text' is given twice"),  # which text is it?
        ('{"_id": "d2", "text": "x", "m": {"a": 1, "a": 2}}', "key 'a' is given twice"),
        (b'{"_id": "d2", "text": "caf\xe9"}', "invalid UTF-8"),
        ({"_id": "d1", "text": "same id again"}, "duplicate id"),
        ({"_id": "d2", "text": "x" * 2000}, "too large"),
    ],
)
def test_each_bad_record_is_quarantined_with_its_reason(tmp_path, line, reason):
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD, line, {"_id": "d3", "text": "fine"}])
    result = read_corpus(CorpusConfig(source=str(path), max_chars=1000))
    assert result.docs["doc_id"].to_list() == ["d1", "d3"]
    assert list(reasons(result).keys()) == [2] and reasons(result)[2].startswith(reason)
    assert result.counts == {"read": 3, "accepted": 2, "quarantined": 1, "blank_lines": 0}


def test_metadata_must_be_scalars_a_list_or_object_is_quarantined(tmp_path):
    """Metadata fields become columns (a backfill filters on them): a list or object beside scalars would fail the
    batch's table or be stored as a made-up string."""
    rows = [{"_id": "d1", "text": "a", "year": 2020}, {"_id": "d2", "text": "b", "year": [2021]},
            {"_id": "d3", "text": "c", "year": {"a": 1}}, {"_id": "d4", "text": "d", "year": "2022"},
            {"_id": "d5", "text": "e"}]
    result = read_corpus(CorpusConfig(source=str(write_jsonl(tmp_path / "c.jsonl", rows)), metadata_fields=["year"]))
    assert result.docs.select("doc_id", "year").rows() == [("d1", "2020"), ("d4", "2022"), ("d5", None)]
    assert reasons(result) == {
        2: "bad metadata: field 'year' must be a string, number, boolean or null, not a list",
        3: "bad metadata: field 'year' must be a string, number, boolean or null, not an object"}


# JSON's \ud800 escape is valid JSON but no valid text: written raw so json.dumps does not touch it
SURROGATES = [
    ('{"_id": "b1", "text": "bad \\ud800 surrogate"}', "'text'"),
    ('{"_id": "b1", "title": "t \\udc00", "text": "ok"}', "'title'"),
    ('{"_id": "b1\\ud800", "text": "ok"}', "'_id'"),
    ('{"_id": "b1", "text": "ok", "origin": ["x", "\\udfff"]}', "'origin'"),
]


@pytest.mark.parametrize(("line", "field"), SURROGATES)
def test_lone_surrogates_are_quarantined_not_a_crash(tmp_path, line, field):
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD, line, {"_id": "d3", "text": "fine"}])
    cfg = CorpusConfig(source=str(path), metadata_fields=["origin"])
    result = read_corpus(cfg)
    assert result.docs["doc_id"].to_list() == ["d1", "d3"]
    assert reasons(result)[2].startswith(f"invalid Unicode: field {field} holds a lone surrogate")
    assert result.counts == {"read": 3, "accepted": 2, "quarantined": 1, "blank_lines": 0}
    with pytest.raises(InputError, match=rf"c\.jsonl record 2: invalid Unicode: field {field}"):
        read_corpus(cfg.model_copy(update={"strict": True}))


def _parquet_with_raw_strings(path, columns: dict[str, list[bytes | None]]) -> None:
    """A Parquet file whose string columns hold these bytes unchecked (pyarrow validates UTF-8 on cast, and
    real writers do not always)."""
    import numpy as np

    arrays = {}
    for name, values in columns.items():
        data = [v or b"" for v in values]
        offsets = np.cumsum([0] + [len(v) for v in data]).astype(np.int32)
        validity = pa.array([v is not None for v in values]).buffers()[1]
        arrays[name] = pa.Array.from_buffers(pa.string(), len(values), [validity, pa.py_buffer(offsets.tobytes()),
                                                                        pa.py_buffer(b"".join(data))])
    pq.write_table(pa.table(arrays), path)


@pytest.mark.parametrize("field", ["text", "title", "origin"])
def test_parquet_string_columns_with_invalid_utf8_are_quarantined(tmp_path, field):
    # b"\xed\xa0\x80" is a surrogate encoded as UTF-8 (CESU-8), which no UTF-8 decoder accepts
    columns = {"_id": [b"a", b"b", b"c"], "title": [b"", b"", b""], "text": [b"one", b"two", b"three"],
               "origin": [b"x", b"y", b"z"]}
    columns[field] = [columns[field][0], b"bad \xed\xa0\x80", columns[field][2]]
    _parquet_with_raw_strings(tmp_path / "c.parquet", columns)
    cfg = CorpusConfig(source=str(tmp_path / "c.parquet"), metadata_fields=["origin"])
    result = read_corpus(cfg)
    assert result.docs["doc_id"].to_list() == ["a", "c"]
    assert reasons(result) == {2: f"invalid UTF-8 in field {field!r}"}
    with pytest.raises(InputError, match=rf"c\.parquet record 2: invalid UTF-8 in field '{field}'"):
        read_corpus(cfg.model_copy(update={"strict": True}))


def test_blank_lines_are_counted_so_every_line_is_accounted_for(tmp_path):
    lines = ["", GOOD, "   ", {"_id": "d1", "text": "dup"}, "\t", GOOD | {"_id": "d4"}]
    path = write_jsonl(tmp_path / "c.jsonl", lines)
    result = read_corpus(CorpusConfig(source=str(path)))
    lines = len(path.read_bytes().splitlines())  # what `wc -l` counts
    assert result.counts == {"read": 3, "accepted": 2, "quarantined": 1, "blank_lines": 3}
    assert result.counts["read"] + result.counts["blank_lines"] == lines == 6


def test_strict_mode_fails_on_first_bad_record(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD, {"_id": "d1", "text": "dup"}])
    with pytest.raises(InputError, match=r"c\.jsonl record 2: duplicate id.*'d1'"):
        read_corpus(CorpusConfig(source=str(path), strict=True))


def test_gzip_jsonl_and_integer_ids(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl.gz", [{"_id": 7, "text": "seven"}, "", GOOD])
    result = read_corpus(CorpusConfig(source=str(path)))
    assert result.docs["doc_id"].to_list() == ["7", "d1"] and result.quarantine.height == 0


def test_utf8_byte_order_mark_is_tolerated(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert read_corpus(CorpusConfig(source=str(path))).docs["doc_id"].to_list() == ["d1"]


def test_file_url_and_custom_field_names(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "body": "text a", "name": "A"}])
    result = read_corpus(CorpusConfig(source=f"file://{path}", id_field="id", text_field="body", title_field="name"))
    assert result.docs.row(0) == ("a", "A", "text a")


def test_parquet_with_bad_rows(tmp_path):
    table = pa.table({"_id": ["a", None, "a", "b", "c"], "title": ["", "t", "t", "t", None],
                      "text": ["x", "y", "dup", "", "ok"]})
    pq.write_table(table, tmp_path / "c.parquet")
    result = read_corpus(CorpusConfig(source=str(tmp_path / "c.parquet")))
    assert result.docs["doc_id"].to_list() == ["a", "c"]
    assert [r.split(":")[0] for r in reasons(result).values()] == ["missing id", "duplicate id", "empty text"]


def test_parquet_binary_column_with_invalid_utf8(tmp_path):
    table = pa.table({"_id": ["a", "b"], "text": pa.array([b"fine", b"caf\xe9"], pa.binary())})
    pq.write_table(table, tmp_path / "c.parquet")
    result = read_corpus(CorpusConfig(source=str(tmp_path / "c.parquet")))
    assert result.docs["doc_id"].to_list() == ["a"] and reasons(result)[2].startswith("invalid UTF-8")


def test_parquet_missing_columns_is_a_clear_error(tmp_path):
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "c.parquet")
    with pytest.raises(InputError, match=r"expected columns '_id' and 'text', found \['id'\] \(corpus\.id_field and "
                                         r"corpus\.text_field name them\)"):
        read_corpus(CorpusConfig(source=str(tmp_path / "c.parquet")))
    # Parquet allows two columns of one name; which one is the text? (pyarrow would hand over the last)
    twice = pa.Table.from_arrays([pa.array(["d1"]), pa.array(["a"]), pa.array(["b"])], names=["_id", "text", "text"])
    pq.write_table(twice, tmp_path / "twice.parquet")
    with pytest.raises(InputError, match=r"column 'text' appears more than once"):
        read_corpus(CorpusConfig(source=str(tmp_path / "twice.parquet")))


def test_beir_folder_reads_corpus_queries_and_qrels():
    cfg = CorpusConfig(source=str(SAMPLE))
    result = read_corpus(cfg)
    assert result.counts == {"read": 500, "accepted": 500, "quarantined": 0, "blank_lines": 0}
    queries_url, qrels_url = golden_set_urls(cfg, None, None)
    queries, qrels = read_queries(queries_url), read_qrels(qrels_url)
    assert len(queries) == 50 and sum(len(v) for v in qrels.values()) == 60
    assert set(qrels) <= set(queries) and qrels["1"] == {"31715818": 1}


def test_qrels_accept_a_byte_order_mark_and_name_a_file_that_is_not_utf8(tmp_path):
    from pipeline.corpus.readers import read_qrels
    from pipeline.errors import InputError

    for header in ("query-id\tcorpus-id\tscore\n", ""):  # the mark before the header, or before the first judgment
        (tmp_path / "q.tsv").write_bytes(("\ufeff" + header + "1\td1\t1\n").encode())
        assert read_qrels(str(tmp_path / "q.tsv")) == {"1": {"d1": 1}}
    (tmp_path / "q.tsv").write_bytes(b"query-id\tcorpus-id\tscore\n1\td\xff\t1\n")
    with pytest.raises(InputError, match=r"q\.tsv: not UTF-8 text"):
        read_qrels(str(tmp_path / "q.tsv"))


def test_qrels_accept_crlf(tmp_path):
    (tmp_path / "q.tsv").write_bytes(b"query-id\tcorpus-id\tscore\r\n1\tdocA\t1\r\n1\tdocB\t2\r\n")
    assert read_qrels(str(tmp_path / "q.tsv")) == {"1": {"docA": 1, "docB": 2}}
    (tmp_path / "bad.tsv").write_text("query-id\tcorpus-id\tscore\n1 docA 1\n")
    with pytest.raises(InputError, match="line 2: expected 'query-id<TAB>corpus-id<TAB>score'"):
        read_qrels(str(tmp_path / "bad.tsv"))


def test_a_golden_set_that_contradicts_itself_fails_naming_the_line(tmp_path):
    """The golden set must be exact: a query id given twice with two texts, or a pair judged twice with two scores,
    would otherwise be read as whichever came last. The same line repeated is harmless and read once."""
    (tmp_path / "q.tsv").write_text("query-id\tcorpus-id\tscore\n1\tdocA\t1\n1\tdocA\t1\n1\tdocA\t0\n")
    with pytest.raises(InputError, match=r"line 4: query '1' and document 'docA' are judged again .*\(1, now 0\)"):
        read_qrels(str(tmp_path / "q.tsv"))
    path = write_jsonl(tmp_path / "queries.jsonl", [{"_id": "1", "text": "a"}, {"_id": "1", "text": "a"},
                                                    {"_id": 1, "text": "b"}])
    with pytest.raises(InputError, match=r"line 3: query '1' is given again with another text"):
        read_queries(str(path))
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"_id": "1", "text": "a"}, {"_id": "2", "text": "  "}])
    with pytest.raises(InputError, match=r"line 2: query '2' has no text; expected some"):
        read_queries(str(blank))  # it scored 0 in every mode (a static model's vector of nothing was NaN)


def test_missing_and_corrupt_inputs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="corpus.source: .*nope.jsonl does not exist"):
        read_corpus(CorpusConfig(source=str(tmp_path / "nope.jsonl")))
    with pytest.raises(InputError, match=r"corpus.source: http://127\.0\.0\.1:9/c\.jsonl does not exist or cannot be "
                                         "reached"):  # nothing listens on port 9
        read_corpus(CorpusConfig(source="http://127.0.0.1:9/c.jsonl"))
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match=r"cannot read .*bad\.jsonl\.gz"):
        read_corpus(CorpusConfig(source=str(tmp_path / "bad.jsonl.gz")))
    body = bytearray(gzip.compress(b"".join(b'{"_id": "%d", "text": "doc %d"}\n' % (i, i) for i in range(500))))
    body[20:220] = bytes(range(200))  # a damaged deflate stream: zlib's own error, not an OSError
    (tmp_path / "damaged.jsonl.gz").write_bytes(bytes(body))
    with pytest.raises(InputError, match=r"cannot read .*damaged\.jsonl\.gz: Error -3 while decompressing"):
        read_corpus(CorpusConfig(source=str(tmp_path / "damaged.jsonl.gz")))
    files = tmp_path / "files"  # a folder of corpus files, not a BEIR folder: the error shows the glob to give
    files.mkdir()
    write_jsonl(files / "part-0.jsonl", [{"_id": "a", "text": "x"}])
    with pytest.raises(InputError, match=r"files is a folder, read as a BEIR folder, but it has none of "
                                         r"\['corpus\.jsonl', 'corpus\.jsonl\.gz'\]; .*give a glob .*files/\*\.jsonl"):
        read_corpus(CorpusConfig(source=str(files)))
    assert read_corpus(CorpusConfig(source=str(files / "*.jsonl"))).docs["doc_id"].to_list() == ["a"]
    (tmp_path / "unknown.txt").write_text("x")
    with pytest.raises(InputError, match="cannot tell its format"):
        read_corpus(CorpusConfig(source=str(tmp_path / "unknown.txt")))


def test_quarantine_keeps_a_readable_excerpt(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", ['{"_id": "x", "text": ' + '"a' * 1000])
    q = read_corpus(CorpusConfig(source=str(path))).quarantine
    assert q.schema["raw"] == pl.String and 0 < len(q["raw"][0]) <= 500
    assert json.dumps(q.to_dicts())  # the table serialises as-is to parquet/json


def test_a_parquet_glob_is_listed_without_opening_files_and_planned_reading_each_footer_once(tmp_path, monkeypatch):
    """Checking the inputs and sizing the run take the listing alone; only planning the pieces reads the footers,
    side by side (five looks reading every footer one after another had cost a CLI build 27 ms a file on a loopback
    S3 server: benchmarks/corpus_planning.py)."""
    import pipeline.corpus.pieces as pieces_module
    from pipeline.corpus.readers import describe_corpus, list_corpus

    for i in range(40):  # 1 to 4 row groups each, named so that name order differs from write order
        rows = 10 * (i % 4 + 1)
        pq.write_table(pa.table({"_id": [f"d{i}-{r}" for r in range(rows)], "text": ["x"] * rows}),
                       tmp_path / f"part-{39 - i:02d}.parquet", row_group_size=10)
    cfg = CorpusConfig(source=str(tmp_path / "*.parquet"))
    opened = []
    real = pq.ParquetFile
    monkeypatch.setattr(pieces_module.pq, "ParquetFile", lambda fh: opened.append(fh) or real(fh))

    listed = list_corpus(cfg)
    assert not opened
    assert [f.url for f in listed] == [str(tmp_path / f"part-{i:02d}.parquet") for i in range(40)]
    assert [f.size for f in listed] == [(tmp_path / f"part-{i:02d}.parquet").stat().st_size for i in range(40)]
    assert all(f.row_groups == () for f in listed)

    described = describe_corpus(cfg)
    assert len(opened) == 40
    assert [f.url for f in described] == [f.url for f in listed]  # name order kept through the parallel reads
    assert [len(f.row_groups) for f in described] == [(39 - i) % 4 + 1 for i in range(40)]
    assert [sum(rows for rows, _ in f.row_groups) for f in described] == [10 * ((39 - i) % 4 + 1) for i in range(40)]

    (tmp_path / "part-05.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"corpus\.source: cannot read .*part-05\.parquet"):
        describe_corpus(cfg)


def test_a_folder_that_is_not_a_beir_folder_and_an_empty_glob_are_clear_errors(tmp_path):
    from pipeline.corpus.readers import list_corpus

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.jsonl").write_text('{"_id": "1", "text": "x"}\n')
    with pytest.raises(InputError, match=r"docs is a folder; expected a file, a glob of files"):
        list_corpus(CorpusConfig(source=str(tmp_path / "docs"), format="jsonl"))
    assert [f.url for f in list_corpus(CorpusConfig(source=str(tmp_path / "docs" / "*.jsonl")))] == \
        [str(tmp_path / "docs" / "a.jsonl")]
    with pytest.raises(InputError, match=r"corpus\.source: .*docs/\*\.parquet matches no file"):
        list_corpus(CorpusConfig(source=str(tmp_path / "docs" / "*.parquet")))
    with pytest.raises(InputError, match=r"corpus\.source: .*/\* matches no file"):
        list_corpus(CorpusConfig(source=str(tmp_path / "*"), format="jsonl"))  # matches the folder docs only
