"""The index stage, out of core: the driver never holds the corpus's vectors.

1. Rows: every committed shard's chunk rows in snapshot order (bucket, then chunk id: the same whatever the shard
   count, since shards are bucket ranges), shard after shard; a shard's first row is the sum of those before it.
2. Train: one seeded sample of rows (bounded by `index.ivf.max_train_points`) is written shard by shard on the
   workers, and one worker task trains every variant on it once (index/build_variants.py), or reuses an earlier
   version's training.
3. Fill, per shard on a worker (`index_shard`): its id rows, its fp16 rescoring rows and each variant's index of its
   vectors, written under runs/<run>/index/<shard>/; it returns the sums the drift statistics need over its vectors
   (a few KB), which the driver adds up for the evaluation.
4. Assemble, per snapshot file on a worker (`assemble`): shard files streamed into one file in the version folder
   (index/assemble.py), its sha256 computed while it is written.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.config import PipelineConfig
from pipeline.errors import SnapshotError
from pipeline.index.assemble import (
    KeptLists,
    KeptRuns,
    concat_flat,
    concat_parquet,
    flat_codes,
    flat_header,
    flat_row_bytes,
    merge_ivf,
    npy_header,
)
from pipeline.index.build_variants import TrainedVariant, may_keep_training, train_variants, training_rows
from pipeline.index.faiss_ops import fit_rows, write_to
from pipeline.index.training import FULL_BUILD, NeedsWholeSample, Training
from pipeline.index.variants import VariantSpec
from pipeline.jobs.executor import Executor, one_task_cpus
from pipeline.jobs.kept_codes import RESCORE, RESCORE_DTYPE, LiveCodes
from pipeline.jobs.shards import INPUT_COLUMNS, LIVE_ROW, is_committed
from pipeline.quality.drift import VectorMoments, vectors_source
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from pipeline.storage.tables import read_parquet, write_parquet

SAMPLE = "sample.npy"  # a shard's share of the training sample, under runs/<run>/index/<shard>/
KEPT = "kept.npy"  # a shard's kept rows as runs (assemble.KeptRuns), for IVF merges (kept_codes.py)


@dataclass(frozen=True)
class ShardRows:
    shard: int
    rows: int
    first_row: int  # the snapshot row of its first row


def row_layout(shards: list[int], rows: dict[int, int]) -> list[ShardRows]:
    """Each shard's place in the snapshot's rows: shards in order, empty ones left out."""
    out, first = [], 0
    for shard in sorted(shards):
        if rows[shard]:
            out.append(ShardRows(shard, rows[shard], first))
            first += rows[shard]
    return out


def _parts(storage: Storage, run_id: str, shard: int, folder: str) -> list[str]:
    return [layout.shard_key(run_id, shard, f"{folder}/{name}") for name in storage.list(
        layout.shard_key(run_id, shard, folder))]


def chunk_rows(storage: Storage, run_id: str, shard: int) -> pl.DataFrame:
    """A committed shard's chunk rows in snapshot order (bucket, then chunk id), kept ones with their LIVE_ROW."""
    if not is_committed(storage, run_id, shard):
        raise SnapshotError(f"run {run_id} shard {shard} has no {layout.MARKER} marker; it was not embedded")
    try:
        parts = [read_parquet(storage, key, [*INPUT_COLUMNS, LIVE_ROW]) for key in _parts(storage, run_id, shard,
                                                                                        "chunks")]
    except pl.exceptions.ColumnNotFoundError:
        raise SnapshotError(f"run {run_id} shard {shard}: its chunk parts have no {LIVE_ROW} column (prepared by an "
                            f"older embedpipe); run it again under a new run id") from None
    return pl.concat(parts).sort("bucket", "chunk_id")


def with_vectors(storage: Storage, run_id: str, shard: int, rows: pl.DataFrame) -> pl.DataFrame:
    """`rows` (some of a shard's chunk rows) each given the vector of its chunk hash from the shard's vectors parts
    (embedded, or cache files copied whole when it was prepared, which may hold other chunks' vectors too); a part
    holding none of their hashes is not decoded."""
    wanted, frames = rows["chunk_hash"].implode(), []
    for key in _parts(storage, run_id, shard, "vectors"):
        if read_parquet(storage, key, ["chunk_hash"])["chunk_hash"].is_in(wanted).any():
            frames.append(read_parquet(storage, key, ["chunk_hash", "vector"]).filter(
                pl.col("chunk_hash").is_in(wanted)))
    vectors = pl.concat(frames) if frames else pl.DataFrame(schema={"chunk_hash": pl.String, "vector": pl.Float32})
    if vectors["chunk_hash"].n_unique() < vectors.height:  # a hash in two cache files, or twice in a part
        vectors = vectors.unique("chunk_hash", keep="any")
    table = rows.join(vectors, on="chunk_hash", how="left", maintain_order="left")
    if lost := table["vector"].null_count():
        first = table.filter(pl.col("vector").is_null())["chunk_id"][0]
        raise SnapshotError(f"run {run_id} shard {shard}: {lost} chunks (first: {first}) have no vector in its "
                            f"vectors parts; run it again under a new run id")
    return table


def shard_table(storage: Storage, run_id: str, shard: int) -> pl.DataFrame:
    """A committed shard's chunk rows with their vectors, in snapshot order."""
    return with_vectors(storage, run_id, shard, chunk_rows(storage, run_id, shard))


def vectors_of(table: pl.DataFrame) -> np.ndarray:
    return np.ascontiguousarray(table["vector"].to_numpy(), dtype=np.float32)


def load_vectors(storage: Storage, run_id: str, shards: list[int]) -> tuple[pl.DataFrame, np.ndarray]:
    """Every listed shard's chunk rows and vectors in snapshot order, in memory: for small runs, tests and
    benchmarks (the index stage never gathers them)."""
    table = pl.concat([shard_table(storage, run_id, shard) for shard in sorted(shards)])
    return table.drop("vector", LIVE_ROW), vectors_of(table)


def sample_shard(storage: Storage, run_id: str, shard: ShardRows, rows: np.ndarray) -> int:
    """Write the vectors of the snapshot rows `rows` (sorted) that fall in this shard to the run's training sample;
    returns how many."""
    local = rows[(rows >= shard.first_row) & (rows < shard.first_row + shard.rows)] - shard.first_row
    picked = chunk_rows(storage, run_id, shard.shard)[local]  # only their vectors are read
    out = io.BytesIO()
    np.save(out, vectors_of(with_vectors(storage, run_id, shard.shard, picked)), allow_pickle=False)
    storage.write_bytes(layout.index_shard_key(run_id, shard.shard, SAMPLE), out.getvalue())
    return len(local)


def train_on_sample(cfg: PipelineConfig, storage: Storage, run_id: str, n: int, dims: int, training: Training,
                    holders: list[int], fit_only: bool = False) -> list[TrainedVariant] | None:
    """Every variant trained on the sample the shards `holders` wrote (in row order); one worker task with one
    actor's CPUs, so the sample and FAISS's training memory stay out of the driver. None where the sample held
    only the fit rows (`fit_only`) and a variant must train anew."""
    parts = [np.load(io.BytesIO(storage.read_bytes(layout.index_shard_key(run_id, s, SAMPLE))), allow_pickle=False)
             for s in holders]
    sample = np.concatenate(parts) if parts else np.empty((0, dims), dtype=np.float32)
    try:
        return train_variants(cfg.index, n, dims, sample, cfg.run.seed, training, fit_only)
    except NeedsWholeSample:
        return None


def train(cfg: PipelineConfig, storage: Storage, run_id: str, shards: list[ShardRows], dims: int, executor: Executor,
          training: Training = FULL_BUILD) -> list[TrainedVariant]:
    """Every variant trained once on the seeded sample (at most index.ivf.max_train_points vectors): the workers
    write their shards' share of it, one task trains on it; the driver gets the trained, empty indexes (centroids
    and codebooks: kilobytes to a few MB). Where every training may be kept from live, its fit is checked on the
    rows it is measured on first (faiss_ops.fit_rows: those of the first shards), and the whole sample read only to
    train anew."""
    n = sum(s.rows for s in shards)
    trains = any(VariantSpec.parse(v).kind.trains for v in cfg.index.vector_variants)
    rows = training_rows(n, cfg.index, cfg.run.seed) if trains else np.empty(0, dtype=np.int64)

    def on(rows: np.ndarray, fit_only: bool) -> list[TrainedVariant] | None:
        holders = [s for s in shards if ((rows >= s.first_row) & (rows < s.first_row + s.rows)).any()]
        executor.map(partial(sample_shard, storage, run_id, rows=rows), holders)
        [trained] = executor.map(partial(train_on_sample, cfg, storage, run_id, n, dims, training, fit_only=fit_only),
                                 [[s.shard for s in holders]], cpus=one_task_cpus(cfg.run))
        return trained

    if trains and may_keep_training(cfg.index, training) and (kept := on(fit_rows(rows), fit_only=True)):
        return kept
    return on(rows, fit_only=False)


def index_shard(storage: Storage, run_id: str, shard: ShardRows, trained: list[TrainedVariant], store_fp16: bool,
                dims: int, live: LiveCodes | None = None) -> VectorMoments | None:
    """One shard's share of every snapshot file: its id rows, fp16 rows, and each variant filled with its vectors.
    Where `live` holds every output's codes of the rows it keeps (pipeline/jobs/kept_codes.py), those rows' codes
    come from live's files and only the other rows' vectors are read. Returns the sums the drift statistics need over
    the vectors as the version will read them back (drift.vectors_source; None when it cannot), so its evaluation
    need not pass over every row again."""
    table = chunk_rows(storage, run_id, shard.shard)
    if table.height != shard.rows:
        raise SnapshotError(f"run {run_id} shard {shard.shard} holds {table.height} rows, its marker said "
                            f"{shard.rows}")
    ids = table.select(pl.int_range(shard.first_row, shard.first_row + shard.rows, dtype=pl.Int64).alias("row"),
                       *INPUT_COLUMNS)
    write_parquet(storage, layout.index_shard_key(run_id, shard.shard, "ids.parquet"), ids)
    outputs = [*([RESCORE] if store_fp16 else []), *(t.spec.name for t in trained)]
    live_rows = table[LIVE_ROW].fill_null(-1).to_numpy()
    kept = live_rows >= 0 if live is not None and live.covers(outputs) else np.zeros(shard.rows, dtype=bool)
    encoded = table.filter(pl.Series(~kept))
    vectors = vectors_of(with_vectors(storage, run_id, shard.shard, encoded)) if encoded.height else \
        np.empty((0, dims), dtype=np.float32)

    def with_kept(name: str, fresh: np.ndarray) -> np.ndarray:
        """Every row's codes of output `name`: live's for the kept rows, `fresh` for the others."""
        codes = np.empty((shard.rows, fresh.shape[1]), dtype=np.uint8)
        codes[~kept] = fresh
        live.copy_kept(name, np.where(kept, live_rows, -1), codes)
        return codes

    moments = None
    source = vectors_source(store_fp16, [t.spec.name for t in trained])
    if store_fp16:
        stored = vectors.astype(RESCORE_DTYPE)
        if kept.any():
            stored = with_kept(RESCORE, stored.view(np.uint8)).view(RESCORE_DTYPE)
        storage.write_bytes(layout.index_shard_key(run_id, shard.shard, "rescore.f16"), stored.tobytes())
        moments = VectorMoments.of(stored)
    rows = shard.first_row + np.flatnonzero(~kept)
    for variant in trained:
        index, codes = variant.fill(vectors, rows), None  # the rows to encode
        with storage.open_write(layout.index_shard_key(run_id, shard.shard, f"{variant.spec.name}.faiss"),
                                digest=False) as out:  # a work file: the version's file gets the sha256
            if kept.any() and not variant.spec.kind.ivf:  # the header for every row, then their codes
                binary = variant.spec.kind.binary
                codes = with_kept(variant.spec.name, flat_codes(index, len(variant.empty),
                                                                 flat_row_bytes(variant.empty, binary)))
                out.write(flat_header(variant.empty, binary, shard.rows))
                out.write(codes.data)
            else:
                write_to(index, out)
        if variant.spec.name == source:  # a flat kind's codes decode as its reconstruction does
            moments = VectorMoments.of(index.reconstruct_n(0, index.ntotal) if codes is None else
                                       index.sa_decode(codes))
    kept_key = layout.index_shard_key(run_id, shard.shard, KEPT)
    if kept.any() and live.ivf:  # the IVF files' merge takes the kept rows' codes from live's lists
        out = io.BytesIO()
        np.save(out, KeptRuns.of(live_rows[kept], shard.first_row + np.flatnonzero(kept)).to_array(),
                allow_pickle=False)
        storage.write_bytes(kept_key, out.getvalue())
    elif storage.exists(kept_key):  # an earlier attempt's
        storage.delete(kept_key)
    return moments


@dataclass(frozen=True)
class FileEntry:
    name: str  # in the version folder
    sha256: str
    bytes: int


def assemble(storage: Storage, run_id: str, target: Storage, what: str, shards: list[ShardRows],
             trained: list[TrainedVariant], dims: int, live: LiveCodes | None = None) -> list[FileEntry]:
    """Write one snapshot file (`what`: the id, documents or files table, RESCORE or a variant's name) into the
    version folder `target` from the run's files, streaming; IVF variants also write their lists and trained
    index, with the kept rows' codes from `live`'s lists where the shards took them from live."""
    if what in (layout.IDS, layout.DOCUMENTS):  # the shards' tables one after another: bucket order
        key = partial(layout.index_shard_key, run_id, name=what) if what == layout.IDS else \
            partial(layout.shard_key, run_id, name=what)
        with target.open_write(what) as out:
            concat_parquet((read_parquet(storage, key(s.shard)) for s in shards), out)
        return [FileEntry(what, out.sha256, out.size)]
    if what == layout.FILES:
        data = storage.read_bytes(layout.run_files_key(run_id))
        target.write_bytes(what, data)
        return [FileEntry(what, hashlib.sha256(data).hexdigest(), len(data))]
    if what == RESCORE:
        with target.open_write(layout.RESCORE_STORE) as out:
            out.write(npy_header(sum(s.rows for s in shards), dims, RESCORE_DTYPE))
            for s in shards:
                with storage.open_read(layout.index_shard_key(run_id, s.shard, "rescore.f16")) as fh:
                    _copy(fh, out)
        return [FileEntry(layout.RESCORE_STORE, out.sha256, out.size)]
    variant = next(t for t in trained if t.spec.name == what)
    binary = variant.spec.kind.binary
    if not variant.spec.kind.ivf:
        files = [storage.open_read(layout.index_shard_key(run_id, s.shard, f"{what}.faiss")) for s in shards]
        try:
            with target.open_write(variant.spec.file) as out:
                concat_flat(variant.empty, binary, [(s.rows, fh) for s, fh in zip(shards, files, strict=True)], out)
        finally:
            for fh in files:
                fh.close()
        return [FileEntry(variant.spec.file, out.sha256, out.size)]
    with tempfile.TemporaryDirectory(prefix="embedpipe-merge-") as tmp:
        local = []
        for s in shards:  # merged on local disk: FAISS maps the lists from local files
            local.append(Path(tmp) / f"{s.shard:05d}.faiss")
            storage.get_file(layout.index_shard_key(run_id, s.shard, f"{what}.faiss"), local[-1])
        index_path, ivfdata = Path(tmp) / "merged.faiss", Path(tmp) / Path(layout.ivfdata_file(what)).name
        merge_ivf(variant.empty, binary, local, index_path, ivfdata, _kept_lists(storage, run_id, shards, live, what,
                                                                                Path(tmp) / "live"))
        entries = [FileEntry(variant.spec.file, *target.put_file(variant.spec.file, index_path)),
                   FileEntry(layout.ivfdata_file(what), *target.put_file(layout.ivfdata_file(what), ivfdata))]
    trained_name = layout.trained_file(what)
    target.write_bytes(trained_name, variant.empty)
    return entries + [FileEntry(trained_name, hashlib.sha256(variant.empty).hexdigest(), len(variant.empty))]


def _kept_lists(storage: Storage, run_id: str, shards: list[ShardRows], live: LiveCodes | None, what: str,
                folder: Path) -> KeptLists | None:
    """Live's IVF file of variant `what` (copied into `folder`) and the rows the shards kept of it, where they took
    their codes from it; else None."""
    kept = [layout.index_shard_key(run_id, s.shard, KEPT) for s in shards] if live and what in live.ivf else []
    runs = [np.load(io.BytesIO(storage.read_bytes(key)), allow_pickle=False) for key in kept if storage.exists(key)]
    if not runs:
        return None
    folder.mkdir()
    path = folder / Path(live.ivf[what]).name
    live.storage.get_file(live.ivf[what], path)
    live.storage.get_file(layout.ivfdata_file(what), folder / Path(layout.ivfdata_file(what)).name)
    return KeptLists(path, KeptRuns.stacked(np.concatenate(runs, axis=1)))


def _copy(src, out, block: int = 8 << 20) -> None:
    while chunk := src.read(block):
        out.write(chunk)
