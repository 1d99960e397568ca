"""A scheduled reindex of a corpus of many files, with one file changed: reading that file alone against reading
every file (pipeline/corpus/files.py), on synthetic documents embedded with wordllama.

    (i)   full build of --docs documents in --files JSON Lines files; promoted to `live`
    (ii)  1% of file 0's documents edited; the reindex reads file 0 alone (the others are live's, unread)
    (iii) reference: a full build of (ii)'s corpus in a fresh storage root; (ii) must publish the same ids,
          documents and per-file counts
    (iv)  every file written again with the same documents in other bytes (keys in another order: each must be
          read) and 1% of file 1's documents edited; the reindex reads every file: the same delta as (ii), the whole
          corpus read
    (v)   every file written again with the same bytes (new change stamps) and 1% of file 2's documents edited; the
          reindex hashes every file and reads file 2 alone
Each run is its own `embedpipe run --json` process against one Prefect server. Reported: seconds per stage, the
flow run's seconds as Prefect records them, files read; the ratios (ii) / (iv) and (v) / (iv) of prepare (with the
hashing of files written since live) and of the flow run; the seconds one core takes to hash the whole corpus (what
a full build adds, its local files hashed for the next).
Target: (ii)'s prepare <= 0.5 x (iv)'s at the default size, and (ii) publishes what (iii) does.
Writes benchmarks/out/unread_files.{json,md}. About 12 minutes on 2 CPUs.
--smoke: 2,000 documents in 8 files; exit 0 whatever the ratios, as long as (ii) equals (iii) and (v) read one file.

Usage: .venv/bin/python benchmarks/unread_files.py [--docs 200000 --files 200] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
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


def prepare_s(run: dict) -> float:
    """A run's seconds deciding which files to read (hashing those written since live) and preparing."""
    return round(run["timings_s"].get("hash files", 0.0) + run["timings_s"]["prepare"], 2)


def hash_seconds(files: list[Path]) -> tuple[float, float]:
    """Seconds to hash every file on one core, as a build does the files whose stamps are times, and their MB."""
    from pipeline.corpus.files import file_sha256

    start = time.perf_counter()
    for path in files:
        file_sha256(str(path))
    return round(time.perf_counter() - start, 3), round(sum(p.stat().st_size for p in files) / 1e6, 1)


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
        for path in files:  # the same documents in other bytes: each file must be read
            path.write_text("".join(json.dumps(dict(reversed(json.loads(line).items()))) + "\n"
                                    for line in path.read_text().splitlines()))
        edited["every_file"] = edit(files[1], EDITED)
        run("every_file", cfg)
        for path in files:  # the same bytes, written again: new change stamps, each file hashed, not read
            path.write_bytes(path.read_bytes())
        edited["same_bytes"] = edit(files[2], EDITED)
        run("same_bytes", cfg)
    hash_s, corpus_mb = hash_seconds(files)
    a, b = tables(one_file), tables(reference)
    same = {key: a[key].equals(b[key]) for key in a}
    one, every, same_bytes = runs["one_file"], runs["every_file"], runs["same_bytes"]
    prepare_ratio = prepare_s(one) / prepare_s(every)
    flow_ratio = one["flow_run_s"] / every["flow_run_s"]
    hashed_ratio = prepare_s(same_bytes) / prepare_s(every)
    report = {"docs": args.docs, "files": args.files, "edited": edited, "runs": runs, "same_as_full_build": same,
              "prepare_one_over_every": round(prepare_ratio, 4), "flow_run_one_over_every": round(flow_ratio, 4),
              "prepare_same_bytes_over_every": round(hashed_ratio, 4),
              "flow_run_same_bytes_over_every": round(same_bytes["flow_run_s"] / every["flow_run_s"], 4),
              "hash_s": hash_s, "corpus_mb": corpus_mb,
              "target_prepare": 0.5}
    # (ii) equals (iii), and (v) read the one file edited
    right = all(same.values()) and same_bytes["files_read"] == 1
    report["met"] = prepare_ratio <= 0.5 and right
    md = "\n".join([
        f"# A reindex with one file changed: {args.docs:,} documents in {args.files} files (wordllama, exact)", "",
        "| run | files read | unread | changed | embedded | flow run s | hash + prepare s | stages |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *[f"| {name} | {r['files_read']} | {r['files_unread']} | {r['docs_changed']} | {r['embedded']} | "
          f"{r['flow_run_s']} | {prepare_s(r) if 'prepare' in r['timings_s'] else '-'} | "
          + ", ".join(f"{k} {v}" for k, v in r["timings_s"].items()) + " |" for name, r in runs.items()], "",
        f"**one file read / every file read: prepare {prepare_ratio:.4f}, flow run {flow_ratio:.4f}** "
        "(target for prepare <= 0.5).", "",
        f"Every file written again with the same bytes, one edited (hashed, one read) / every file read: prepare "
        f"**{hashed_ratio:.4f}**, flow run {report['flow_run_same_bytes_over_every']:.4f}. Hashing the corpus "
        f"({corpus_mb} MB) on one core: {hash_s} s.", "",
        "The one-file run publishes what a full build of the same files does: " +
        ", ".join(f"{k} **{v}**" for k, v in same.items()) + ".",
    ])
    write_report(args, "unread_files", report, md)
    return 0 if report["met"] or (args.smoke and right) else 1


if __name__ == "__main__":
    raise SystemExit(main())
