"""Model migrations on SciFact through the real flows: blue built by `reindex`, green by `migrate model`.

1. Full corpus (5,183 abstracts, 300 test queries), whole documents: wordllama (blue) -> all-MiniLM-L6-v2
   (green, expected to pass the gate), then all-MiniLM-L6-v2 (now blue) -> wordllama (expected refusal).
2. A subset (every judged document of the 300 queries plus others, --subset-docs in all): all-MiniLM-L6-v2
   -> all-mpnet-base-v2 (384 -> 768 dims; mpnet is ~5x slower than MiniLM on CPU, hence the subset).

Gate: nDCG@10 of exact search, no drop allowed. Writes benchmarks/out/migration.{json,md}. About 15 minutes
on 2 CPUs. --smoke: part 1 on 40 documents and 10 queries of the demo sample, embedded by Ray actors as the full
corpus is (run.local_embed_max_chunks 0); part 2 runs the same code with another model, and the MiniLM -> mpnet
migration has its own test (tests/e2e/test_migrate_flow.py), so the smoke leaves it out.

Usage: .venv/bin/python benchmarks/migration.py [--subset-docs 1000] [--skip-full] [--skip-mpnet] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SCIFACT, parse_args, sample_subset, write_report  # noqa: E402


def subset(folder: Path, size: int) -> Path:
    """A BEIR folder: every judged test document, then others in corpus order up to `size`, and all queries."""
    qrels = (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()
    judged = {line.split("\t")[1] for line in qrels[1:]}
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    chosen = [d for d in docs if d["_id"] in judged]
    chosen += [d for d in docs if d["_id"] not in judged][: size - len(chosen)]
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(d) + "\n" for d in chosen)
    shutil.copy(SCIFACT / "queries.jsonl", folder / "queries.jsonl")
    shutil.copy(SCIFACT / "qrels" / "test.tsv", folder / "qrels" / "test.tsv")
    return folder


def config(path: Path, index: str, source: Path, model: str, root: Path, smoke: bool) -> str:
    """A whole-document config; smoke: Ray actors however small the corpus (local_embed_max_chunks 0)."""
    from pipeline.models.catalog import model_section

    path.write_text(yaml.safe_dump({
        "index_name": index, "corpus": {"source": str(source)}, "chunking": {"mode": "none"},
        "model": model_section(model), "index": {"variants": ["exact", "ivfpq"]},
        "run": {"shards": 8, "actors": 2, "cpus_per_actor": 1.0, **({"local_embed_max_chunks": 0} if smoke else {})},
        "storage": {"root": str(root)},
        "publish": {"alias": "live", "gate": {"metric": "ndcg@10", "mode": "exact", "max_drop": 0.0}}}))
    return str(path)


def row(name: str, docs: int, out: dict, seconds: float) -> dict:
    b, g = out["blue"]["metrics"], out["green"]["metrics"]
    return {"migration": name, "docs": docs, "blue": out["blue"]["model"], "green": out["green"]["model"],
            "dims": f"{out['blue']['dims']} -> {out['green']['dims']}", "blue_metrics": b, "green_metrics": g,
            "topk_overlap": (out.get("topk_overlap") or {}).get("mean"), "promoted": out["promotion"]["promoted"],
            "reason": out["promotion"].get("reason"), "green_embed_s": out["timings_s"].get("embed"),
            "migration_wall_s": round(seconds, 1), "report": out["report"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset-docs", type=int, default=1000)
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--skip-mpnet", action="store_true")
    args = parse_args(parser)
    from flows.migrate import migrate
    from flows.reindex import reindex

    work = args.out / "migration-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    full_source = sample_subset(work / "smoke-corpus", docs=40, queries=10) if args.smoke else SCIFACT
    rows, blues = [], {}
    if not args.skip_full:
        cfg = config(work / "full.yaml", "scifact-migration", full_source, "wordllama-l2-supercat",
                     work / "store-full", args.smoke)
        start = time.perf_counter()
        blues["full"] = reindex(cfg).to_dict()
        blues["full"]["wall_s"] = round(time.perf_counter() - start, 1)
        for model, name in (("all-MiniLM-L6-v2", "wordllama -> MiniLM"), ("wordllama-l2-supercat",
                                                                        "MiniLM -> wordllama")):
            start = time.perf_counter()
            out = migrate(cfg, model=model).to_dict()
            rows.append(row(name, blues["full"]["counts"]["accepted"], out, time.perf_counter() - start))
    if not (args.skip_mpnet or args.smoke):
        source = subset(work / "subset", args.subset_docs)
        cfg = config(work / "subset.yaml", "scifact-migration-subset", source, "all-MiniLM-L6-v2",
                     work / "store-subset", args.smoke)
        blues["subset"] = reindex(cfg).to_dict()
        start = time.perf_counter()
        out = migrate(cfg, model="all-mpnet-base-v2").to_dict()
        rows.append(row("MiniLM -> mpnet", blues["subset"]["counts"]["accepted"], out, time.perf_counter() - start))
    metrics = ("ndcg@10", "recall@10", "mrr@10")
    lines = ["| migration | docs | dims | " + " | ".join(f"{m} blue -> green" for m in metrics) +
             " | top-10 overlap | gate | green embed s | migration wall s |", "|---" * (7 + len(metrics)) + "|"]
    for r in rows:
        cells = [f"{r['blue_metrics'][m]:.4f} -> {r['green_metrics'][m]:.4f}" for m in metrics]
        lines.append(f"| {r['migration']} | {r['docs']} | {r['dims']} | " + " | ".join(cells) +
                     f" | {r['topk_overlap']:.3f} | {'promoted' if r['promoted'] else 'refused'} | "
                     f"{r['green_embed_s']} | {r['migration_wall_s']} |")
    md = "\n".join(["# Model migrations on SciFact (gate: exact nDCG@10, no drop)", "", *lines])
    write_report(args, "migration", {"migrations": rows}, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
