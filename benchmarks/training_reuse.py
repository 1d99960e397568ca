"""When an incremental build may keep the live version's IVF training, measured on corpora that turned over.

An incremental reindex reuses live's coarse centroids and PQ codebooks while the plan is unchanged, which past ~750k
vectors (nlist at its cap) is forever. Since 2026-12-06 each build measures how well that training fits its own
training sample (PQ reconstruction error, relative to the vectors' norms) and trains again once the error exceeds
`index.ivf.max_reuse_error_ratio` times the error measured when it was trained (pipeline/index/variants.py).
The same for binary-ivf since 2026-12-07: its fit is the sign codes' Hamming distance to their nearest centroid, its
limit `index.ivf.max_reuse_hamming_ratio`, and its recall that of its own scoring (100 Hamming candidates re-ranked
by the float query, as a search with the default re-scoring depth fetches them).

Here, v1 is trained on N vectors; then a share of them is replaced, either by documents on the same topics or by
documents on new topics. Synthetic by default (Gaussian topics; new ones vary most where the old ones hardly do);
with --vectors, real ones cut in two topics by 2-means: a snapshot's vectors.f16.npy, e.g. full SciFact's after
`embedpipe run configs/scifact-full.yaml` (.embedpipe/snapshots/scifact/<version>/vectors.f16.npy). For each case,
with the pipeline's own `build_variant`: the error ratio the build compared with the limit, its decision, Recall@10
against exact search (500 of the corpus's vectors as queries, codes without re-scoring) with the old training
kept and with a fresh one, and the seconds of each build. Target: no build keeps a training that loses more than
0.02 Recall@10 against a fresh one; a training redone where keeping it lost less is counted too (seconds spent,
nothing lost). Writes benchmarks/out/training_reuse.{json,md} (ivfpq) and training_reuse_binary-ivf.{json,md};
--variant measures one of them only. --smoke: 3,000 synthetic vectors of 64 dims.

Usage: .venv/bin/python benchmarks/training_reuse.py [--n 200000] [--dims 384] [--vectors FILE.npy]
       [--variant ivfpq|binary-ivf] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_args, write_report  # noqa: E402

SHARES = (0.1, 0.25, 0.5, 1.0)
VARIANTS = ("ivfpq", "binary-ivf")
ALLOWED_LOSS = 0.02


def topics(centres: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n unit vectors around randomly chosen centres (noise about half a centre's length)."""
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), n)] + 0.45 * rng.standard_normal((n, centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(n: int, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """v1's vectors, and as many arriving on the same topics and on new ones (n / 20 topics, ~20 vectors each; new
    topics vary most where the old ones hardly do)."""
    rng = np.random.default_rng(0)
    weights = np.where(np.arange(dims) < dims // 2, 1.0, 0.2)
    old = rng.standard_normal((n // 20, dims)) * weights
    new = rng.standard_normal((n // 20, dims)) * weights[::-1]
    return topics(old, n, seed=1), topics(old, n, seed=2), topics(new, n, seed=3)


def split_by_topic(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real vectors (a snapshot's vectors.f16.npy) cut in two by 2-means: v1 holds half of the larger side, the other
    half arrives on the same topics, the smaller side as new topics (n: the smallest of the three)."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    kmeans = faiss.Kmeans(x.shape[1], 2, niter=20, seed=1, spherical=True)
    kmeans.train(x)
    side = kmeans.index.search(x, 1)[1].ravel()
    rng = np.random.default_rng(0)
    big, small = sorted((rng.permutation(x[side == s]) for s in (0, 1)), key=len, reverse=True)
    n = min(len(big) // 2, len(small))
    return big[:n], big[n:2 * n], small[:n]


def recall_at_10(variant, x: np.ndarray, truth: np.ndarray, queries: np.ndarray) -> float:
    _, found = variant.candidates(x[queries], 100 if variant.spec.kind.binary else 10, keep=10)
    return round(float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--vectors", type=Path, help="real vectors instead (.npy, e.g. a snapshot's vectors.f16.npy), "
                                                     "cut in two topics by 2-means")
    parser.add_argument("--variant", choices=VARIANTS, action="append", help="one of them only (default: each)")
    args = parse_args(parser)

    if args.vectors:
        live, same, new = split_by_topic(np.load(args.vectors, allow_pickle=False))
        data = f"{args.vectors.name} cut in two topics by 2-means"
    else:
        live, same, new = synthetic(*((3000, 64) if args.smoke else (args.n, args.dims)))
        data = "synthetic Gaussian topics"
    met = [measure(args, name, live, same, new, data) for name in args.variant or VARIANTS]
    return 0 if args.smoke or all(met) else 1  # a smoke run's few vectors say nothing of recall


def measure(args: argparse.Namespace, name: str, live: np.ndarray, same: np.ndarray, new: np.ndarray,
            data: str) -> bool:
    """One variant's v1 trained on `live`, then each corpus built keeping and not keeping it; writes its report and
    says whether no kept training lost recall."""
    from pipeline.config import IndexConfig
    from pipeline.index.build_variants import build_variant, train_variants, training_rows
    from pipeline.index.faiss_ops import build_exact, from_bytes
    from pipeline.index.training import FULL_BUILD, Training
    from pipeline.index.variants import Variant, VariantSpec

    n, dims = live.shape
    cfg, spec = IndexConfig(variants=[name]), VariantSpec.parse(name)
    limit_setting = spec.kind.reuse_limit
    start = time.perf_counter()
    [v1] = train_variants(cfg, n, dims, live[training_rows(n, cfg, seed=0)], seed=0)
    trained_s = round(time.perf_counter() - start, 2)
    training = Training({name: (v1.empty, {**v1.params, "trained_in": "v1"})}, why="same model and plan")
    queries = np.sort(np.random.default_rng(0).choice(n, min(n, 500), replace=False))

    runs = []
    for arriving, label in ((same, "same topics"), (new, "new topics")):
        for share in SHARES:
            k = int(share * n)
            # in random order, as a snapshot's rows are (bucket order: a hash of the document id), so the rows a
            # fit is measured on (faiss_ops.fit_rows: the sample's first) hold the arrived vectors in their share
            corpus = np.concatenate([live[k:], arriving[:k]])[np.random.default_rng(k).permutation(n)]
            _, truth = build_exact(corpus).search(corpus[queries], 10)
            start = time.perf_counter()
            chosen, params = build_variant(spec, corpus, cfg, seed=0, training=training)
            chosen = Variant.load(name, chosen, params)
            chosen_s = round(time.perf_counter() - start, 2)
            kept_training = "trained_in" in params
            if kept_training:  # what a fresh training would have given, for comparison
                start = time.perf_counter()
                fresh = Variant.load(name, *build_variant(spec, corpus, cfg, seed=0, training=FULL_BUILD))
                fresh_s, kept, kept_s = round(time.perf_counter() - start, 2), chosen, chosen_s
            else:
                fresh, fresh_s = chosen, chosen_s
                start = time.perf_counter()
                kept = Variant.load(name, *build_variant(spec, corpus, IndexConfig(
                    variants=[name], ivf={limit_setting: 1e9}), seed=0, training=training))
                kept_s = round(time.perf_counter() - start, 2)
            recall_kept, recall_fresh = (recall_at_10(ix, corpus, truth, queries) for ix in (kept, fresh))
            loss = round(recall_fresh - recall_kept, 4)
            # the ratio the build compared with the limit: v1's training on this corpus's training sample
            error_ratio = spec.kind.fit_error(from_bytes(v1.empty, spec.kind.binary),
                                              corpus[training_rows(n, cfg, seed=0)]) / v1.params["reconstruction_error"]
            runs.append({"arrived": label, "share_replaced": share, "error_ratio": round(error_ratio, 3),
                         "decision": "reused" if kept_training else "retrained",
                         "recall@10_kept_training": recall_kept, "recall@10_fresh_training": recall_fresh,
                         "recall_lost_by_keeping": loss, "seconds_kept": kept_s, "seconds_fresh": fresh_s})
            print(runs[-1], flush=True)
    # a reuse that lost recall is the failure; a training redone where keeping lost little only costs seconds
    lossy = [r for r in runs if r["decision"] == "reused" and r["recall_lost_by_keeping"] > ALLOWED_LOSS]
    needless = [r for r in runs if r["decision"] == "retrained" and r["recall_lost_by_keeping"] <= ALLOWED_LOSS]
    met = not lossy
    report = {"data": data, "n": n, "dims": dims, "factory": v1.params["factory"],
              "limit_setting": limit_setting, "limit": getattr(cfg.ivf, limit_setting),
              "v1_training_s": trained_s, "v1_reconstruction_error": v1.params["reconstruction_error"],
              "runs": runs, "allowed_loss": ALLOWED_LOSS, "lossy_reuses": len(lossy),
              "needless_retrainings": len(needless), "met": met}
    md = "\n".join([
        f"# {name} training kept or trained again: {n:,} x {dims} vectors ({data}), {v1.params['factory']}", "",
        f"v1 trained in {trained_s} s (reconstruction error {v1.params['reconstruction_error']}); a build keeps "
        f"its training while its sample's error is <= {getattr(cfg.ivf, limit_setting)}x that "
        f"(index.ivf.{limit_setting}).", "",
        "| arrived | share replaced | error ratio | decision | Recall@10 kept | Recall@10 fresh | lost by keeping "
        "| s kept | s fresh |", "|---|---|---|---|---|---|---|---|---|",
        *[f"| {r['arrived']} | {r['share_replaced']:.0%} | {r['error_ratio']} | {r['decision']} | "
          f"{r['recall@10_kept_training']} | {r['recall@10_fresh_training']} | {r['recall_lost_by_keeping']} | "
          f"{r['seconds_kept']} | {r['seconds_fresh']} |" for r in runs], "",
        f"Training kept where keeping it lost more than {ALLOWED_LOSS} Recall@10: **{len(lossy)}** of {len(runs)} "
        f"(target 0: **{'met' if met else 'not met'}**); trained again where keeping lost no more than that: "
        f"{len(needless)} (seconds spent, nothing lost).", ""])
    write_report(args, "training_reuse" if name == "ivfpq" else f"training_reuse_{name}", report, md)
    return met


if __name__ == "__main__":
    raise SystemExit(main())
