"""IVF-PQ trained on the GPU against the same training on the CPU, for 1M x 384 synthetic embedding-like vectors.

The pipeline's `train_ivfpq` (pipeline/index/faiss_ops.py) with the planned parameters (4,096 lists, PQ48x8 and a
200,000-vector sample at 1M): on the GPU the coarse k-means assigns points through FAISS on CUDA, on the CPU through
FAISS's own kernels on every core. Both are trained first, then each is filled with all N vectors on the CPU, as the
index stage fills shards, and searched with held-out queries: Recall@10 against exact search, raw and with the top 100
re-scored with the fp16 store (the `+rescore` modes). The two must recall alike (GPU float sums differ from CPU
ones, so the indexes are equivalent, not byte-identical); the GPU's gain is the training time. The GPU's first use
in a process (CUDA's start, loading or compiling kernels) is timed apart.

Vectors and queries come from `benchmarks/index_build.py`'s Gaussian mixture. Where faiss sees no GPU (faiss-cpu,
or --smoke on a CPU machine) only the CPU training runs and the report says so. benchmarks/gpu_check.sh runs it.
Writes benchmarks/out/gpu_index.{json,md}.

Usage: .venv/bin/python benchmarks/gpu_index.py [--n 1000000] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_args, write_report  # noqa: E402
from benchmarks.index_build import Mixture, recall_at_10, rescored  # noqa: E402

SMOKE = {"n": 20_000, "queries": 50, "centres": 50}


def gpu_name() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "--id=0"]
    return subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip() or None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors")
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries")
    parser.add_argument("--centres", type=int, default=4000, help="mixture components (topics)")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args(parser)
    if args.smoke:
        vars(args).update(SMOKE)
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    from pipeline.config import IvfConfig
    from pipeline.index.faiss_ops import train_ivfpq
    from pipeline.index.plan import plan_ivfpq

    start = time.perf_counter()
    mixture = Mixture(args.dims, args.centres, args.seed)
    vectors = mixture.sample(args.n, args.seed + 1)
    queries = mixture.sample(args.queries, args.seed + 2)
    store = vectors.astype(np.float16)  # what the pipeline keeps for re-scoring
    blocks = (vectors[s:s + 100_000] for s in range(0, args.n, 100_000))
    _, truth = knn_ground_truth(queries, blocks, 10, metric_type=faiss.METRIC_INNER_PRODUCT)
    data_s = round(time.perf_counter() - start, 2)
    plan = plan_ivfpq(args.n, args.dims, IvfConfig())
    gpus = faiss.get_num_gpus()
    devices = ["gpu", "cpu"] if gpus else ["cpu"]
    first_use_s = None
    if gpus:  # CUDA's start and any kernel compilation for this GPU, once per process: kept out of the training time
        start = time.perf_counter()
        faiss.Kmeans(args.dims, 64, niter=2, gpu=True, seed=args.seed).train(vectors[:20_000])
        first_use_s = round(time.perf_counter() - start, 2)
    # Both trainings first, then the fills: the training times are what a GPU run is for, so a run cut short by its
    # time limit (the fills are the longest steps) has already printed them
    trained, runs = {}, {}
    for device in devices:
        start = time.perf_counter()
        trained[device] = train_ivfpq(vectors, plan, args.seed, use_gpu=device == "gpu")
        runs[device] = {"train_s": round(time.perf_counter() - start, 2)}
        print(f"{device}: trained in {runs[device]['train_s']} s", flush=True)
    for device, index in trained.items():
        start = time.perf_counter()
        index.add(vectors)
        runs[device]["add_s"] = round(time.perf_counter() - start, 2)
        _, found = index.search(queries, 10)
        runs[device] |= {"recall@10": round(recall_at_10(found, truth), 4),
                         "recall@10_rescored_top100": round(recall_at_10(rescored(index, store, queries), truth), 4)}
        print(f"{device}: {runs[device]}", flush=True)
    report = {"n": args.n, "dims": args.dims, "queries": args.queries, "plan": plan.to_dict(), "gpus": gpus,
              "gpu": gpu_name() if gpus else None, "faiss": faiss.__version__, "data_s": data_s,
              "gpu_first_use_s": first_use_s, "runs": runs,
              "train_speedup_gpu_over_cpu": round(runs["cpu"]["train_s"] / runs["gpu"]["train_s"], 2) if gpus
              else None,
              "recall_gap_gpu_minus_cpu": round(runs["gpu"]["recall@10_rescored_top100"]
                                                - runs["cpu"]["recall@10_rescored_top100"], 4) if gpus else None}
    rows = "\n".join(f"| {d} | {r['train_s']} | {r['add_s']} | {r['recall@10']} | {r['recall@10_rescored_top100']} |"
                     for d, r in runs.items())
    gpu_line = (f"GPU: {report['gpu']} ({gpus} seen by faiss {faiss.__version__}; its first use {first_use_s} s, "
                f"not counted); training "
                f"{report['train_speedup_gpu_over_cpu']}x faster than on the CPU, re-scored recall "
                f"{report['recall_gap_gpu_minus_cpu']:+} against the CPU's."
                if gpus else "No GPU seen by faiss: the CPU training only.")
    md = (f"# IVF-PQ training on GPU and CPU: {args.n:,} x {args.dims}\n\n"
          f"Plan: {plan.factory}, {plan.train_points:,} training vectors, nprobe {plan.nprobe}. Filled on the CPU.\n\n"
          "| trained on | train s | add s | Recall@10 | Recall@10, top 100 re-scored |\n|---|---|---|---|---|\n"
          f"{rows}\n\n{gpu_line}\n")
    write_report(args, "gpu_index", report, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
