"""Indexes built shard by shard and assembled into one file (flat codes concatenated, IVF lists merged on disk)
equal the index built over every row at once: the out-of-core build changes where the work runs, not the index."""

from pathlib import Path

import faiss
import numpy as np
import pytest

from pipeline.config import IndexConfig
from pipeline.index.assemble import KeptLists, KeptRuns, concat_flat, merge_ivf
from pipeline.index.build_variants import build_variants, train_variants, training_rows
from pipeline.index.faiss_ops import to_bytes

ALL = ["exact", "fp16", "int8", "binary", "exact@32", "ivfpq", "int8-ivf", "binary-ivf"]


def vectors(n: int = 3000, d: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n // 20, d))[rng.integers(0, n // 20, n)] + 0.3 * rng.standard_normal((n, d)))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def whole_and_sharded(tmp_path_factory):
    x = vectors()
    cfg = IndexConfig(variants=ALL)
    whole, _ = build_variants(cfg, x, seed=0)
    trained = train_variants(cfg, len(x), x.shape[1], x[training_rows(len(x), cfg, 0)], seed=0)
    bounds = [0, 700, 1900, len(x)]  # uneven shards
    out, folder = {}, tmp_path_factory.mktemp("assemble")
    for t in trained:
        binary = t.spec.kind.binary
        files = []
        for a, b in zip(bounds, bounds[1:], strict=False):
            files.append(folder / f"{t.spec.name}-{a}.faiss")
            files[-1].write_bytes(to_bytes(t.fill(x[a:b], a)))
        merged = folder / f"{t.spec.name}.faiss"
        if t.spec.kind.ivf:
            merge_ivf(t.empty, binary, files, merged, folder / f"{t.spec.name}.ivfdata")
        else:
            with merged.open("wb") as fh:
                handles = [f.open("rb") for f in files]
                concat_flat(t.empty, binary, [(b - a, h) for a, b, h in zip(bounds, bounds[1:], handles, strict=False)],
                            fh)
                for h in handles:
                    h.close()
        out[t.spec.name] = merged
    return x, whole, out


@pytest.mark.parametrize("name", [n for n in ALL if "ivf" not in n])
def test_flat_shard_files_concatenate_into_the_bytes_of_the_whole_index(whole_and_sharded, name):
    _, whole, files = whole_and_sharded
    assert Path(files[name]).read_bytes() == to_bytes(whole[name])


@pytest.mark.parametrize("name", [n for n in ALL if "ivf" in n])
def test_ivf_shard_files_merge_into_lists_that_search_like_the_whole_index(whole_and_sharded, name):
    x, whole, files = whole_and_sharded
    binary = name.startswith("binary")
    read = faiss.read_index_binary if binary else faiss.read_index
    merged = read(str(files[name]), faiss.IO_FLAG_ONDISK_SAME_DIR)
    assert merged.ntotal == whole[name].ntotal == len(x)
    q = np.packbits(x[:40] > 0, axis=1) if binary else x[:40]
    assert np.array_equal(merged.search(q, 10)[1], whole[name].search(q, 10)[1])
    lists = (merged if binary else faiss.extract_index_ivf(merged)).invlists
    reference = (whole[name] if binary else faiss.extract_index_ivf(whole[name])).invlists
    for lst in range(reference.nlist):  # the same rows in the same order in every list
        assert lists.list_size(lst) == reference.list_size(lst)
        n = lists.list_size(lst)
        got = faiss.rev_swig_ptr(lists.get_ids(lst), n).copy() if n else []
        want = faiss.rev_swig_ptr(reference.get_ids(lst), n).copy() if n else []
        assert np.array_equal(got, want)


def test_kept_rows_are_held_as_runs_that_grow_with_the_edits_not_the_rows():
    live_rows = np.r_[0:1000, 1010:5000, 5001:9000]  # live rows 1000-1009 and 5000 dropped
    rows = np.r_[0:2000, 2003:8992]  # three rows inserted after the 2,000th kept row
    runs = KeptRuns.of(live_rows, rows)
    assert len(runs.length) == 4 and runs.length.sum() == len(rows)
    assert np.array_equal(runs.rows_of(live_rows), rows)
    assert (runs.rows_of(np.r_[1000:1010, 5000, 9000, 10**6]) == -1).all()
    assert np.array_equal(KeptRuns.stacked(runs.to_array()).rows_of(live_rows[::7]), rows[::7])
    assert (KeptRuns.of(np.empty(0, np.int64), np.empty(0, np.int64)).rows_of(np.arange(3)) == -1).all()
    moved = KeptRuns.of(np.r_[5:8, 0:3], np.arange(6))  # live rows out of order: still right, in two runs
    assert np.array_equal(moved.rows_of(np.r_[0:3, 5:8, 3]), [3, 4, 5, 0, 1, 2, -1])


@pytest.mark.parametrize("redone", [100, 0])
@pytest.mark.parametrize("name", [n for n in ALL if "ivf" in n])
def test_a_merge_keeping_live_codes_writes_the_files_of_a_full_build(tmp_path, name, redone):
    """An incremental build's IVF file: live's lists renumbered (rows dropped, others shifted by inserts) and merged
    with the parts that hold only the redone rows (none: every part empty) equal, byte for byte, the merge of every
    row's part."""
    x, live_x = vectors(3000, seed=1), vectors(3100, seed=2)
    cfg = IndexConfig(variants=[name])
    [t] = train_variants(cfg, len(x), x.shape[1], x[training_rows(len(x), cfg, 0)], seed=0)
    binary = t.spec.kind.binary
    # the new rows: live's rows 0-999 and 1,050-2,949+ kept; 50 dropped between; `redone` rows new after row 999
    kept_live = np.r_[0:1000, 1050:3050 - redone]
    kept_rows = np.r_[0:1000, 1000 + redone:3000]
    x[kept_rows] = live_x[kept_live]
    redone = np.r_[1000:1000 + redone]

    def merged(folder: Path, parts: list[tuple[np.ndarray, np.ndarray]], kept: KeptLists | None = None) -> Path:
        folder.mkdir()
        files = []
        for i, (vecs, ids) in enumerate(parts):
            files.append(folder / f"part-{i}.faiss")
            files[-1].write_bytes(to_bytes(t.fill(vecs, ids)))
        merge_ivf(t.empty, binary, files, folder / "out.faiss", folder / "out.ivfdata", kept)
        return folder

    live = merged(tmp_path / "live", [(live_x[:1500], np.arange(1500)), (live_x[1500:], np.arange(1500, 3100))])
    bounds = [0, 1050, 3000]  # the redone rows fall in the first shard
    full = merged(tmp_path / "full", [(x[a:b], np.arange(a, b)) for a, b in zip(bounds, bounds[1:], strict=False)])
    parts = [(x[r], r) for a, b in zip(bounds, bounds[1:], strict=False)
             for r in [redone[(redone >= a) & (redone < b)]]]
    kept = merged(tmp_path / "kept", parts, KeptLists(live / "out.faiss", KeptRuns.of(kept_live, kept_rows)))
    for f in ("out.faiss", "out.ivfdata"):
        assert (kept / f).read_bytes() == (full / f).read_bytes()
