"""Hybrid retrieval on the full SciFact corpus (5,183 abstracts, 300 test queries): BM25 and dense search fused,
reproduced through the real flow from a published snapshot.

Runs the `reindex` flow (configs/scifact-full.yaml: MiniLM, whole documents; variants exact, int8, binary and bm25)
under --out/hybrid-store, built afresh each call (its run id is fixed, for its markers' seconds: a store kept from the
last call would hold that run finished). Then opens the published snapshot and measures, from its files: MiniLM exact,
bm25, reciprocal-rank fusion and convex fusion (nDCG@10, Recall@100), hybrid over binary+rescore and int8; the weight
chosen by 5-fold cross-validation and its held-out score; and BM25's cost against MiniLM's for the same corpus:
indexing (the shards' analysis seconds, from their markers, plus the reduce step) and searching the 300 queries
(analysis included), each against the shards' embedding seconds (from their markers). Writes --out/hybrid.{json,md}.
--smoke: the same on 40 documents and 10 queries of the demo sample (Ray actors all the same), exit 0 whether or
not the targets are met (1 where the measured figures differ from the manifest's, as in a full run).

Usage: .venv/bin/python benchmarks/hybrid.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_args, smoke_overrides, write_report  # noqa: E402

CONFIG = "configs/scifact-full.yaml"
RUN_ID = "bench-hybrid"
TABLE = [("exact", "MiniLM exact"), ("bm25", "BM25 (bm25s)"), ("hybrid-rrf:exact", "reciprocal-rank fusion, k = 60"),
         ("hybrid:exact", "convex fusion of min-max normalised scores, 0.5 / 0.5"),
         ("hybrid:binary+rescore", "convex fusion over binary+rescore"), ("hybrid:int8", "convex fusion over int8")]
ISSUE = {"exact": (0.6451, 0.925), "bm25": (0.6791, 0.913), "hybrid-rrf:exact": (0.7144, 0.955),
         "hybrid:exact": (0.7326, 0.955)}


def shard_seconds(root: Path, marker: str) -> float:
    """The work seconds the run's shards recorded in their markers (_SUCCESS: embedding, _TERMS: bm25 analysis)."""
    return round(sum(json.loads(p.read_text())["seconds"] for p in root.glob(f"runs/{RUN_ID}/shards/*/{marker}")), 3)


def main() -> int:
    args = parse_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    root = args.out / "hybrid-store"  # not representations.py's store, which serve.py reuses
    shutil.rmtree(root, ignore_errors=True)  # a fresh build: its run id is reused from one call to the next
    overrides = {"storage.root": str(root), "run.run_id": RUN_ID, "run.keep_work": True,  # its markers' seconds
                 "index.variants": ["exact", "int8", "binary", "bm25"],
                 **(smoke_overrides(args.out / "smoke-corpus", docs=40) if args.smoke else {})}
    from flows.reindex import reindex
    from pipeline.config_loader import load_config
    from pipeline.quality.golden import golden_set_of
    from pipeline.quality.search import Searcher
    from pipeline.quality.tuning import tune_weight
    from pipeline.snapshots.snapshot import Snapshot

    summary = reindex(CONFIG, overrides).to_dict()  # PREFECT_API_URL's server, else Prefect's temporary one
    snapshot = Snapshot.open(summary["snapshot"])  # what was published, read back from its files
    golden = golden_set_of(load_config(CONFIG, overrides))
    searcher = Searcher.from_snapshot(snapshot)
    modes = [m for m, _ in TABLE]
    measured = searcher.evaluate(golden.queries, golden.qrels, 100, modes=modes)
    recorded = summary["evaluation"]["modes"]
    same_as_manifest = all(measured[m]["ndcg@10"] == recorded[m]["ndcg@10"] for m in modes)

    texts = [golden.queries[q] for q in golden.qrels if q in golden.queries]
    start = time.perf_counter()
    searcher.search(texts, 100, "bm25")  # analysis, scores, top chunks, documents
    search_s = round(time.perf_counter() - start, 3)
    tuning = tune_weight(searcher, golden.queries, golden.qrels, "exact", "ndcg@10", folds=5).to_dict()

    embed_s = shard_seconds(root, "_SUCCESS")
    analyse_s, reduce_s = shard_seconds(root, "_TERMS"), summary["counts"]["bm25_reduce_seconds"]
    index_s = round(analyse_s + reduce_s, 3)
    bm25 = snapshot.variant_params("bm25")
    timing = {"embed_shard_seconds": embed_s, "bm25_analyse_shard_seconds": analyse_s, "bm25_reduce_s": reduce_s,
              "bm25_index_s": index_s, "bm25_search_300_queries_s": search_s, "queries_searched": len(texts),
              "flow_stage_s": summary["timings_s"], "shards_reused": summary["counts"]["shards_skipped"],
              "bm25_index_bytes": bm25["index_bytes"], "bm25_terms": bm25["statistics"]["terms"]}
    exact = measured["hybrid:exact"]["ndcg@10"]
    checks = [("bm25 nDCG@10 >= 0.679", measured["bm25"]["ndcg@10"], measured["bm25"]["ndcg@10"] >= 0.679),
              ("hybrid:exact nDCG@10 >= 0.73 (default weight)", exact, exact >= 0.73)]
    checks += [(f"{m} within 0.002 of hybrid:exact", round(abs(measured[m]["ndcg@10"] - exact), 5),
                abs(measured[m]["ndcg@10"] - exact) <= 0.002) for m in ("hybrid:binary+rescore", "hybrid:int8")]
    checks += [(f"BM25 {what} < 10% of MiniLM embedding ({embed_s:.1f} s)", round(s / embed_s, 4), s < 0.1 * embed_s)
               for what, s in (("indexing", index_s), (f"search of {len(texts)} queries", search_s))]
    targets = [{"target": t, "measured": v, "met": bool(ok)} for t, v, ok in checks]
    table = [{"mode": m, "search": label, "ndcg@10": measured[m]["ndcg@10"], "recall@100": measured[m]["recall@100"],
              "issue": ISSUE.get(m)} for m, label in TABLE]
    report = {"snapshot": summary["snapshot"], "version": summary["version"], "docs": summary["counts"]["accepted"],
              "queries": measured["exact"]["queries"], "table": table, "same_as_manifest": same_as_manifest,
              "fusion": snapshot.manifest["index"]["fusion"], "bm25": {k: bm25[k] for k in ("scoring", "analyzer")},
              "tuning": tuning, "timing": timing, "targets": targets, "met": all(t["met"] for t in targets)}
    write_report(args, "hybrid", report, markdown(report))
    return 0 if same_as_manifest and (args.smoke or report["met"]) else 1  # a smoke run's figures can match too


def markdown(r: dict) -> str:
    t, tuning = r["timing"], r["tuning"]
    out = [f"# Hybrid retrieval on SciFact ({r['docs']:,} docs, {r['queries']} queries)", "",
           f"Snapshot `{r['version']}` (published by the reindex flow, measured from its files; the same figures as "
           f"its manifest: {r['same_as_manifest']}).", "",
           "| search | nDCG@10 | Recall@100 | issue 17 (nDCG@10 / Recall@100) |", "|---|---|---|---|"]
    def issue(x: dict) -> str:
        return "" if not x["issue"] else "{:.4f} / {:.3f}".format(*x["issue"])

    out += [f"| {x['search']} (`{x['mode']}`) | {x['ndcg@10']:.4f} | {x['recall@100']:.3f} | {issue(x)} |"
            for x in r["table"]]
    folds = ", ".join(f"{f['weight']:g}" for f in tuning["folds"])
    out += ["", f"Weight tuning (`embedpipe tune-fusion`, hybrid:exact, 5-fold cross-validation): chosen weight "
            f"{tuning['weight']:g} (fold choices {folds}), held-out "
            f"nDCG@10 {tuning['held_out']:.4f}, in-sample {tuning['in_sample']:.4f}; the default "
            f"{tuning['default_weight']:g} gives {tuning['default']:.4f}.", "",
            f"BM25 cost: analysis {t['bm25_analyse_shard_seconds']:.2f} s (shard work seconds) + reduce "
            f"{t['bm25_reduce_s']:.2f} s = {t['bm25_index_s']:.2f} s; search of {t['queries_searched']} queries "
            f"{t['bm25_search_300_queries_s']:.3f} s; MiniLM embedding {t['embed_shard_seconds']:.1f} s (shard work "
            f"seconds); the index: {t['bm25_index_bytes'] / 2**20:.2f} MiB, {t['bm25_terms']:,} terms.", "",
            "| target | measured | met |", "|---|---|---|"]
    out += [f"| {x['target']} | {x['measured']} | {x['met']} |" for x in r["targets"]]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
