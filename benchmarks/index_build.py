"""IVF-PQ index build on synthetic embedding-like vectors: single-process build vs the planned parallel build
(Ray parts), time and Recall@10 against exact search.

Data: a seeded Gaussian mixture shaped like sentence embeddings rather than uniform noise: a few thousand
topic centres with a shared mean direction (embeddings of one model share a common component), anisotropic
noise with a power-law spectrum in a random basis (embedding spectra decay, so the intrinsic dimension is
well below `dims`), topic sizes from a log-normal, every vector L2-normalised float32. Held-out queries are
drawn from the same mixture with another seed. Ground truth: exact inner product (`faiss.IndexFlatIP`
over database blocks, faiss.contrib's `knn_ground_truth`).

Both builds use the plan of `pipeline.index_plan.plan_ivfpq(N, dims)` and the same `train_ivfpq` on the
driver (measured once: it is the same call with the same seed in both), then
    serial:   `index.add(vectors)` in this process (FAISS uses every core through OpenMP)
    parallel: `operators.index_build.add_parts` (Ray tasks of 1 CPU each, one row range per task, vectors
              shipped through the object store), then `merge_parts` in row order on the driver,
exactly what `parallel_ivfpq` (index.parallel_parts > 1 in a config) runs. The report says whether the two
indexes' serialized bytes are equal, their Recall@10 vs exact at the planned nprobe (and a small nprobe sweep),
and the driver's peak RSS. Writes benchmarks/out/index_build.{json,md}.

Usage (from the repository root):
    /work/main/.venv/bin/python benchmarks/index_build.py                        # 1M x 384, 2 parts
    /work/main/.venv/bin/python benchmarks/index_build.py --n 100000 --parts 2   # quick check (~1 min)
    /work/main/.venv/bin/python benchmarks/index_build.py --smoke --out /tmp/x   # 2,000 x 384, 100 queries
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# This checkout's code, in the driver and (through PYTHONPATH, which benchmarks.common sets) in Ray workers,
# even where the venv's editable install points at another checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_args, write_report  # noqa: E402

SMOKE = {"n": 2000, "queries": 100, "centres": 50}  # --smoke: 51 lists, 7-bit PQ, trained on every vector
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


def rescored_recall_at_10(index, x: np.ndarray, queries: np.ndarray, truth: np.ndarray, candidates: int) -> float:
    """Recall@10 after re-ranking the index's top `candidates` by the exact inner product (the pipeline's
    `+rescore` modes do this with fp16 vectors)."""
    _, cand = index.search(queries, candidates)
    found = np.empty((len(queries), 10), dtype=np.int64)
    for s in range(0, len(queries), 256):  # bounded temporaries: 256 x candidates x dims floats
        c = cand[s:s + 256]
        scores = np.einsum("qd,qkd->qk", queries[s:s + 256], x[np.maximum(c, 0)])
        scores[c < 0] = -np.inf
        found[s:s + 256] = np.take_along_axis(c, np.argsort(-scores, axis=1)[:, :10], axis=1)
    return recall_at_10(found, truth)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--parts", type=int, default=2, help="parallel add tasks (2 on this 2-core machine)")
    parser.add_argument("--queries", type=int, default=2000, help="held-out queries")
    parser.add_argument("--centres", type=int, default=4000, help="mixture components (topics)")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args(parser)
    if args.smoke:
        vars(args).update(SMOKE)
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    from operators.cluster import ensure_ray, shutdown_ray
    from operators.ivfpq import add_parts
    from pipeline.config import IvfConfig
    from pipeline.index.faiss_ops import merge_parts, to_bytes, train_ivfpq
    from pipeline.index.plan import plan_ivfpq

    t: dict[str, float] = {}
    rss: dict[str, float] = {}

    def lap(name: str, start: float) -> None:
        t[name] = round(time.perf_counter() - start, 2)
        rss[name] = round(peak_rss_mib(), 1)
        print(f"{name}: {t[name]:.1f} s (peak RSS so far {rss[name]:.0f} MiB)", flush=True)

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    mixture = Mixture(args.dims, args.centres, args.seed)
    x = mixture.sample(args.n, args.seed + 1)
    queries = mixture.sample(args.queries, args.seed + 2)
    lap("generate data", start)

    start = time.perf_counter()
    _, truth = knn_ground_truth(queries, (x[i:i + BLOCK] for i in range(0, len(x), BLOCK)), 10,
                                metric_type=faiss.METRIC_INNER_PRODUCT)
    lap("exact ground truth", start)

    plan = plan_ivfpq(args.n, args.dims, IvfConfig())
    print(f"plan: {plan.factory}, nprobe {plan.nprobe}, {plan.train_points} training points", flush=True)

    start = time.perf_counter()
    serial = train_ivfpq(x, plan, seed=args.seed)
    lap("train (driver, shared)", start)
    trained = to_bytes(serial)

    start = time.perf_counter()
    serial.add(x)
    lap("add serial (FAISS OpenMP)", start)

    start = time.perf_counter()
    ensure_ray()
    lap("ray start", start)
    start = time.perf_counter()
    parts = add_parts(trained, x, args.parts)
    lap(f"add parallel ({args.parts} Ray tasks)", start)
    start = time.perf_counter()
    merged = merge_parts(trained, parts)
    lap("merge parts", start)
    shutdown_ray()

    serial_bytes, merged_bytes = to_bytes(serial), to_bytes(merged)
    identical = serial_bytes == merged_bytes
    serial_found = serial.search(queries, 10)[1]
    merged_found = merged.search(queries, 10)[1]
    sweep = []
    ivf = faiss.extract_index_ivf(serial)
    for nprobe in sorted({max(plan.nprobe // 4, 1), plan.nprobe, min(plan.nprobe * 4, plan.nlist)}):
        ivf.nprobe = nprobe
        begin = time.perf_counter()
        found = serial.search(queries, 10)[1]
        ms = (time.perf_counter() - begin) * 1000 / len(queries)
        sweep.append({"nprobe": nprobe, "recall@10_vs_exact": round(recall_at_10(found, truth), 4),
                      "ms_per_query": round(ms, 3)})
    ivf.nprobe = plan.nprobe

    scores = np.einsum("qd,qkd->qk", queries[:200], x[truth[:200]])
    add_serial, add_parallel = t["add serial (FAISS OpenMP)"], t[f"add parallel ({args.parts} Ray tasks)"]
    train, merge, ray_start = t["train (driver, shared)"], t["merge parts"], t["ray start"]
    report = {
        "n": args.n, "dims": args.dims, "queries": args.queries, "centres": args.centres, "parts": args.parts,
        "machine": {"cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
                    "gpus": faiss.get_num_gpus(), "faiss": faiss.__version__, "python": platform.python_version(),
                    # other people's jobs share these cores: a load above the CPU count slows every step
                    "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "plan": plan.to_dict(),
        "seconds": t,
        "totals": {"serial": round(train + add_serial, 2), "parallel": round(train + add_parallel + merge, 2),
                   "parallel_with_ray_start": round(train + ray_start + add_parallel + merge, 2)},
        "ratio_add_parallel_over_serial": round((add_parallel + merge) / add_serial, 3),
        "bytes_identical": identical,
        "sha256": {"serial": hashlib.sha256(serial_bytes).hexdigest(),
                   "parallel": hashlib.sha256(merged_bytes).hexdigest()},
        "index_mib": round(len(serial_bytes) / 2**20, 1),
        "recall@10_vs_exact": {"serial": round(recall_at_10(serial_found, truth), 4),
                               "parallel": round(recall_at_10(merged_found, truth), 4)},
        "same_results": bool(np.array_equal(serial_found, merged_found)),
        "recall@10_vs_exact_rescored_top100": round(rescored_recall_at_10(serial, x, queries, truth, 100), 4),
        "nprobe_sweep_serial": sweep,
        # how hard the data is: the exact 10th neighbour's similarity against the first's
        "exact_top10_mean_cosine": {"rank1": round(float(scores[:, 0].mean()), 4),
                                    "rank10": round(float(scores[:, 9].mean()), 4)},
        "driver_peak_rss_mib_after": rss,
    }
    write_report(args, "index_build", report, markdown(report))
    return 0 if identical else 1  # a correctness check, not a target: it holds at every size


def markdown(r: dict) -> str:
    t, p, m = r["seconds"], r["parts"], r["machine"]
    add_parallel = t[f"add parallel ({p} Ray tasks)"]
    rows = [
        ("train (coarse k-means + PQ codebooks)", t["train (driver, shared)"], t["train (driver, shared)"]),
        ("Ray start", "", t["ray start"]),
        ("add", t["add serial (FAISS OpenMP)"], add_parallel),
        ("merge parts in row order", "", t["merge parts"]),
        ("**total** (without Ray start)", r["totals"]["serial"], r["totals"]["parallel"]),
    ]
    recall = r["recall@10_vs_exact"]
    return "\n".join([
        f"# IVF-PQ build: {r['n']:,} x {r['dims']} synthetic vectors, {m['cpus']} CPUs, {m['gpus']} GPUs", "",
        f"`{r['plan']['factory']}`, nprobe {r['plan']['nprobe']}, trained on {r['plan']['train_points']:,} points; "
        f"{r['queries']:,} held-out queries; index {r['index_mib']} MiB.", "",
        f"| step (s) | serial (`index.add`, {m['faiss_threads']} OpenMP threads) | parallel ({p} Ray tasks x 1 CPU) |",
        "|---|---|---|",
        *[f"| {name} | {a} | {b} |" for name, a, b in rows],
        f"| Recall@10 vs exact | {recall['serial']:.4f} | {recall['parallel']:.4f} |", "",
        f"(parallel add + merge) / serial add: **{r['ratio_add_parallel_over_serial']}x** the time. "
        f"Serialized index bytes identical: **{r['bytes_identical']}** (sha256 {r['sha256']['serial'][:16]}...); "
        f"same top-10 for every query: {r['same_results']}. Re-ranking IVF-PQ's top 100 by the exact inner "
        f"product (what the `+rescore` modes do with fp16 vectors): Recall@10 "
        f"{r['recall@10_vs_exact_rescored_top100']:.4f}.", "",
        "| nprobe | Recall@10 vs exact | ms/query |", "|---|---|---|",
        *[f"| {s['nprobe']} | {s['recall@10_vs_exact']:.4f} | {s['ms_per_query']:.3f} |"
          for s in r["nprobe_sweep_serial"]], "",
        f"Data generation {t['generate data']} s, exact ground truth {t['exact ground truth']} s. Exact neighbours' "
        f"mean cosine: rank 1 {r['exact_top10_mean_cosine']['rank1']}, rank 10 "
        f"{r['exact_top10_mean_cosine']['rank10']}. Driver peak RSS {max(r['driver_peak_rss_mib_after'].values()):.0f}"
        f" MiB. Load average (1 min) before/after: {m['load_1min_before_after']}.", ""])


if __name__ == "__main__":
    raise SystemExit(main())
