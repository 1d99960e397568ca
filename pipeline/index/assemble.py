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
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pipeline.index.faiss_ops import from_bytes, native_stdout_silenced, to_bytes

_COPY = 8 << 20  # bytes copied at a time


def _flat_layout(empty: bytes, binary: bool) -> tuple[int, int, int]:
    """(offset of the row count, offset of the code count, code-count units per row) of a flat index's file."""
    index = from_bytes(empty, binary)
    index.add(np.zeros((1, index.d // 8 if binary else index.d), dtype=np.uint8 if binary else np.float32))
    one = to_bytes(index)
    ntotal_at = next(i for i, (a, b) in enumerate(zip(empty, one, strict=False)) if a != b)
    count_at = len(empty) - 8  # the code count sits last in an empty index's file
    units = struct.unpack_from("<Q", one, count_at)[0]
    return ntotal_at, count_at, units


def concat_flat(empty: bytes, binary: bool, parts: Iterable[tuple[int, BinaryIO]], out: BinaryIO) -> None:
    """Write the flat index of every part's rows, in order: `parts` gives (rows, open shard file) pairs, each file a
    serialised fill of the `empty` trained index."""
    parts = list(parts)
    ntotal_at, count_at, units = _flat_layout(empty, binary)
    rows = sum(n for n, _ in parts)
    header = bytearray(empty)
    struct.pack_into("<q", header, ntotal_at, rows)
    struct.pack_into("<Q", header, count_at, rows * units)
    out.write(header)
    for _, fh in parts:
        fh.seek(len(empty))  # skip the shard file's own header: its codes follow
        shutil.copyfileobj(fh, out, _COPY)


def merge_ivf(empty: bytes, binary: bool, shard_files: list[Path], index_path: Path, ivfdata_path: Path) -> int:
    """Merge shard IVF files (each a fill of the `empty` trained index) into `index_path`, with its inverted lists
    on disk in `ivfdata_path` (named by base name in the index file). Returns the rows merged."""
    index = from_bytes(empty, binary)
    ivf = index if binary else faiss.extract_index_ivf(index)
    parts = []
    for path in shard_files:  # memory-mapped: the lists are not loaded
        part = faiss.read_index_binary(str(path), faiss.IO_FLAG_MMAP) if binary else \
            faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
        part_ivf = part if binary else faiss.extract_index_ivf(part)
        part_ivf.own_invlists = False  # the lists outlive their index until merged
        parts.append((part, part_ivf.invlists))
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
