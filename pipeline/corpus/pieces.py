"""Read pieces: the units in which a corpus is read, planned before anything is read (in the spirit of
rom1504/embedding-reader). Each piece is read, validated and sharded by one worker:

- a JSON Lines file up to `piece_bytes` is read whole; a larger uncompressed one is cut into byte ranges, and a
  piece owns the lines that start inside its range (the reader skips to the first line start, and reads past
  its end to finish its last line);
- a compressed file (.gz) is read whole: it cannot be entered in the middle;
- a Parquet file is cut into runs of whole row groups of at most `piece_bytes` (compressed) each;
- consecutive files read whole go together into one piece, up to `piece_bytes` and `piece_files` files: a piece
  costs a task, a marker, a quarantine file and a docs part in each shard it touches, and a piece per file made a
  corpus of 2,000 files of 10 documents 11x slower to prepare than the same documents in 20 files.

`corpus.source` names one file, a BEIR folder (its corpus file), or a glob of files (`s3://b/corpus/*.jsonl.gz`);
pieces are numbered in file-name order, then position, which is the input order duplicates are resolved in.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Literal

import fsspec
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.redaction import redact

Format = Literal["jsonl", "parquet"]


@dataclass(frozen=True)
class InputFile:
    url: str
    format: Format
    size: int  # bytes on storage
    compressed: bool = False
    row_groups: tuple[tuple[int, int], ...] = ()  # Parquet: (rows, compressed bytes) of each row group
    stamp: str = ""  # what the listing says of its content (change_stamp); "" where it says nothing


def change_stamp(info: dict) -> str:
    """What a listing entry says of the file's content without reading it: an object store's entity tag (new
    whenever the object is written again), else a local file's modification and change times and inode (a write,
    or a rename onto the name, moves one of them); "" where the backend gives neither."""
    for key in ("ETag", "etag", "md5Hash", "generation"):
        if info.get(key):
            return f"{key} {info[key]}"
    if info.get("mtime") is not None and info.get("created") is not None:
        return f"mtime {info['mtime']!r} ctime {info['created']!r} inode {info.get('ino')}"
    return ""


def listing_digest(files: list[InputFile]) -> str | None:
    """sha256 of the files' names, sizes and change stamps, in order: while it stays the same, no file was added,
    removed or written. None where a file has no stamp (nothing can be told without reading it)."""
    if not files or not all(f.stamp for f in files):
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(json.dumps([f.url, f.size, f.stamp]).encode() + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class Span:
    """What a piece reads of one file: JSON Lines bytes [start, end) (end None: to the end of the file), or Parquet
    row groups [start, end), the first of which starts at the file's row `first_row`."""

    url: str
    format: Format
    start: int
    end: int | None
    first_row: int = 0  # Parquet: positions in the quarantine are the file's row numbers


@dataclass(frozen=True)
class Piece:
    index: int
    spans: tuple[Span, ...]  # a part of one file, or whole files, in input order

    def to_dict(self) -> dict:
        """As its marker records it (urls without credentials)."""
        return {"index": self.index, "spans": [asdict(s) | {"url": redact(s.url)} for s in self.spans]}


def file_spans(f: InputFile, piece_bytes: int) -> list[Span]:
    """One file's spans of at most about `piece_bytes` each (one: the whole file, where it fits or cannot be cut)."""
    if f.format == "parquet":
        spans, start, first_row, rows, size = [], 0, 0, 0, 0
        for i, (group_rows, group_bytes) in enumerate(f.row_groups):
            if i > start and size + group_bytes > piece_bytes:
                spans.append(Span(f.url, f.format, start, i, first_row))
                start, first_row, size = i, rows, 0
            rows, size = rows + group_rows, size + group_bytes
        return [*spans, Span(f.url, f.format, start, len(f.row_groups), first_row)]
    if f.compressed or f.size <= piece_bytes:
        return [Span(f.url, f.format, 0, None)]
    return [Span(f.url, f.format, start, start + piece_bytes if start + piece_bytes < f.size else None)
            for start in range(0, f.size, piece_bytes)]


def plan_pieces(files: list[InputFile], piece_bytes: int, piece_files: int) -> list[Piece]:
    """Pieces of at most about `piece_bytes` each, in input order: a large file's spans one per piece, consecutive
    small files together, at most `piece_files` of them (each is a request on object storage, read one after
    another). Pure: sizes and row groups are given."""
    pieces: list[Piece] = []
    together: list[Span] = []
    size = 0
    for f in files:
        spans = file_spans(f, piece_bytes)
        whole = len(spans) == 1 and f.size <= piece_bytes
        if together and (not whole or size + f.size > piece_bytes or len(together) >= piece_files):
            pieces.append(Piece(len(pieces), tuple(together)))
            together, size = [], 0
        if whole:
            together.append(spans[0])
            size += f.size
        else:
            for span in spans:
                pieces.append(Piece(len(pieces), (span,)))
    if together:
        pieces.append(Piece(len(pieces), tuple(together)))
    return pieces


def not_found(field: str, url: str) -> InputError:
    """The error for an input that is not there; a relative path says where it was looked for (the working
    directory, not the config's folder)."""
    if url.lower().startswith(("http://", "https://")):  # fsspec's HTTP check answers False when it cannot connect
        where = " or cannot be reached"
    elif "://" not in url and not os.path.isabs(url):
        where = f" (relative to the working directory {os.getcwd()})"
    else:
        where = ""
    return InputError(f"{field}: {redact(url)} does not exist{where}")


def list_inputs(source: str, fmt: Format) -> list[InputFile]:
    """The corpus files (one, or a glob's matches in name order) with their sizes, from one listing: what checking
    that they exist and sizing the run need. Row groups are left out (describe_inputs reads them)."""
    try:
        fs, path = fsspec.core.url_to_fs(source)
        # the corpus as it is now: s3fs would answer a second listing in this process (a later run) from its cache
        fs.invalidate_cache()
        is_glob = fsspec.core.has_magic(path)
        # a glob's listing carries each file's size: no request per file
        found = fs.glob(path, detail=True) if is_glob else {path: fs.info(path)}
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        files = []
        for p, info in sorted(found.items()):
            if info.get("type") == "directory":
                if not is_glob:
                    raise InputError(f"corpus.source: {redact(source)} is a folder; expected a file, a glob of "
                                     "files (folder/*.jsonl) or a BEIR folder (with corpus.jsonl)")
                continue
            url = p if protocol in ("file", "local") else f"{protocol}://{p}"
            files.append(InputFile(url if is_glob else source, fmt, int(info["size"]),
                                   p.lower().endswith((".gz", ".bz2", ".xz", ".zst")), stamp=change_stamp(info)))
        if not files:
            raise InputError(f"corpus.source: {redact(source)} matches no file")
    except FileNotFoundError:
        raise not_found("corpus.source", source) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"corpus.source: cannot read {redact(source)}: {type(exc).__name__}: {exc}") from None
    return files


def describe_inputs(source: str, fmt: Format, readers: int = 32) -> list[InputFile]:
    """list_inputs plus each Parquet file's row groups, what planning pieces needs. The footers are read
    `readers` at a time: one after another, each a request or two on object storage (~8 ms a file on a loopback
    S3 server, more against a remote one), they would add minutes to the plan of a corpus of thousands of files."""
    files = list_inputs(source, fmt)
    if fmt != "parquet":
        return files

    def with_row_groups(f: InputFile) -> InputFile:
        try:
            fs, path = fsspec.core.url_to_fs(f.url)
            with fs.open(path, "rb") as fh:
                meta = pq.ParquetFile(fh).metadata
        except (OSError, ValueError) as exc:
            raise InputError(f"corpus.source: cannot read {redact(f.url)}: {type(exc).__name__}: {exc}") from None
        groups = tuple((meta.row_group(i).num_rows, meta.row_group(i).total_byte_size)
                       for i in range(meta.num_row_groups))
        return replace(f, row_groups=groups)

    with ThreadPoolExecutor(max(1, min(readers, len(files)))) as pool:
        return list(pool.map(with_row_groups, files))
