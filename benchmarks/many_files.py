"""A corpus of many small files against the same documents in a few larger ones: what reading and preparing them
costs (pipeline/jobs/prepare.py), on synthetic documents chunked for wordllama.

The same --docs documents are written as --few files and as --many files, and each set is prepared (pieces read,
shards deduplicated, chunked and looked up in the cache) in the flow's process and as Ray tasks on every CPU:
- gathered: small files share read pieces (up to run.piece_bytes and run.piece_files files), as a build reads them;
- a piece per file (run.piece_files = 1): how every build read them before, each file a task, a marker, a quarantine
  file and a docs part per shard.
Each is run --rounds times in alternation after an untimed warm-up run, the best kept. Reported: seconds, pieces and
files written per run; the ratios many / few (gathered) and a piece per file / gathered (many files).
Target: many / few <= 1.5 on each executor (a corpus costs by its bytes, not its files).
Writes benchmarks/out/many_files.{json,md}. About 4 minutes on 2 CPUs.
--smoke: 400 documents in 4 and 40 files, one round; exit 0 whatever the ratios.

Usage: .venv/bin/python benchmarks/many_files.py [--docs 20000 --few 20 --many 2000] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_args, synthetic_corpus, write_report  # noqa: E402
from benchmarks.scale import MEAN_WORDS  # noqa: E402
from benchmarks.unread_files import split  # noqa: E402

SMOKE = {"docs": 400, "few": 4, "many": 40, "rounds": 1}
TARGET = 1.5
WAYS = {"gathered": {}, "piece_per_file": {"run.piece_files": 1}}


def config(path: Path, corpus: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "index_name": "files", "corpus": {"source": f"{corpus}/*.jsonl"},
        "model": {"name": "wordllama-l2-supercat", "package": "wordllama"},
        "chunking": {"max_tokens": 256, "overlap": 32}, "index": {"variants": ["exact"]},
        "run": {"shards": 4}, "storage": {"root": str(path.parent / "store")}}))
    return path


def prepare_once(cfg_path: Path, root: Path, overrides: dict, executor) -> dict:
    """One prepare of a fresh storage root: seconds, pieces and files written."""
    from pipeline.config_loader import load_config
    from pipeline.jobs.prepare import ShardInput, make_chunker, prepare
    from pipeline.models.encoder import cached_encoder
    from pipeline.storage.backend import Storage

    shutil.rmtree(root, ignore_errors=True)
    cfg = load_config(cfg_path, {"storage.root": str(root), **overrides})
    card = cached_encoder(cfg.model).card
    make_chunker(cfg)  # loaded once per process, as a worker keeps it
    start = time.perf_counter()
    prepared = prepare(cfg, Storage(str(root)), "r", ShardInput(None), card, executor)
    seconds = round(time.perf_counter() - start, 2)
    return {"seconds": seconds, "pieces": prepared.counts["pieces"], "accepted": prepared.counts["accepted"],
            "files_written": sum(1 for p in root.rglob("*") if p.is_file())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--few", type=int, default=20)
    parser.add_argument("--many", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args(parser)
    if args.smoke:
        vars(args).update(SMOKE)
    from operators.cluster import ensure_ray, shutdown_ray
    from operators.executor import RayExecutor
    from pipeline.jobs.executor import LocalExecutor

    work = args.out / "many_files"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    synthetic_corpus(work / "all.jsonl", args.docs, args.seed, mean_words=MEAN_WORDS)
    configs = {}
    for name, files in (("few", args.few), ("many", args.many)):
        (work / name / "corpus").mkdir(parents=True)
        split(work / "all.jsonl", work / name / "corpus", files)
        configs[name] = config(work / name / "config.yaml", work / name / "corpus")
    mb = round((work / "all.jsonl").stat().st_size / 1e6, 1)
    (work / "all.jsonl").unlink()
    runs: dict[str, dict] = {}
    for executor_name in ("in_process", "ray"):
        if executor_name == "ray":
            ensure_ray(num_cpus=os.cpu_count())
        executor = RayExecutor() if executor_name == "ray" else LocalExecutor()
        prepare_once(configs["few"], work / "warm-up", {}, executor)  # workers started, modules imported: not timed
        for _ in range(args.rounds):
            for corpus, cfg_path in configs.items():
                for way, overrides in WAYS.items():
                    key = f"{executor_name} {corpus} {way}"
                    run = prepare_once(cfg_path, work / corpus / "store", overrides, executor)
                    print(key, run, flush=True)
                    if key not in runs or run["seconds"] < runs[key]["seconds"]:
                        runs[key] = run
    shutdown_ray()
    seconds = {key: run["seconds"] for key, run in runs.items()}
    many_over_few = {e: round(seconds[f"{e} many gathered"] / seconds[f"{e} few gathered"], 3)
                     for e in ("in_process", "ray")}
    per_file_over_gathered = {e: round(seconds[f"{e} many piece_per_file"] / seconds[f"{e} many gathered"], 3)
                              for e in ("in_process", "ray")}
    same = len({run["accepted"] for run in runs.values()}) == 1
    report = {"docs": args.docs, "few": args.few, "many": args.many, "corpus_mb": mb, "rounds": args.rounds,
              "runs": runs, "many_over_few": many_over_few, "piece_per_file_over_gathered": per_file_over_gathered,
              "target_many_over_few": TARGET, "met": same and max(many_over_few.values()) <= TARGET}
    md = "\n".join([
        f"# {args.docs:,} documents ({mb} MB) in {args.few} files and in {args.many}: prepare (wordllama chunking)",
        "", f"Best of {args.rounds} round(s). Gathered: small files share read pieces; a piece per file: "
        "`run.piece_files: 1`, as every build read them before.", "",
        "| executor | files | pieces | seconds | files written |", "|---|---|---:|---:|---:|",
        *[f"| {key.split()[0]} | {key.split()[1]}, {key.split()[2].replace('_', ' ')} | {r['pieces']} | "
          f"{r['seconds']} | {r['files_written']:,} |" for key, r in runs.items()], "",
        "**many files / few files (gathered): " + ", ".join(f"{e} {v}" for e, v in many_over_few.items()) +
        f"** (target <= {TARGET}).", "",
        f"A piece per file / gathered, {args.many} files: " +
        ", ".join(f"{e} {v}x" for e, v in per_file_over_gathered.items()) + ".",
    ])
    write_report(args, "many_files", report, md)
    return 0 if report["met"] or (args.smoke and same) else 1


if __name__ == "__main__":
    raise SystemExit(main())
