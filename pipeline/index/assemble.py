"""One snapshot file from per-shard files, without holding the whole in memory.

- Flat indexes (exact, fp16, int8, binary) keep their rows in order, and a FAISS flat file is a header (which
  holds the row count), the byte count of the codes, then the codes. Shard files of one trained index differ only
  in those two numbers and their codes, so the snapshot file is the header with the totals, then each shard's
  codes in row order: the bytes `faiss.write_index` gives for the whole index (tests/unit/test_assemble.py).
- IVF indexes carry their row ids, so shard files merge list by list into inverted lists on disk (faiss.contrib's
  merge_ondisk: `OnDiskInvertedLists`); the index file names its `.ivfdata` file by base name, so readers pass
  `faiss.IO_FLAG_ONDISK_SAME_DIR` to find it beside the index file, wherever it was copied.
- The fp16 rescoring store is one .npy (a header, then the rows), the id table one Parquet file (a row group per
  shard part, with statistics, so a reader can fetch only some buckets' rows).
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pipeline.index.faiss_ops import from_bytes, ivf_of, native_stdout_silenced, to_bytes

_COPY = 8 << 20  # bytes copied at a time


def _flat_layout(empty: bytes, binary: bool) -> tuple[int, int, int, int]:
    """(offset of the row count, offset of the code count, code-count units per row, bytes per row) of a flat
    index's file."""
    index = from_bytes(empty, binary)
    index.add(np.zeros((1, index.d // 8 if binary else index.d), dtype=np.uint8 if binary else np.float32))
    one = to_bytes(index)
    ntotal_at = next(i for i, (a, b) in enumerate(zip(empty, one, strict=False)) if a != b)
    count_at = len(empty) - 8  # the code count sits last in an empty index's file
    return ntotal_at, count_at, struct.unpack_from("<Q", one, count_at)[0], len(one) - len(empty)


def flat_row_bytes(empty: bytes, binary: bool) -> int:
    return _flat_layout(empty, binary)[3]


def flat_header(empty: bytes, binary: bool, rows: int) -> bytes:
    """The header of the flat index file holding `rows` rows of the trained index `empty`: its codes follow it."""
    ntotal_at, count_at, units, _ = _flat_layout(empty, binary)
    header = bytearray(empty)
    struct.pack_into("<q", header, ntotal_at, rows)
    struct.pack_into("<Q", header, count_at, rows * units)
    return bytes(header)


def same_flat_training(header: bytes, empty: bytes, binary: bool) -> bool:
    """Whether a flat index file whose first len(empty) bytes are `header` is a fill of the trained index `empty`
    (the same kind, dims and trained parameters): its header but for the counts."""
    ntotal_at, count_at, _, _ = _flat_layout(empty, binary)
    if len(header) != len(empty):
        return False
    header = bytearray(header)
    struct.pack_into("<q", header, ntotal_at, 0)
    struct.pack_into("<Q", header, count_at, 0)
    return bytes(header) == empty


def flat_codes(index: faiss.Index | faiss.IndexBinary, header_bytes: int, row_bytes: int) -> np.ndarray:
    """A flat index's codes, a row of bytes per vector, as its file holds them after the header."""
    return np.frombuffer(to_bytes(index), dtype=np.uint8)[header_bytes:].reshape(-1, row_bytes)


def concat_flat(empty: bytes, binary: bool, parts: Iterable[tuple[int, BinaryIO]], out: BinaryIO) -> None:
    """Write the flat index of every part's rows, in order: `parts` gives (rows, open shard file) pairs, each file a
    serialised fill of the `empty` trained index."""
    parts = list(parts)
    out.write(flat_header(empty, binary, sum(n for n, _ in parts)))
    for _, fh in parts:
        fh.seek(len(empty))  # skip the shard file's own header: its codes follow
        shutil.copyfileobj(fh, out, _COPY)


def _read(path: Path, binary: bool, flags: int) -> faiss.Index | faiss.IndexBinary:
    with native_stdout_silenced():  # an on-disk index notes where it found its lists
        return faiss.read_index_binary(str(path), flags) if binary else faiss.read_index(str(path), flags)


def _entries(lists, list_no: int, code_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One inverted list's (ids, codes), copied out."""
    n = lists.list_size(list_no)
    if not n:
        return np.empty(0, np.int64), np.empty((0, code_size), np.uint8)
    ids = faiss.rev_swig_ptr(lists.get_ids(list_no), n).copy()
    codes = faiss.rev_swig_ptr(lists.get_codes(list_no), n * code_size).reshape(n, code_size).copy()
    return ids, codes


@dataclass(frozen=True)
class KeptLists:
    """A live IVF index file (its .ivfdata beside it) of the same training as a build, and the rows the build keeps
    of it: their live rows and their rows in the build."""

    path: Path
    live_rows: np.ndarray
    rows: np.ndarray


def _lists_with_kept(ivf, parts: list, kept: KeptLists, binary: bool) -> faiss.ArrayInvertedLists:
    """The inverted lists of `parts` and of the rows kept of a live index, each list sorted by row: what the parts
    of a full build give, merged in row order."""
    live_index = _read(kept.path, binary, faiss.IO_FLAG_ONDISK_SAME_DIR)  # its lists mapped from its .ivfdata
    live = ivf_of(live_index, binary).invlists
    new_row = np.full(live_index.ntotal, -1, dtype=np.int64)
    new_row[kept.live_rows] = kept.rows
    out = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    for list_no in range(ivf.nlist):
        live_ids, live_codes = _entries(live, list_no, ivf.code_size)
        rows = new_row[live_ids]
        pieces = [(rows[rows >= 0], live_codes[rows >= 0]),
                  *(_entries(lists, list_no, ivf.code_size) for _, lists in parts)]
        ids, codes = np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])
        if len(ids):
            order = np.argsort(ids, kind="stable")
            ids, codes = np.ascontiguousarray(ids[order]), np.ascontiguousarray(codes[order])
            out.add_entries(list_no, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    return out


def merge_ivf(empty: bytes, binary: bool, shard_files: list[Path], index_path: Path, ivfdata_path: Path,
              kept: KeptLists | None = None) -> int:
    """Merge shard IVF files (each a fill of the `empty` trained index) into `index_path`, with its inverted lists
    on disk in `ivfdata_path` (named by base name in the index file); the `kept` rows of a live index join the
    lists with the codes live has for them. Returns the rows merged."""
    index = from_bytes(empty, binary)
    ivf = ivf_of(index, binary)
    parts = []
    for path in shard_files:  # memory-mapped: the lists are not loaded
        part = _read(path, binary, faiss.IO_FLAG_MMAP)
        part_ivf = ivf_of(part, binary)
        part_ivf.own_invlists = False  # the lists outlive their index until merged
        parts.append((part, part_ivf.invlists))
    if kept is not None:  # one part of every list in row order (a list of the parts merged is in part order)
        parts = [(None, _lists_with_kept(ivf, parts, kept, binary))]
    invlists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata_path))
    pointers = faiss.InvertedListsPtrVector()
    for _, lists in parts:
        pointers.push_back(lists)
    with native_stdout_silenced():
        rows = invlists.merge_from_multiple(pointers.data(), pointers.size(), False)
    index.ntotal = ivf.ntotal = rows
    ivf.replace_invlists(invlists, True)
    invlists.this.disown()
    invlists.filename = ivfdata_path.name  # found beside the index file by readers (IO_FLAG_ONDISK_SAME_DIR)
    (faiss.write_index_binary if binary else faiss.write_index)(index, str(index_path))
    return rows


def same_ivf_training(a: bytes, b: bytes, binary: bool) -> bool:
    """Whether two trained, empty IVF indexes encode every vector alike: equal but for nprobe (how a search scans,
    which a build's plan may change while it keeps the training)."""
    def scan_free(data: bytes) -> bytes:
        index = from_bytes(data, binary)
        ivf_of(index, binary).nprobe = 1
        return to_bytes(index)

    return scan_free(a) == scan_free(b)


def npy_header(rows: int, dims: int, dtype: str = "<f2") -> bytes:
    """The header of a C-order .npy file of `rows` x `dims`: the raw rows follow it."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": (rows, dims)})
    return buf.getvalue()


def concat_parquet(tables: Iterable[pl.DataFrame], out: BinaryIO, row_group_size: int = 65_536) -> int:
    """One Parquet file of the tables in order (same schema), with statistics; returns its rows."""
    writer, rows = None, 0
    try:
        for table in tables:
            arrow = table.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(out, arrow.schema, compression="zstd", write_statistics=True)
            writer.write_table(arrow, row_group_size=row_group_size)
            rows += table.height
    finally:
        if writer is not None:
            writer.close()
    return rows
