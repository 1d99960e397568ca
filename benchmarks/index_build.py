"""The index stage out of core, on synthetic embedding-like vectors written as shard vector files: the driver's peak
memory, the time of each step, and Recall@10 after rescoring against an in-memory build from the same training.

Data: a seeded Gaussian mixture shaped like sentence embeddings rather than uniform noise: a few thousand topic
centres with a shared mean direction, anisotropic noise with a power-law spectrum in a random basis, topic sizes
from a log-normal, every vector L2-normalised float32. Held-out queries come from the same mixture with another
seed; ground truth is exact inner product over blocks (faiss.contrib's `knn_ground_truth`).

1. Write --n vectors as --shards shards' vector files in a run folder, as the embedding stage leaves them (chunk
   rows with their vector, a `_SUCCESS` marker per shard), streaming (never all in memory).
2. In a separate driver process, the pipeline's index stage (`pipeline.jobs.build.build_indexes`, variant
   `ivfpq` plus the fp16 rescoring store): train once on the planned sample, fill each shard in a Ray task, merge
   the IVF lists on disk and stream the fp16 store; the driver reports its own peak RSS (target: < 2 GB).
3. Recall@10 of the on-disk snapshot's IVF-PQ, its top 100 re-scored with the fp16 store (the `+rescore` modes),
   against exact search over all --n; the same for in-memory indexes built from the snapshot's own trained index
   (same training): over all --n rows (target: within 0.01; the out-of-core build should lose nothing), and over
   the first --subset rows against exact search over that subset; and the out-of-core recall with 100 to 1,000
   candidates re-scored (a larger corpus needs a deeper re-scoring for the same recall).

Writes benchmarks/out/index_build.{json,md}.

Usage (from the repository root):
    .venv/bin/python benchmarks/index_build.py                          # 10M x 384, 40 shards (~1 hour, 2 CPUs)
    .venv/bin/python benchmarks/index_build.py --n 1000000 --shards 8   # ~10 minutes
    .venv/bin/python benchmarks/index_build.py --smoke --out /tmp/x     # 20,000 x 384, 4 shards
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# This checkout's code, in the driver and (through PYTHONPATH, which benchmarks.common sets) in Ray workers,
# even where the venv's editable install points at another checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_args, write_report  # noqa: E402

SMOKE = {"n": 20_000, "shards": 4, "subset": 5_000, "queries": 50, "centres": 50}
DEPTHS = (100, 200, 400, 1000)  # candidates re-scored with the fp16 store
BLOCK = 100_000  # rows generated / searched at a time: keeps float64 temporaries small


class Mixture:
    """The generative model; corpus and queries are drawn from one instance with different seeds."""

    def __init__(self, dims: int, centres: int, seed: int, spread: float = 0.9, mean_norm: float = 0.3,
                 decay: float = 0.5) -> None:
        rng = np.random.default_rng(seed)
        basis = np.linalg.qr(rng.standard_normal((dims, dims)))[0]
        spectrum = np.arange(1, dims + 1, dtype=np.float64) ** -decay
        # rows of `shape` map white noise to noise of unit expected norm with the power-law spectrum
        self.shape = (basis * (spectrum / np.linalg.norm(spectrum))).T
        mean = rng.standard_normal(dims)
        mean *= mean_norm / np.linalg.norm(mean)
        centres_ = mean + rng.standard_normal((centres, dims)) @ self.shape
        self.centres = centres_ / np.linalg.norm(centres_, axis=1, keepdims=True)
        weights = rng.lognormal(0.0, 1.0, centres)
        self.weights = weights / weights.sum()
        self.spread = spread  # noise norm relative to a centre: cos(point, centre) ~ 1 / sqrt(1 + spread^2)

    def blocks(self, n: int, seed: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed)
        for start in range(0, n, BLOCK):
            m = min(BLOCK, n - start)
            topic = rng.choice(len(self.centres), size=m, p=self.weights)
            x = self.centres[topic] + self.spread * (rng.standard_normal((m, len(self.shape))) @ self.shape)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            yield x.astype(np.float32)

    def sample(self, n: int, seed: int) -> np.ndarray:
        out = np.empty((n, len(self.shape)), dtype=np.float32)
        start = 0
        for block in self.blocks(n, seed):
            out[start:start + len(block)] = block
            start += len(block)
        return out


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(found, truth, strict=True)]))


def shard_rows(n: int, shards: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, shards + 1).astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def shard_vectors(mixture: Mixture, a: int, b: int, shard: int, seed: int) -> np.ndarray:
    return mixture.sample(b - a, seed + 1000 + shard)


def write_shards(root: Path, mixture: Mixture, n: int, shards: int, seed: int) -> None:
    """The run folder prepare and the embedding stage would leave: the files table, each shard's documents and
    chunk rows with their vector, and its marker. Every row of a shard gets the first bucket of its range, so
    snapshot order is shard, then chunk id."""
    import polars as pl

    from pipeline.corpus.files import DOCUMENTS_SCHEMA, FILES_SCHEMA
    from pipeline.corpus.sharding import bucket_range
    from pipeline.jobs.shards import LIVE_ROW
    from pipeline.storage.backend import Storage
    from pipeline.storage.layout import DOCUMENTS, MARKER, run_files_key, shard_key
    from pipeline.storage.tables import write_parquet

    storage = Storage(str(root))
    write_parquet(storage, run_files_key("bench"), pl.DataFrame(
        [{"url": "synthetic", "size": 0, "stamp": "", "read": n, "accepted": n, "quarantined": 0, "blank_lines": 0,
          "unread": False}], schema=FILES_SCHEMA))
    for shard, (a, b) in enumerate(shard_rows(n, shards)):
        ids = [f"c{i:010d}" for i in range(a, b)]
        write_parquet(storage, shard_key("bench", shard, DOCUMENTS), pl.DataFrame(
            {"doc_id": ids, "bucket": [bucket_range(shard, shards)[0]] * len(ids), "source": ["synthetic"] * len(ids),
             "position": range(a, b), "content_hash": ids}, schema=DOCUMENTS_SCHEMA))
        vectors = shard_vectors(mixture, a, b, shard, seed)
        for start in range(a, b, BLOCK):  # one chunks and one vectors part per block, as a build writes them
            end = min(start + BLOCK, b)
            ids = [f"c{i:010d}" for i in range(start, end)]
            table = pl.DataFrame({"chunk_id": [f"{d}#0" for d in ids], "doc_id": ids,
                                  "chunk_index": pl.Series([0] * len(ids), dtype=pl.UInt32),
                                  "start": pl.Series([0] * len(ids), dtype=pl.UInt32),
                                  "end": pl.Series([1] * len(ids), dtype=pl.UInt32),
                                  "n_tokens": pl.Series([1] * len(ids), dtype=pl.UInt32),
                                  "chunk_hash": ids, "doc_hash": ids, "title": [""] * len(ids),
                                  "bucket": pl.Series([bucket_range(shard, shards)[0]] * len(ids), dtype=pl.UInt16),
                                  LIVE_ROW: pl.Series([None] * len(ids), dtype=pl.Int64)})  # a full build's
            write_parquet(storage, shard_key("bench", shard, f"chunks/{start:012d}.parquet"), table)
            write_parquet(storage, shard_key("bench", shard, f"vectors/{start:012d}.parquet"), table.select(
                "chunk_hash", pl.Series("vector", vectors[start - a:end - a], dtype=pl.Array(pl.Float32,
                                                                                               vectors.shape[1]))))
        storage.write_bytes(shard_key("bench", shard, MARKER), json.dumps({"chunks": b - a}).encode())


def build(root: Path, n: int, shards: int, dims: int, out: Path, cpus_per_actor: float = 1.0) -> None:
    """The driver: the pipeline's index stage on Ray tasks, then the commit; reports timings and its peak RSS."""
    from operators.cluster import shutdown_ray
    from operators.executor import RayExecutor
    from pipeline.config_loader import parse_config
    from pipeline.jobs.build import build_indexes
    from pipeline.jobs.plan import BuildPlan
    from pipeline.jobs.prepare import PreparedRun, ShardInput
    from pipeline.jobs.worker import peak_rss_mb
    from pipeline.snapshots.publishing import claim, commit
    from pipeline.storage.backend import Storage

    start = time.perf_counter()
    cfg = parse_config({"index_name": "bench", "corpus": {"source": "none"}, "storage": {"root": str(root)},
                        "index": {"variants": ["ivfpq"]},
                        "run": {"shards": shards, "cpus_per_actor": cpus_per_actor}})  # the training task's CPUs
    storage = Storage(str(root))
    rows = {s: b - a for s, (a, b) in enumerate(shard_rows(n, shards))}
    prepared = PreparedRun("bench", list(range(shards)), rows, {"chunks": n, "max_chunks_per_doc": 1}, {}, {})
    claim(storage, "bench", "v1", "bench")
    target = storage.child("snapshots/bench/v1")
    staged = build_indexes(cfg, storage, prepared, target, BuildPlan(ShardInput(None), None, "benchmark"), dims,
                           RayExecutor())
    commit(storage, "bench", "v1", staged.files, {"index": staged.params, "counts": prepared.counts})
    seconds = round(time.perf_counter() - start, 2)
    shutdown_ray()
    out.write_text(json.dumps({"seconds": seconds, "driver_peak_rss_mib": peak_rss_mb(),
                               "files": staged.files, "params": staged.params}))


def rescored(index, store: np.ndarray, queries: np.ndarray, candidates: int = 100) -> np.ndarray:
    """Top 10 after re-scoring the index's top `candidates` with the stored (fp16) vectors, as the pipeline's
    `+rescore` modes do."""
    _, cand = index.search(queries, candidates)
    found = np.empty((len(queries), 10), dtype=np.int64)
    for s in range(0, len(queries), 64):  # bounded temporaries: 64 x candidates x dims floats
        c = cand[s:s + 64]
        scores = np.einsum("qd,qkd->qk", queries[s:s + 64], store[np.maximum(c, 0)].astype(np.float32))
        scores[c < 0] = -np.inf
        found[s:s + 64] = np.take_along_axis(c, np.argsort(-scores, axis=1)[:, :10], axis=1)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="vectors")
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--subset", type=int, default=1_000_000, help="rows of the in-memory reference build")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries")
    parser.add_argument("--centres", type=int, default=4000, help="mixture components (topics)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0,
                        help="run.cpus_per_actor: the CPUs (and FAISS threads) of the one training task")
    parser.add_argument("--driver", type=Path, help=argparse.SUPPRESS)  # internal: run the build step and exit
    args = parse_args(parser)
    if args.smoke:
        vars(args).update(SMOKE)
    root = args.out / "index-build-store"
    if args.driver:
        build(root, args.n, args.shards, args.dims, args.driver, args.cpus_per_actor)
        return 0
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    from pipeline.index.faiss_ops import from_bytes
    from pipeline.snapshots.snapshot import Snapshot

    t: dict[str, float] = {}

    def lap(name: str, start: float) -> None:
        t[name] = round(time.perf_counter() - start, 2)
        print(f"{name}: {t[name]:.1f} s", flush=True)

    shutil.rmtree(root, ignore_errors=True)
    mixture = Mixture(args.dims, args.centres, args.seed)
    start = time.perf_counter()
    write_shards(root, mixture, args.n, args.shards, args.seed)
    lap("write shard vector files", start)

    start = time.perf_counter()
    report_file = args.out / "index_build.driver.json"
    subprocess.run([sys.executable, __file__, "--driver", str(report_file), "--out", str(args.out),
                    "--n", str(args.n), "--shards", str(args.shards), "--dims", str(args.dims),
                    "--cpus-per-actor", str(args.cpus_per_actor)], check=True)
    driver = json.loads(report_file.read_text())
    lap("index stage (driver process, Ray tasks)", start)

    queries = mixture.sample(args.queries, args.seed + 2)

    def blocks(limit: int) -> Iterator[np.ndarray]:
        for shard, (a, b) in enumerate(shard_rows(args.n, args.shards)):
            if a >= limit:
                return
            yield shard_vectors(mixture, a, b, shard, args.seed)[:limit - a]

    snap = Snapshot.open(str(root / "snapshots" / "bench"))
    ondisk, store = snap.index("ivfpq"), snap.rescore_store()
    subset = min(args.subset, args.n)
    # in-memory builds from the snapshot's own training (so the same centroids and codebooks): all --n rows, filled
    # as the ground truth's blocks stream past, and the first --subset rows
    memory, memory_subset = from_bytes(snap.trained("ivfpq")), from_bytes(snap.trained("ivfpq"))

    def filling(source: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for block in source:
            memory.add(block)
            yield block

    start = time.perf_counter()
    _, truth = knn_ground_truth(queries, filling(blocks(args.n)), 10, metric_type=faiss.METRIC_INNER_PRODUCT)
    _, truth_subset = knn_ground_truth(queries, blocks(subset), 10, metric_type=faiss.METRIC_INNER_PRODUCT)
    lap("exact ground truth (and the in-memory fill)", start)

    start = time.perf_counter()
    memory_subset.add(np.concatenate(list(blocks(subset))))
    recall = {"out_of_core": round(recall_at_10(rescored(ondisk, store, queries), truth), 4),
              "in_memory": round(recall_at_10(rescored(memory, store, queries), truth), 4),
              "in_memory_subset": round(recall_at_10(rescored(memory_subset, store[:subset], queries), truth_subset),
                                        4)}
    # a larger corpus puts more near neighbours into each probed list: how many candidates to re-score to reach
    # the subset's recall at --n
    depth = {c: round(recall_at_10(rescored(ondisk, store, queries, c), truth), 4) for c in DEPTHS}
    lap("search and rescore", start)

    gap = round(abs(recall["out_of_core"] - recall["in_memory"]), 4)
    gap_subset = round(recall["in_memory_subset"] - recall["out_of_core"], 4)
    report = {
        "n": args.n, "dims": args.dims, "shards": args.shards, "subset": subset, "queries": args.queries,
        "plan": driver["params"]["variants"]["ivfpq"], "seconds": t, "index_stage_seconds": driver["seconds"],
        "cpus_per_actor": args.cpus_per_actor,
        "driver_peak_rss_mib": driver["driver_peak_rss_mib"],
        "snapshot_mib": {name: round(f["bytes"] / 2**20, 1) for name, f in driver["files"].items()},
        "recall@10_rescored_top100": recall, "recall@10_by_rescored_candidates": depth,
        "recall_gap": gap, "recall_gap_to_subset": gap_subset,
        "targets": {"driver_peak_rss_under_2gb": driver["driver_peak_rss_mib"] < 2048,
                    "recall_within_0.01_of_in_memory": gap <= 0.01,
                    "recall_within_0.01_of_subset": abs(gap_subset) <= 0.01},
    }
    write_report(args, "index_build", report, markdown(report))
    if not args.smoke:
        shutil.rmtree(root, ignore_errors=True)  # tens of GB at full size
    return 0


def markdown(r: dict) -> str:
    p, rec, t = r["plan"], r["recall@10_rescored_top100"], r["targets"]
    return "\n".join([
        f"# Index stage out of core: {r['n']:,} x {r['dims']} vectors in {r['shards']} shards", "",
        f"`{p['factory']}`, nprobe {p['nprobe']}, trained once on {p['train_points']:,} points; fp16 rescoring "
        f"store. Files: " + ", ".join(f"{k} {v} MiB" for k, v in r["snapshot_mib"].items()) + ".", "",
        "| step | seconds |", "|---|---|", *[f"| {k} | {v} |" for k, v in r["seconds"].items()], "",
        f"Driver peak RSS (index stage: training, Ray tasks, merge, commit): **{r['driver_peak_rss_mib']:,.0f} MiB** "
        f"(target < 2,048: {r['targets']['driver_peak_rss_under_2gb']}).", "",
        "| Recall@10 vs exact, top 100 re-scored with fp16 | value |", "|---|---|",
        f"| out-of-core build, all {r['n']:,} rows | {rec['out_of_core']:.4f} |",
        f"| in-memory build of all {r['n']:,} rows, same training | {rec['in_memory']:.4f} |",
        f"| in-memory build of the first {r['subset']:,} rows, same training (against exact search over them) | "
        f"{rec['in_memory_subset']:.4f} |", "",
        f"Out of core against in memory, same rows: gap {r['recall_gap']:.4f} (target <= 0.01: "
        f"{t['recall_within_0.01_of_in_memory']}). Against the {r['subset']:,}-row subset: "
        f"{r['recall_gap_to_subset']:.4f} lower (target <= 0.01: {t['recall_within_0.01_of_subset']}).", "",
        f"Out-of-core Recall@10 over all {r['n']:,} rows by candidates re-scored: " +
        ", ".join(f"{c}: {v:.4f}" for c, v in r["recall@10_by_rescored_candidates"].items()) + ".", ""])


if __name__ == "__main__":
    raise SystemExit(main())
