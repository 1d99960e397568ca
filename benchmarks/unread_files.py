"""A scheduled reindex of a corpus of many files, with one file changed: reading that file alone against reading
every file (pipeline/corpus/files.py), on synthetic documents embedded with wordllama.

    (i)   full build of --docs documents in --files JSON Lines files; promoted to `live`
    (ii)  1% of file 0's documents edited; the reindex reads file 0 alone (the others are live's, unread)
    (iii) reference: a full build of (ii)'s corpus in a fresh storage root; (ii) must publish the same ids,
          documents and per-file counts
    (iv)  every file written again with the same bytes (new change stamps: each must be read) and 1% of file 1's
          documents edited; the reindex reads every file: the same delta as (ii), the whole corpus read
Each run is its own `embedpipe run --json` process against one Prefect server. Reported: seconds per stage, the
flow run's seconds as Prefect records them, files read; the ratios (ii) / (iv) of prepare and of the flow run.
Target: (ii)'s prepare <= 0.5 x (iv)'s at the default size, and (ii) publishes what (iii) does.
Writes benchmarks/out/unread_files.{json,md}. About 10 minutes on 2 CPUs.
--smoke: 2,000 documents in 8 files; exit 0 whatever the ratios, as long as (ii) equals (iii).

Usage: .venv/bin/python benchmarks/unread_files.py [--docs 200000 --files 200] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import flow_run_seconds, parse_args, prefect_server, synthetic_corpus, write_report  # noqa: E402
from benchmarks.scale import MEAN_WORDS, golden_set, run_flow  # noqa: E402

SMOKE = {"docs": 2000, "files": 8}
EDITED = 0.01  # of one file's documents


def split(corpus: Path, folder: Path, files: int) -> list[Path]:
    """The one synthetic file cut into `files` files of consecutive documents, named in input order."""
    lines = corpus.read_text().splitlines(keepends=True)
    per = -(-len(lines) // files)
    paths = []
    for i in range(files):
        paths.append(folder / f"part-{i:05d}.jsonl")
        paths[-1].write_text("".join(lines[i * per:(i + 1) * per]))
    return paths


def edit(path: Path, share: float) -> int:
    """Append a sentence to the first `share` of a file's documents; returns how many."""
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    n = max(1, round(len(docs) * share))
    docs = [{**d, "text": d["text"] + " (corrected)"} if i < n else d for i, d in enumerate(docs)]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return n


def config(path: Path, corpus: Path, root: Path, golden: dict) -> Path:
    path.write_text(yaml.safe_dump({
        "index_name": "files", "corpus": {"source": f"{corpus}/*.jsonl"}, "evaluation": golden,
        "model": {"name": "wordllama-l2-supercat", "package": "wordllama"},
        "chunking": {"max_tokens": 256, "overlap": 32}, "index": {"variants": ["exact"]},
        "publish": {"alias": "live", "gate": {"max_drop": 1.0}},
        "run": {"shards": 4, "actors": 2, "cpus_per_actor": 1.0}, "storage": {"root": str(root)}}))
    return path


def tables(summary: dict) -> dict:
    """What a version publishes of its input: ids, documents, per-file counts (change stamps and read/unread aside)."""
    import polars as pl

    from pipeline.snapshots.snapshot import Snapshot

    snap = Snapshot.open(summary["snapshot"])
    return {"ids": snap.ids, "documents": pl.read_parquet(snap.local_file("documents.parquet")),
            "files": pl.read_parquet(snap.local_file("files.parquet")).drop("stamp", "unread")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args(parser)
    if args.smoke:
        vars(args).update(SMOKE)
    work = args.out / "unread_files"
    shutil.rmtree(work, ignore_errors=True)
    (work / "corpus").mkdir(parents=True)
    synthetic_corpus(work / "all.jsonl", args.docs, args.seed, mean_words=MEAN_WORDS)
    golden = golden_set(work, work / "all.jsonl", args.docs)
    files = split(work / "all.jsonl", work / "corpus", args.files)
    (work / "all.jsonl").unlink()
    cfg = config(work / "config.yaml", work / "corpus", work / "store", golden)
    runs: dict[str, dict] = {}
    with prefect_server(work / "prefect-home") as api:
        env = {**os.environ, "PREFECT_API_URL": api}

        def run(name: str, config_path: Path) -> dict:
            summary, wall = run_flow(config_path, env)
            c = summary["counts"]
            runs[name] = {"wall_s": wall, "flow_run_s": flow_run_seconds(api, summary["run_id"]),
                          "timings_s": summary["timings_s"], "files_read": c["files_read"],
                          "files_unread": c["files_unread"], "docs_changed": c["docs_changed"],
                          "embedded": c["embedded"], "accepted": c["accepted"], "published": summary["published"]}
            print(f"{name}: {wall} s, flow run {runs[name]['flow_run_s']} s, {c['files_read']} files read", flush=True)
            return summary

        run("full", cfg)
        edited = {"one_file": edit(files[0], EDITED)}
        one_file = run("one_file", cfg)
        reference = run("reference", config(work / "reference.yaml", work / "corpus", work / "fresh", golden))
        for path in files:  # the same bytes, written again: a new change stamp, so the file is read
            path.write_bytes(path.read_bytes())
        edited["every_file"] = edit(files[1], EDITED)
        run("every_file", cfg)
    a, b = tables(one_file), tables(reference)
    same = {key: a[key].equals(b[key]) for key in a}
    one, every = runs["one_file"], runs["every_file"]
    prepare_ratio = one["timings_s"]["prepare"] / every["timings_s"]["prepare"]
    flow_ratio = one["flow_run_s"] / every["flow_run_s"]
    report = {"docs": args.docs, "files": args.files, "edited": edited, "runs": runs, "same_as_full_build": same,
              "prepare_one_over_every": round(prepare_ratio, 4), "flow_run_one_over_every": round(flow_ratio, 4),
              "target_prepare": 0.5, "met": prepare_ratio <= 0.5 and all(same.values())}
    md = "\n".join([
        f"# A reindex with one file changed: {args.docs:,} documents in {args.files} files (wordllama, exact)", "",
        "| run | files read | unread | changed | embedded | flow run s | prepare s | stages |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *[f"| {name} | {r['files_read']} | {r['files_unread']} | {r['docs_changed']} | {r['embedded']} | "
          f"{r['flow_run_s']} | {r['timings_s'].get('prepare', '-')} | "
          + ", ".join(f"{k} {v}" for k, v in r["timings_s"].items()) + " |" for name, r in runs.items()], "",
        f"**one file read / every file read: prepare {prepare_ratio:.4f}, flow run {flow_ratio:.4f}** "
        "(target for prepare <= 0.5).", "",
        "The one-file run publishes what a full build of the same files does: " +
        ", ".join(f"{k} **{v}**" for k, v in same.items()) + ".",
    ])
    write_report(args, "unread_files", report, md)
    return 0 if report["met"] or (args.smoke and all(same.values())) else 1


if __name__ == "__main__":
    raise SystemExit(main())
