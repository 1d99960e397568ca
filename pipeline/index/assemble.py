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


def _ids(lists, list_no: int) -> np.ndarray:
    """One inverted list's ids, a view of the lists' memory (valid while `lists` is)."""
    n = lists.list_size(list_no)
    return faiss.rev_swig_ptr(lists.get_ids(list_no), n) if n else np.empty(0, np.int64)


def _entries(lists, list_no: int, code_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One inverted list's (ids, codes), as views of the lists' memory (valid while `lists` is)."""
    ids = _ids(lists, list_no)
    if not len(ids):
        return ids, np.empty((0, code_size), np.uint8)
    return ids, faiss.rev_swig_ptr(lists.get_codes(list_no), len(ids) * code_size).reshape(len(ids), code_size)


@dataclass(frozen=True)
class KeptRuns:
    """The rows a build keeps of a live version, as runs of rows that follow each other in both (kept rows keep live's
    order): live rows live_start + i become rows row_start + i for i < length. As many runs as edits between kept
    rows, so they grow with the change, not the corpus."""

    live_start: np.ndarray
    row_start: np.ndarray
    length: np.ndarray

    @classmethod
    def of(cls, live_rows: np.ndarray, rows: np.ndarray) -> KeptRuns:
        """The runs of kept rows given each one's live row and row (a run ends wherever either does not go up by
        one: any order is right, and both increasing, as a build's are, makes the fewest runs)."""
        breaks = np.flatnonzero((np.diff(live_rows) != 1) | (np.diff(rows) != 1)) + 1
        starts = np.r_[0, breaks] if len(rows) else np.empty(0, np.int64)
        return cls.stacked(np.stack([live_rows[starts], rows[starts], np.diff(np.r_[starts, len(rows)])]))

    @classmethod
    def stacked(cls, array: np.ndarray) -> KeptRuns:
        """From `to_array`'s form (several concatenated along its second axis), ordered by live row (rows_of
        searches them)."""
        array = np.asarray(array, dtype=np.int64)
        return cls(*array[:, np.argsort(array[0], kind="stable")])

    def to_array(self) -> np.ndarray:
        return np.stack([self.live_start, self.row_start, self.length])

    def __iter__(self):
        return zip(self.live_start.tolist(), self.row_start.tolist(), self.length.tolist(), strict=True)

    def rows_of(self, live_rows: np.ndarray) -> np.ndarray:
        """Each live row's row in the build, -1 where it is not kept."""
        if not len(self.length):
            return np.full(len(live_rows), -1, dtype=np.int64)
        run = np.maximum(np.searchsorted(self.live_start, live_rows, side="right") - 1, 0)
        offset = live_rows - self.live_start[run]
        return np.where((offset >= 0) & (offset < self.length[run]), self.row_start[run] + offset, -1)


@dataclass(frozen=True)
class KeptLists:
    """A live IVF index file (its .ivfdata beside it) of the same training as a build, and the rows the build keeps
    of it."""

    path: Path
    runs: KeptRuns


def _merge_kept(ivf, new, kept: KeptRuns, live, out) -> None:
    """Fill the empty on-disk lists `out` with each list's rows of `new` (the parts' lists, merged) and its `kept` rows
    of `live` (with live's codes, renumbered), in row order: what the parts of a full build give. Two passes over live's
    ids (each list's size first, so the lists lie in one pass over `out`'s file); one list in memory at a time."""
    sizes = np.array([np.count_nonzero(kept.rows_of(_ids(live, j)) >= 0) + new.list_size(j)
                      for j in range(ivf.nlist)], dtype=np.uint64)
    out.set_all_lists_sizes(faiss.swig_ptr(sizes))
    with native_stdout_silenced():  # it notes the resize
        out.update_totsize(int(sizes.sum()) * (8 + ivf.code_size))  # the file mapped, as merge_from_multiple leaves it
    for j in range(ivf.nlist):
        live_ids, live_codes = _entries(live, j, ivf.code_size)
        rows = kept.rows_of(live_ids)
        keep = rows >= 0
        new_ids, new_codes = _entries(new, j, ivf.code_size)
        ids = np.concatenate([rows[keep], new_ids])
        if len(ids):
            order = np.argsort(ids, kind="stable")
            ids, codes = ids[order], np.concatenate([live_codes[keep], new_codes])[order]  # held: FAISS reads them
            out.update_entries(j, 0, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))


def _on_disk(ivf, path: Path, parts: list) -> faiss.OnDiskInvertedLists:
    """Empty inverted lists backed by the file `path`, filled with `parts`' lists (list by list, in part order) if
    any are given."""
    invlists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(path))
    if parts:
        pointers = faiss.InvertedListsPtrVector()
        for lists in parts:
            pointers.push_back(lists)
        with native_stdout_silenced():
            invlists.merge_from_multiple(pointers.data(), pointers.size(), False)
    return invlists


def merge_ivf(empty: bytes, binary: bool, shard_files: list[Path], index_path: Path, ivfdata_path: Path,
              kept: KeptLists | None = None) -> int:
    """Merge shard IVF files (each a fill of the `empty` trained index) into `index_path`, with its inverted lists
    on disk in `ivfdata_path` (named by base name in the index file); the `kept` rows of a live index join the
    lists with the codes live has for them. Returns the rows merged."""
    index = from_bytes(empty, binary)
    ivf = ivf_of(index, binary)
    parts = [_read(path, binary, faiss.IO_FLAG_MMAP) for path in shard_files]  # mapped: the lists are not loaded
    lists = [ivf_of(part, binary).invlists for part in parts]  # valid while `parts` holds their indexes
    if kept is None:
        invlists = _on_disk(ivf, ivfdata_path, lists)
    else:  # the parts hold the redone rows alone: merged first, then list by list with live's kept rows
        new_path = ivfdata_path.with_name(ivfdata_path.name + ".new")
        new = _on_disk(ivf, new_path, [x for x in lists if x.compute_ntotal()])  # FAISS cannot map an empty file
        live_index = _read(kept.path, binary, faiss.IO_FLAG_ONDISK_SAME_DIR)  # its lists mapped from its .ivfdata
        invlists = _on_disk(ivf, ivfdata_path, [])
        _merge_kept(ivf, new, kept.runs, ivf_of(live_index, binary).invlists, invlists)
        del new, live_index
        new_path.unlink(missing_ok=True)
    rows = invlists.compute_ntotal()
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
