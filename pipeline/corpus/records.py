"""A corpus file as raw records: JSON Lines (a whole file or a byte range of it) or Parquet (runs of row groups)
turned into (position, parsed record or None, raw text, error reason or None), before any field is checked
(pipeline/corpus/readers.py validates them). Nothing here raises for a bad record: its reason travels with it."""

from __future__ import annotations

import io
import json
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.compression import compr
from fsspec.utils import infer_compression

from pipeline.config import CorpusConfig
from pipeline.errors import InputError
from pipeline.redaction import redact

BLANK = object()  # what a JSON Lines reader yields for a line of whitespace: counted, not a record


def visible(text: str) -> bool:
    """Whether `text` has a character a model reads: not only whitespace, controls (NUL), format characters (a
    zero-width space, a BOM) or unassigned code points, which `str.strip` keeps and tokenizers drop."""
    return any(ch.isprintable() and not ch.isspace() for ch in text)


def lone_surrogate(value: Any) -> int | None:
    """Where the first lone surrogate of a string (or of the strings nested in a list or dict) is. JSON's
    "\\ud800" escape decodes to one: valid JSON, not valid Unicode, and no UTF-8 writer accepts it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return exc.start
        return None
    if isinstance(value, dict | list):
        items = value.values() if isinstance(value, dict) else value
        return next((at for at in map(lone_surrogate, items) if at is not None), None)
    return None


def open_input(url: str, mode: str = "rb", data: bytes | None = None):
    """The file at `url`, decompressed as its name says; `data`: its bytes, fetched already (binary mode)."""
    if data is not None:
        compression = infer_compression(url)
        return compr[compression](io.BytesIO(data), mode="rb") if compression else io.BytesIO(data)
    try:
        return fsspec.open(url, mode, compression="infer")
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open {redact(url)}: {exc}") from None


FETCH_AHEAD = 16  # requests in flight while a piece's small files are read


def unreadable(url: str, exc: Exception) -> InputError:
    """The error for a listed corpus file that cannot be read: gone since the listing, or failing."""
    if isinstance(exc, FileNotFoundError):
        return InputError(f"corpus.source: {redact(url)} was listed but is gone; expected the files to stay put "
                          "while a run reads them")
    return InputError(f"corpus.source: cannot read {redact(url)}: {type(exc).__name__}: {exc}")


def fetched(urls: list[str], ahead: int | None = None) -> Iterator[bytes]:
    """Each file's bytes, in order, with up to `ahead` (FETCH_AHEAD) requests in flight: a piece of many small files
    on object storage would otherwise wait out each request's latency in turn (such a piece holds at most
    run.piece_bytes, so neither do the files fetched ahead)."""
    def fetch(url: str) -> bytes:
        try:
            fs, path = fsspec.core.url_to_fs(url)
            return fs.cat_file(path)
        except (OSError, ValueError) as exc:
            raise unreadable(url, exc) from None

    ahead = ahead or FETCH_AHEAD
    with ThreadPoolExecutor(max(1, min(ahead, len(urls)))) as pool:
        pending: deque = deque()
        for url in urls:
            pending.append(pool.submit(fetch, url))
            if len(pending) == ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class RepeatedKey(ValueError):
    pass


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: a key given twice in one object makes the record ambiguous (json keeps the last, other
    tools the first), so the record is quarantined rather than read one way here and another way upstream."""
    obj = dict(pairs)
    if len(obj) != len(pairs):  # rare: find which key
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RepeatedKey(key)
            seen.add(key)
    return obj


def jsonl_records(url: str, start: int = 0, end: int | None = None, data: bytes | None = None
                   ) -> Iterator[tuple[int, Any, str | bytes, str | None]]:
    """Yields (line number, parsed record or None, raw line, error reason or None) of the lines that start in
    bytes [start, end) (line numbers count from the range's first line); a blank line yields (line number,
    BLANK, "", None): no record, but counted (a `null` line is a record, and not an object). `data`: the file's
    bytes where they were fetched already."""
    try:
        with open_input(url, data=data) as fh:
            if start:  # a line belongs to the range it starts in: finish the one that starts before ours
                fh.seek(start - 1)
                if fh.read(1) != b"\n":
                    fh.readline()
            offset = fh.tell() if start else 0
            for lineno, line in enumerate(fh, start=1):
                if end is not None and offset >= end:
                    break
                offset += len(line)
                if not line.strip():
                    yield lineno, BLANK, "", None
                    continue
                try:
                    text = line.decode("utf-8-sig" if lineno == 1 and not start else "utf-8")  # a byte-order mark
                except UnicodeDecodeError as exc:
                    yield lineno, None, line, f"invalid UTF-8 at byte {exc.start}"
                    continue
                text = text.rstrip("\r\n")  # so an error at the line's end is placed there, not on "line 2"
                try:
                    yield lineno, json.loads(text, object_pairs_hook=unique_keys), text, None
                except json.JSONDecodeError as exc:
                    yield lineno, None, text, f"invalid JSON: {exc.msg} at column {exc.colno}"
                except RepeatedKey as exc:
                    yield lineno, None, text, f"key {exc.args[0]!r} is given twice in one object"
                except (ValueError, RecursionError) as exc:  # a number past 4,300 digits, arrays nested too deep
                    yield lineno, None, text, f"unreadable JSON: {str(exc)[:100]}"
    except FileNotFoundError:
        raise InputError(f"input not found: {redact(url)} (expected a JSON Lines file)") from None
    except (OSError, EOFError, zlib.error) as exc:  # a truncated or non-gzip '.gz', or a corrupt one
        raise InputError(f"cannot read {redact(url)}: {exc}") from None


def parquet_records(url: str, cfg: CorpusConfig, row_groups: range | None = None, first_row: int = 0,
                    data: bytes | None = None) -> Iterator[tuple[int, Any, str | bytes, str | None]]:
    """Like jsonl_records, for the rows of `row_groups` (default all); positions are the file's row numbers."""
    try:
        with open_input(url, data=data) as fh:
            pf = pq.ParquetFile(fh)
            names = set(pf.schema_arrow.names)
            if cfg.id_field not in names or cfg.text_field not in names:
                raise InputError(f"{redact(url)}: expected columns {cfg.id_field!r} and {cfg.text_field!r}, "
                                 f"found {sorted(names)} (corpus.id_field and corpus.text_field name them)")
            columns = [c for c in (cfg.id_field, cfg.title_field, cfg.text_field, *cfg.metadata_fields) if c in names]
            if twice := [c for c in columns if pf.schema_arrow.names.count(c) > 1]:  # pyarrow would read the last
                raise InputError(f"{redact(url)}: column {twice[0]!r} appears more than once; expected one per field")
            groups = list(row_groups if row_groups is not None else range(pf.num_row_groups))
            position = first_row
            for batch in pf.iter_batches(columns=columns, batch_size=4096, row_groups=groups):
                # Strings as bytes, decoded value by value below: pyarrow does not validate a string column's
                # UTF-8 when reading, and one bad value would fail the whole batch's conversion.
                for row in _as_bytes(batch).to_pylist():
                    position += 1
                    bad = next((f"invalid UTF-8 in field {k!r}" for k, v in row.items()
                                if isinstance(v, bytes) and not _is_utf8(v)), None)
                    if bad:
                        yield position, None, repr(row), bad
                        continue
                    row = {k: v.decode() if isinstance(v, bytes) else v for k, v in row.items()}
                    yield position, row, json.dumps(row, default=repr), None
    except FileNotFoundError:
        raise InputError(f"input not found: {redact(url)} (expected a Parquet file)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {redact(url)} as Parquet: {exc}") from None


def _as_bytes(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with its string columns viewed as binary (no copy, no UTF-8 validation)."""
    schema = pa.schema([f.with_type(pa.binary() if pa.types.is_string(f.type) else
                                    pa.large_binary() if pa.types.is_large_string(f.type) else f.type)
                        for f in batch.schema])
    return batch.cast(schema)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
