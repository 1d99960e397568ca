"""Codes an incremental build copies from the live version for the chunks it keeps, instead of reading their
vectors and encoding them again: so the index stage's encoding grows with the change, not the corpus.

A kept chunk has the vector live indexed (the same model and chunk hash: pipeline/jobs/plan.py compares with live
only then), so wherever a file's code for a vector depends on that vector and on training this build shares with
live, live's code is the one a full build would write:
- flat files (the fp16 store; exact, fp16, binary; int8 while live's ranges are kept): a shard's kept rows come
  from one read of the byte range of its live rows (a shard is a bucket range, and live's rows are in bucket order),
  copied run by run to their rows (prepare recorded each one's live row: LIVE_ROW);
- IVF files whose training is live's (IVF-PQ, int8-ivf, binary-ivf while it is kept): live's lists, filtered and
  renumbered, merged with the new rows' lists in row order (pipeline/index/assemble.py merge_ivf).
A variant live lacks, or one trained anew (a training that no longer fits), encodes every vector, as a full build
does; while any does, a shard reads every vector, else only those of the chunks it redoes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from pipeline.errors import SnapshotError
from pipeline.index.assemble import KeptRuns, flat_row_bytes, same_flat_training, same_ivf_training
from pipeline.index.build_variants import TrainedVariant
from pipeline.storage import layout
from pipeline.storage.backend import Storage

RESCORE = "rescore"  # the fp16 store's name among a shard's outputs (the others are variants' names)
RESCORE_DTYPE = "<f2"


@dataclass(frozen=True)
class FlatRows:
    """Where live's rows of one flat file are: row r at offset + r * row_bytes."""

    file: str
    offset: int
    row_bytes: int


@dataclass(frozen=True)
class LiveCodes:
    """Live's files whose codes this build keeps, by output: flat ones by their rows, IVF ones by their index file
    (whose lists are in the .ivfdata beside it)."""

    storage: Storage  # live's version folder
    flat: dict[str, FlatRows]
    ivf: dict[str, str]

    def covers(self, outputs: list[str]) -> bool:
        return all(name in self.flat or name in self.ivf for name in outputs)

    def copy_kept(self, name: str, live_rows: np.ndarray, codes: np.ndarray) -> None:
        """Read live's codes of the flat output `name` into `codes` (a row of bytes per shard row) for the rows whose
        `live_rows` is not -1: one read per run of rows that follow each other in both (kept rows keep live's order,
        so the runs are as many as the edits between them), straight into place."""
        where, at = self.flat[name], np.flatnonzero(live_rows >= 0)
        with self.storage.open_read(where.file) as fh:
            for live_start, start, length in KeptRuns.of(live_rows[at], at):
                fh.seek(where.offset + live_start * where.row_bytes)
                _read_into(fh, memoryview(codes[start:start + length]).cast("B"), where.file)


def _read_into(fh, view: memoryview, name: str) -> None:
    while len(view):
        n = fh.readinto(view)
        if not n:
            raise SnapshotError(f"live version's {name} ends before the rows its id table lists")
        view = view[n:]


def live_codes(live: Storage | None, trained: list[TrainedVariant], store_fp16: bool, dims: int) -> LiveCodes | None:
    """Which of this build's outputs may take kept rows' codes from the live version `live` (None: a full build;
    reads live's manifest, the fp16 store's header, each flat file's header and each IVF training: kilobytes)."""
    if live is None:
        return None
    variants = json.loads(live.read_bytes(layout.MANIFEST))["index"]["variants"]
    flat: dict[str, FlatRows] = {}
    ivf: dict[str, str] = {}
    if store_fp16 and live.exists(layout.RESCORE_STORE):
        with live.open_read(layout.RESCORE_STORE) as fh:
            version = np.lib.format.read_magic(fh)
            shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                                     np.lib.format.read_array_header_2_0)(fh)
            if shape[1:] == (dims,) and dtype == np.dtype(RESCORE_DTYPE) and not fortran:
                flat[RESCORE] = FlatRows(layout.RESCORE_STORE, fh.tell(), 2 * dims)
    for variant in trained:
        name, binary = variant.spec.name, variant.spec.kind.binary
        if name not in variants:
            continue
        if variant.spec.kind.ivf:
            trained_file = layout.trained_file(name)
            if live.exists(trained_file) and same_ivf_training(live.read_bytes(trained_file), variant.empty, binary):
                ivf[name] = variant.spec.file
            continue
        with live.open_read(variant.spec.file) as fh:
            header = fh.read(len(variant.empty))
        if same_flat_training(header, variant.empty, binary):
            flat[name] = FlatRows(variant.spec.file, len(variant.empty), flat_row_bytes(variant.empty, binary))
    return LiveCodes(live, flat, ivf)
