"""Quality against bytes for every representation, on the full SciFact corpus, for MiniLM and wordllama.

Each model runs the real `reindex` flow once (configs/scifact-full.yaml, configs/scifact-full-wordllama.yaml) under
benchmarks/out/store with a fixed run id, built afresh each call (a store kept from the last call would hold that run
finished); benchmarks/serve.py reuses the MiniLM snapshot it leaves there. Per search mode: nDCG@10, Recall@100,
retention against that model's fp32 exact search, bytes per vector, index size and mean query latency (batch of 300
queries). Writes benchmarks/out/representations.{json,md} and docs/representations.png (nDCG@10 against bytes, log x).
--smoke: both flows on 40 documents and 10 queries of the demo sample (Ray actors all the same), the plot
beside the report in --out, exit 0 whether or not the targets are met.

Usage: .venv/bin/python benchmarks/representations.py [--only minilm|wordllama] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_args, smoke_overrides, write_report  # noqa: E402

PLOT = Path(__file__).parents[1] / "docs" / "representations.png"
MODELS = {"minilm": "configs/scifact-full.yaml", "wordllama": "configs/scifact-full-wordllama.yaml"}
TARGETS = {  # MiniLM targets from the issue: (mode, metric, threshold)
    "minilm": [("int8", "ndcg@10_retention", 0.995), ("int8+rescore", "ndcg@10_retention", 1.0),
               ("binary", "ndcg@10_retention", 0.96), ("binary+rescore", "ndcg@10_retention", 0.995),
               ("ivfpq+rescore", "recall@10_vs_exact", 0.99)],
    "wordllama": [("exact@64+rescore", "ndcg@10_retention", 0.99)],
}


def run_model(name: str, config: str, overrides: dict) -> dict:
    from flows.reindex import reindex

    summary = reindex(config, {**overrides, "run.run_id": f"bench-{name}"}).to_dict()
    variants = summary["index"]["variants"]
    rows = []
    for mode, m in summary["evaluation"]["modes"].items():
        variant = variants[mode.partition("+")[0]]
        rows.append({"mode": mode, "ndcg@10": m["ndcg@10"], "recall@100": m["recall@100"],
                     "retention": m.get("ndcg@10_retention", 1.0),
                     "recall@10_vs_exact": m.get("recall@10_vs_exact", 1.0),
                     "bytes_per_vector": variant["bytes_per_vector"], "index_bytes": variant["index_bytes"],
                     "ms_per_query": m["ms_per_query"], "rescored": mode.endswith("+rescore")})
    targets = [{"mode": mode, "metric": metric, "target": t,
                "measured": summary["evaluation"]["modes"][mode].get(metric),
                "met": summary["evaluation"]["modes"][mode].get(metric, 0) >= t - 5e-6}
               for mode, metric, t in TARGETS[name] if mode in summary["evaluation"]["modes"]]
    return {"config": config, "model": name, "snapshot": summary["snapshot"],
            "vectors": summary["counts"]["vectors"], "queries": summary["evaluation"]["modes"]["exact"]["queries"],
            "shards_reused": summary["counts"]["shards_skipped"],
            "embed_s": summary["timings_s"]["embed"], "rows": rows, "targets": targets}


def markdown(results: dict) -> str:
    first = next(iter(results.values()))
    out = [f"# Representations on SciFact ({first['vectors']:,} docs, {first['queries']} queries)", "",
           "Rescoring re-ranks k x rescore_factor candidates (k = 100) with the snapshot's fp16 vectors; "
           "bytes are per vector for the index codes (the fp16 store adds 2 x dims when rescoring).", ""]
    for name, r in results.items():
        out += [f"## {name} (`{r['config']}`)", "",
                "| mode | nDCG@10 | Recall@100 | retention | R@10 vs exact | bytes/vector | index MiB | ms/query |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {x['mode']} | {x['ndcg@10']:.4f} | {x['recall@100']:.4f} | {x['retention']:.4f} | "
                f"{x['recall@10_vs_exact']:.4f} | {x['bytes_per_vector']} | {x['index_bytes'] / 2**20:.2f} | "
                f"{x['ms_per_query']:.3f} |" for x in r["rows"]]
        out += ["", "| target | measured | met |", "|---|---|---|"]
        out += [f"| {t['mode']} {t['metric']} >= {t['target']} | {t['measured']:.4f} | {t['met']} |"
                for t in r["targets"]]
        out.append("")
    return "\n".join(out)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for (name, r), color in zip(results.items(), ("tab:blue", "tab:orange"), strict=False):
        for rescored, marker in ((False, "o"), (True, "^")):
            # IVF twins share their flat variant's bytes and would cover its label: they are in the table
            pts = [x for x in r["rows"] if x["rescored"] == rescored and "+hamming" not in x["mode"]
                   and "-ivf" not in x["mode"]]
            ax.scatter([x["bytes_per_vector"] for x in pts], [x["ndcg@10"] for x in pts], color=color,
                       marker=marker, label=f"{name}{' + fp16 rescoring' if rescored else ''}")
            for x in pts:
                ax.annotate(x["mode"].replace("+rescore", "+r"), (x["bytes_per_vector"], x["ndcg@10"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per vector (index codes, log scale)")
    ax.set_ylabel("nDCG@10 on SciFact test queries")
    ax.set_title("SciFact nDCG@10 against memory per representation (flat variants and IVF-PQ)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(MODELS))
    args = parse_args(parser)
    shutil.rmtree(args.out / "store", ignore_errors=True)  # fresh builds: run ids are reused from one call to the next
    overrides = {"storage.root": str(args.out / "store"),
                 **(smoke_overrides(args.out / "smoke-corpus", docs=40) if args.smoke else {})}
    results = {name: run_model(name, cfg, overrides) for name, cfg in MODELS.items() if args.only in (None, name)}
    plot_path = args.out / PLOT.name if args.smoke else PLOT
    plot(results, plot_path)
    write_report(args, "representations", {"models": results, "plot": str(plot_path)}, markdown(results))
    print(f"plot: {plot_path}")
    return 0 if args.smoke or all(t["met"] for r in results.values() for t in r["targets"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
