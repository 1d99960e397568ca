"""Read corpora, queries and relevance judgments from any fsspec URL.

Every input record is accounted for: it is either accepted into the documents table or written to the
quarantine table with a reason (read = accepted + quarantined). In strict mode the first bad record
raises InputError instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import polars as pl

from pipeline.config import CorpusConfig
from pipeline.corpus.pieces import InputFile, Piece, Span, describe_inputs, list_inputs, not_found, plan_pieces
from pipeline.corpus.records import (
    BLANK,
    fetched,
    jsonl_records,
    lone_surrogate,
    open_input,
    parquet_records,
    visible,
)
from pipeline.errors import InputError
from pipeline.redaction import redact

DOC_SCHEMA = {"doc_id": pl.String, "title": pl.String, "text": pl.String}
# position: the line (JSON Lines) or row (Parquet) number in its file, counted from the start of the span a piece
# read (the whole file unless a large JSON Lines file was cut into byte ranges: the run's pieces/<piece>/_SUCCESS
# records each range)
QUARANTINE_SCHEMA = {"source": pl.String, "position": pl.Int64, "doc_id": pl.String, "reason": pl.String,
                     "raw": pl.String, "piece": pl.Int32}
DUPLICATE = "duplicate id: an earlier record has the same id"  # in a piece here, across pieces by its shard
_RAW_CHARS = 500  # enough of a bad record to recognise it, not enough to bloat the table


@dataclass(frozen=True)
class ReadResult:
    docs: pl.DataFrame  # doc_id, title, text, the configured metadata fields (and source, position if asked)
    quarantine: pl.DataFrame  # source, position, doc_id, reason, raw, piece
    blank_lines: int = 0  # JSON Lines lines holding only whitespace: no record, but counted
    files: dict[str, dict[str, int]] = field(default_factory=dict)  # counts (as `counts`) by file (redacted url)

    @property
    def counts(self) -> dict[str, int]:
        """read = accepted + quarantined records; read + blank_lines = the lines of a JSON Lines input."""
        return {"read": self.docs.height + self.quarantine.height, "accepted": self.docs.height,
                "quarantined": self.quarantine.height, "blank_lines": self.blank_lines}


class _Collector:
    """Validates records one by one, keeping the first of each id and a reason for every reject."""

    def __init__(self, cfg: CorpusConfig, source: str, piece: int = 0, positions: bool = False) -> None:
        # the file a record came from, as stored with it (documents, quarantine, counts): without credentials
        self.cfg, self.source, self.piece, self.positions = cfg, redact(source), piece, positions
        self.seen: set[str] = set()
        self.docs: dict[str, list[Any]] = {k: [] for k in [*DOC_SCHEMA, *cfg.metadata_fields,
                                                            *(("source", "position") if positions else ())]}
        self.bad: dict[str, list[Any]] = {k: [] for k in QUARANTINE_SCHEMA}
        self.blank_lines = 0
        self.files: dict[str, Counter[str]] = {}  # counts by source since the last flush

    def count(self, *keys: str) -> None:
        counts = self.files.setdefault(self.source, Counter())
        counts.update(keys)

    def blank(self) -> None:
        self.blank_lines += 1
        self.count("blank_lines")

    def reject(self, position: int, reason: str, raw: Any, doc_id: str | None = None) -> None:
        if self.cfg.strict:
            where = f"{self.source} record {position}"
            raise InputError(f"{where}: {reason}" + (f" (id {doc_id!r})" if doc_id else ""))
        raw_text = raw if isinstance(raw, str) else repr(raw)
        self.count("read", "quarantined")
        for key, value in zip(QUARANTINE_SCHEMA, (self.source, position, doc_id, reason, raw_text[:_RAW_CHARS],
                                                  self.piece), strict=True):
            self.bad[key].append(value)

    def add(self, position: int, record: Any, raw: Any) -> None:
        cfg = self.cfg
        if not isinstance(record, dict):
            return self.reject(position, f"not an object: got {type(record).__name__}", raw)
        doc_id = record.get(cfg.id_field)
        if isinstance(doc_id, int) and not isinstance(doc_id, bool):
            doc_id = str(doc_id)  # BEIR ids are strings, but integer ids in JSON are common and unambiguous
        if not isinstance(doc_id, str) or not doc_id.strip():
            return self.reject(position, f"missing id: field {cfg.id_field!r} must be a non-empty string", raw)
        for name in (cfg.id_field, cfg.title_field, cfg.text_field, *cfg.metadata_fields):
            at = lone_surrogate(record.get(name))
            if at is not None:  # rejected, not repaired: a silently changed text would change its hash
                return self.reject(position, f"invalid Unicode: field {name!r} holds a lone surrogate (character "
                                   f"{at})", raw, doc_id.encode("utf-8", "backslashreplace").decode())
        for name in cfg.metadata_fields:  # one column per field: a list or object beside scalars has no type
            if isinstance(record.get(name), list | dict):
                return self.reject(position, f"bad metadata: field {name!r} must be a string, number, boolean or "
                                   f"null, not {'a list' if isinstance(record[name], list) else 'an object'}", raw,
                                   doc_id)
        title, text = record.get(cfg.title_field), record.get(cfg.text_field)
        title = "" if title is None else title  # not `or ""`: a title of 0, false or [] is a bad title
        if not isinstance(title, str):
            return self.reject(position, f"bad title: {cfg.title_field!r} must be a string", raw, doc_id)
        if text is not None and not isinstance(text, str):
            return self.reject(position, f"bad text: {cfg.text_field!r} must be a string", raw, doc_id)
        if not visible(text or ""):
            return self.reject(position, f"empty text: field {cfg.text_field!r} is missing, blank or holds only "
                               "invisible characters", raw, doc_id)
        if len(title) + len(text) > cfg.max_chars:
            return self.reject(position, f"too large: {len(title) + len(text)} chars > max_chars {cfg.max_chars}",
                               raw, doc_id)
        if doc_id in self.seen:
            return self.reject(position, DUPLICATE, raw, doc_id)
        self.seen.add(doc_id)
        self.count("read", "accepted")
        self.docs["doc_id"].append(doc_id)
        self.docs["title"].append(title)
        self.docs["text"].append(text)
        for name in self.cfg.metadata_fields:
            self.docs[name].append(record.get(name))
        if self.positions:  # where the record was: a later duplicate is reported there
            self.docs["source"].append(self.source)
            self.docs["position"].append(position)

    @property
    def pending(self) -> int:
        return len(self.docs["doc_id"]) + len(self.bad["reason"])

    def flush(self) -> ReadResult:
        """The records collected since the last flush; ids seen so far are kept for duplicate checks."""
        # Metadata types are inferred (a date string stays a string, a year an integer).
        result = ReadResult(pl.DataFrame(self.docs, schema_overrides=DOC_SCHEMA, strict=False),
                            pl.DataFrame(self.bad, schema=QUARANTINE_SCHEMA), self.blank_lines,
                            {url: dict(counts) for url, counts in self.files.items()})
        self.docs = {k: [] for k in self.docs}
        self.bad = {k: [] for k in self.bad}
        self.blank_lines = 0
        self.files = {}
        return result


def require_exists(url: str, field: str) -> None:
    try:
        fs, path = fsspec.core.url_to_fs(url)
        found = fs.exists(path)
    except (ImportError, ValueError, OSError) as exc:
        raise InputError(f"{field}: cannot reach {redact(url)}: {type(exc).__name__}") from None
    if not found:
        raise not_found(field, url)


def _beir_file(folder: str, *names: str) -> str:
    fs, path = fsspec.core.url_to_fs(folder)
    for name in names:
        if fs.exists(f"{path.rstrip('/')}/{name}"):
            return f"{folder.rstrip('/')}/{name}"
    raise InputError(f"corpus.source {redact(folder)} is a folder, read as a BEIR folder, but it has none of "
                     f"{list(names)}; for a folder of corpus files give a glob (for example "
                     f"{redact(folder.rstrip('/'))}/*.jsonl)")


def corpus_format(cfg: CorpusConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    src = cfg.source.lower().rstrip("/")
    if src.endswith(".parquet"):
        return "parquet"
    if any(src.endswith(s) for s in (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        return "jsonl"
    fs, path = fsspec.core.url_to_fs(cfg.source)
    if fs.isdir(path):
        return "beir"
    if not fs.exists(path):
        raise not_found("corpus.source", cfg.source)
    raise InputError(f"corpus.source {redact(cfg.source)}: cannot tell its format; expected a .jsonl[.gz] or "
                     ".parquet file, or a BEIR folder (or set corpus.format)")


def corpus_url(cfg: CorpusConfig) -> str:
    fmt = corpus_format(cfg)
    return _beir_file(cfg.source, "corpus.jsonl", "corpus.jsonl.gz") if fmt == "beir" else cfg.source


def span_records(cfg: CorpusConfig, span: Span, data: bytes | None = None
                 ) -> Iterator[tuple[int, Any, str | bytes, str | None]]:
    if span.format == "parquet":
        return parquet_records(span.url, cfg, range(span.start, span.end), span.first_row, data)
    return jsonl_records(span.url, span.start, span.end, data)


def iter_piece(cfg: CorpusConfig, piece: Piece, batch_records: int = 10_000,
               collector: _Collector | None = None) -> Iterator[ReadResult]:
    """A piece's records, file after file, in batches of about `batch_records` (at least one batch, maybe empty),
    validated; an id seen before in the piece (or by `collector`, when several pieces share one) is quarantined as
    a duplicate. Without a `collector` the documents carry their source and position. The files of a piece of
    several (small, whole files: pieces.py) are fetched ahead, side by side."""
    collector = collector or _Collector(cfg, piece.spans[0].url, positions=True)
    collector.piece = piece.index
    several = len(piece.spans) > 1
    for span, data in zip(piece.spans, fetched([s.url for s in piece.spans]) if several else [None], strict=True):
        collector.source = redact(span.url)
        for position, record, raw, error in span_records(cfg, span, data):
            if error:
                collector.reject(position, error, raw)
            elif record is BLANK:
                collector.blank()
            else:
                collector.add(position, record, raw)
            if collector.pending >= batch_records:
                yield collector.flush()
    yield collector.flush()


def list_corpus(cfg: CorpusConfig) -> list[InputFile]:
    """The corpus's files with their sizes, from one listing: whether it is there, and how big."""
    return list_inputs(corpus_url(cfg), "parquet" if corpus_format(cfg) == "parquet" else "jsonl")


def describe_corpus(cfg: CorpusConfig) -> list[InputFile]:
    """The corpus's files with their sizes and row groups: what planning its pieces needs."""
    return describe_inputs(corpus_url(cfg), "parquet" if corpus_format(cfg) == "parquet" else "jsonl")


def corpus_pieces(cfg: CorpusConfig, piece_bytes: int = 64 << 20, piece_files: int = 256) -> list[Piece]:
    return plan_pieces(describe_corpus(cfg), piece_bytes, piece_files)


def read_corpus(cfg: CorpusConfig) -> ReadResult:
    """The whole corpus in memory, every piece in order with one duplicate check: for small corpora and tests;
    the pipeline reads piece by piece on workers (pipeline/jobs/prepare.py)."""
    collector = _Collector(cfg, cfg.source)
    batches = [batch for piece in corpus_pieces(cfg) for batch in iter_piece(cfg, piece, collector=collector)]
    return ReadResult(pl.concat([b.docs for b in batches]), pl.concat([b.quarantine for b in batches]),
                      sum(b.blank_lines for b in batches))


def read_queries(url: str) -> dict[str, str]:
    """BEIR queries.jsonl: {"_id", "text"} per line. Bad lines fail: a golden set must be exact."""
    queries: dict[str, str] = {}
    for lineno, record, _raw, error in jsonl_records(url):
        if record is BLANK:
            continue
        if error or not isinstance(record, dict) or not isinstance(record.get("text"), str) \
                or record.get("_id") is None:
            raise InputError(f"{redact(url)} line {lineno}: expected {{'_id', 'text'}}, {error or 'got ' + _raw}")
        if lone_surrogate(record) is not None:
            raise InputError(f"{redact(url)} line {lineno}: invalid Unicode (a lone surrogate escape)")
        if not visible(record["text"]):  # it would score 0 in every mode, as serving refuses it
            raise InputError(f"{redact(url)} line {lineno}: query {record['_id']!r} has no text; expected some")
        qid = str(record["_id"])
        if queries.setdefault(qid, record["text"]) != record["text"]:
            raise InputError(f"{redact(url)} line {lineno}: query {qid!r} is given again with another text")
    return queries


def read_qrels(url: str) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV (query-id, corpus-id, score) with a header line; CRLF and a UTF-8 byte-order mark tolerated."""
    qrels: dict[str, dict[str, int]] = {}
    try:
        with open_input(url, "rt") as fh:
            for lineno, line in enumerate(fh, start=1):
                line = line.removeprefix("\ufeff") if lineno == 1 else line
                parts = line.strip().split("\t")
                if not line.strip() or (lineno == 1 and parts[0] == "query-id"):
                    continue
                if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
                    raise InputError(f"{redact(url)} line {lineno}: expected 'query-id<TAB>corpus-id<TAB>score'"
                                     f", got {line.strip()[:100]!r}")
                query, doc, score = parts[0], parts[1], int(parts[2])
                judged = qrels.setdefault(query, {})
                if judged.setdefault(doc, score) != score:
                    raise InputError(f"{redact(url)} line {lineno}: query {query!r} and document {doc!r} "
                                     f"are judged again with another score ({judged[doc]}, now {score})")
    except FileNotFoundError:
        raise InputError(f"qrels not found: {redact(url)}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{redact(url)}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return qrels


def golden_set_urls(corpus: CorpusConfig, queries: str | None, qrels: str | None) -> tuple[str, str] | None:
    """The evaluation files: explicit ones, else a BEIR corpus folder's own, else None (no evaluation)."""
    if queries and qrels:
        return queries, qrels
    if corpus_format(corpus) == "beir":
        return (queries or _beir_file(corpus.source, "queries.jsonl", "queries.jsonl.gz"),
                qrels or _beir_file(corpus.source, "qrels/test.tsv"))
    if queries or qrels:
        raise InputError("evaluation: set both queries and qrels, or neither")
    return None
