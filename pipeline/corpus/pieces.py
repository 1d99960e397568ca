"""Read pieces: the units in which a corpus is read, planned before anything is read (in the spirit of
rom1504/embedding-reader). Each piece is read, validated and sharded by one worker:

- a JSON Lines file up to `piece_bytes` is one piece; a larger uncompressed one is cut into byte ranges, and a
  piece owns the lines that start inside its range (the reader skips to the first line start, and reads past
  its end to finish its last line);
- a compressed file (.gz) is one piece: it cannot be entered in the middle;
- a Parquet file is cut into runs of whole row groups of at most `piece_bytes` (compressed) each.

`corpus.source` names one file, a BEIR folder (its corpus file), or a glob of files (`s3://b/corpus/*.jsonl.gz`);
pieces are numbered in file-name order, then position, which is the input order duplicates are resolved in.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Literal

import fsspec
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.storage.keys import redact

Format = Literal["jsonl", "parquet"]


@dataclass(frozen=True)
class InputFile:
    url: str
    format: Format
    size: int  # bytes on storage
    compressed: bool = False
    row_groups: tuple[tuple[int, int], ...] = ()  # Parquet: (rows, compressed bytes) of each row group


@dataclass(frozen=True)
class Piece:
    index: int
    url: str
    format: Format
    start: int  # JSON Lines: first byte; Parquet: first row group
    end: int | None  # JSON Lines: end byte (exclusive), None = to the end; Parquet: row group end (exclusive)
    first_row: int = 0  # Parquet: the file's row number of the piece's first row (positions in the quarantine)

    def to_dict(self) -> dict:
        return asdict(self)


def plan_pieces(files: list[InputFile], piece_bytes: int) -> list[Piece]:
    """Pieces of at most about `piece_bytes` each, in input order (pure: sizes and row groups are given)."""
    pieces: list[Piece] = []

    def add(f: InputFile, start: int, end: int | None, first_row: int = 0) -> None:
        pieces.append(Piece(len(pieces), f.url, f.format, start, end, first_row))

    for f in files:
        if f.format == "parquet":
            start = first_row = rows = size = 0
            for i, (group_rows, group_bytes) in enumerate(f.row_groups):
                if i > start and size + group_bytes > piece_bytes:
                    add(f, start, i, first_row)
                    start, first_row, size = i, rows, 0
                rows, size = rows + group_rows, size + group_bytes
            add(f, start, len(f.row_groups), first_row)
        elif f.compressed or f.size <= piece_bytes:
            add(f, 0, None)
        else:
            for start in range(0, f.size, piece_bytes):
                add(f, start, start + piece_bytes if start + piece_bytes < f.size else None)
    return pieces


def not_found(field: str, url: str) -> InputError:
    """The error for an input that is not there; a relative path says where it was looked for (the working
    directory, not the config's folder)."""
    where = f" (relative to the working directory {os.getcwd()})" if "://" not in url and not os.path.isabs(url) else ""
    return InputError(f"{field}: {redact(url)} does not exist{where}")


def describe_inputs(source: str, fmt: Format) -> list[InputFile]:
    """The corpus files (one, or a glob's matches in name order) with what planning needs: sizes, row groups."""
    try:
        fs, path = fsspec.core.url_to_fs(source)
        paths = sorted(fs.glob(path)) if fsspec.core.has_magic(path) else [path]
        if not paths:
            raise InputError(f"corpus.source: {redact(source)} matches no file")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        files = []
        for p in paths:
            url = p if protocol in ("file", "local") else f"{protocol}://{p}"
            size = int(fs.size(p))
            compressed = p.endswith((".gz", ".bz2", ".xz", ".zst"))
            groups: tuple[tuple[int, int], ...] = ()
            if fmt == "parquet":
                with fs.open(p, "rb") as fh:
                    meta = pq.ParquetFile(fh).metadata
                    groups = tuple((meta.row_group(i).num_rows, meta.row_group(i).total_byte_size)
                                   for i in range(meta.num_row_groups))
            files.append(InputFile(url if fsspec.core.has_magic(path) else source, fmt, size, compressed, groups))
    except FileNotFoundError:
        raise not_found("corpus.source", source) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"corpus.source: cannot read {redact(source)}: {type(exc).__name__}: {exc}") from None
    return files
