"""A corpus of many small files against the same documents in a few larger ones: what reading and preparing them
costs (pipeline/jobs/prepare.py), on synthetic documents chunked for wordllama.

1. Files on disk. The same --docs documents are written as --few files and as --many files, and each set is
   prepared (pieces read, shards deduplicated, chunked and looked up in the cache) in the flow's process and as Ray
   tasks on every CPU, two ways:
   - gathered: small files share read pieces (up to run.piece_bytes and run.piece_files files), as a build reads them;
   - a piece per file (run.piece_files = 1): how every build read them before, each file a task, a marker, a
     quarantine file and a docs part per shard.
2. Files on object storage: the same documents as --s3-files files on an S3 server on loopback (moto's, started
   here; the run's storage root there too), prepared in the flow's process: gathered, with a piece's files fetched
   16 at a time (FETCH_AHEAD in pipeline/corpus/records.py) or one after another, and a piece per file.
Each is run --rounds times in alternation after an untimed warm-up run, the best kept. Reported: seconds, pieces and
files written per run; the ratios many / few (gathered) and a piece per file / gathered. moto's server is Python on
the same CPUs: a request costs it CPU time where a remote store's costs waiting, which fetching ahead overlaps.
Target: many / few <= 1.5 on each executor (a corpus costs by its bytes, not its files).
Writes benchmarks/out/many_files.{json,md}. About 6 minutes on 2 CPUs.
--smoke: 400 documents in 4 and 40 files (40 on S3), one round; exit 0 whatever the ratios.

Usage: .venv/bin/python benchmarks/many_files.py [--docs 20000 --few 20 --many 2000 --s3-files 400] [--smoke]
           [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import fsspec
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_args, synthetic_corpus, write_report  # noqa: E402
from benchmarks.corpus_planning import start_s3_server  # noqa: E402
from benchmarks.scale import MEAN_WORDS  # noqa: E402
from benchmarks.unread_files import split  # noqa: E402

SMOKE = {"docs": 400, "few": 4, "many": 40, "s3_files": 40, "rounds": 1}
TARGET = 1.5
BUCKET = "many-files"
GATHERED, PER_FILE = {}, {"run.piece_files": 1}


def config(path: Path, corpus: str) -> Path:
    path.write_text(yaml.safe_dump({
        "index_name": "files", "corpus": {"source": f"{corpus}/*.jsonl"},
        "model": {"name": "wordllama-l2-supercat", "package": "wordllama"},
        "chunking": {"max_tokens": 256, "overlap": 32}, "index": {"variants": ["exact"]},
        "run": {"shards": 4}, "storage": {"root": str(path.parent / "store")}}))
    return path


def prepare_once(cfg_path: Path, root: str, overrides: dict, executor, ahead: int | None = None) -> dict:
    """One prepare into an empty storage root (a folder or an S3 prefix), with `ahead` requests in flight (default:
    the pipeline's FETCH_AHEAD): seconds, pieces and files written."""
    import pipeline.corpus.records as records
    from pipeline.config_loader import load_config
    from pipeline.jobs.prepare import ShardInput, make_chunker, prepare
    from pipeline.models.encoder import cached_encoder
    from pipeline.storage.backend import Storage

    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    cfg = load_config(cfg_path, {"storage.root": root, **overrides})
    card = cached_encoder(cfg.model).card
    make_chunker(cfg)  # loaded once per process, as a worker keeps it
    default, records.FETCH_AHEAD = records.FETCH_AHEAD, ahead or records.FETCH_AHEAD  # this process's reads
    try:
        start = time.perf_counter()
        prepared = prepare(cfg, Storage(root), "r", ShardInput(None), card, executor)
        seconds = round(time.perf_counter() - start, 2)
    finally:
        records.FETCH_AHEAD = default
    fs.invalidate_cache()
    return {"seconds": seconds, "pieces": prepared.counts["pieces"], "accepted": prepared.counts["accepted"],
            "files_written": len(fs.find(path))}


def measure(runs: dict, label: str, cases: dict, executor, rounds: int) -> None:
    """Each case (key -> prepare_once's arguments but the executor) `rounds` times in alternation; the best run of
    each in `runs`."""
    for _ in range(rounds):
        for key, case in cases.items():
            cfg_path, root, overrides, *ahead = case
            run = prepare_once(cfg_path, root, overrides, executor, *ahead)
            print(label, key, run, flush=True)
            if f"{label} {key}" not in runs or run["seconds"] < runs[f"{label} {key}"]["seconds"]:
                runs[f"{label} {key}"] = run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--few", type=int, default=20)
    parser.add_argument("--many", type=int, default=2000)
    parser.add_argument("--s3-files", type=int, default=400)
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
    for name, files in (("few", args.few), ("many", args.many), ("s3", args.s3_files)):
        (work / name / "corpus").mkdir(parents=True)
        split(work / "all.jsonl", work / name / "corpus", files)
        configs[name] = config(work / name / "config.yaml", str(work / name / "corpus"))
    mb = round((work / "all.jsonl").stat().st_size / 1e6, 1)
    (work / "all.jsonl").unlink()
    runs: dict[str, dict] = {}
    local = LocalExecutor()
    on_disk = {f"{c} {way}": (configs[c], str(work / c / "store"), overrides) for c in ("few", "many")
               for way, overrides in (("gathered", GATHERED), ("piece_per_file", PER_FILE))}
    measure(runs, "in_process", on_disk, local, args.rounds)
    ensure_ray(num_cpus=os.cpu_count())
    ray = RayExecutor()
    prepare_once(configs["few"], str(work / "warm-up"), {}, ray)  # workers started, modules imported: not timed
    measure(runs, "ray", on_disk, ray, args.rounds)
    shutdown_ray()

    server, endpoint = start_s3_server()
    try:
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
        s3 = fsspec.filesystem("s3")
        s3.mkdir(BUCKET)
        s3.put(sorted(str(p) for p in (work / "s3" / "corpus").glob("*.jsonl")), f"{BUCKET}/corpus/")
        s3_config = config(work / "s3" / "s3.yaml", f"s3://{BUCKET}/corpus")
        store = f"s3://{BUCKET}/store"
        measure(runs, "s3_in_process", {
            "many gathered": (s3_config, store, GATHERED),
            "many gathered_one_at_a_time": (s3_config, store, GATHERED, 1),
            "many piece_per_file": (s3_config, store, PER_FILE)}, local, args.rounds)
    finally:
        server.kill()

    seconds = {key: run["seconds"] for key, run in runs.items()}
    many_over_few = {e: round(seconds[f"{e} many gathered"] / seconds[f"{e} few gathered"], 3)
                     for e in ("in_process", "ray")}
    per_file_over_gathered = {e: round(seconds[f"{e} many piece_per_file"] / seconds[f"{e} many gathered"], 3)
                              for e in ("in_process", "ray", "s3_in_process")}
    one_at_a_time = round(seconds["s3_in_process many gathered_one_at_a_time"] /
                          seconds["s3_in_process many gathered"], 3)
    same = len({run["accepted"] for run in runs.values()}) == 1
    report = {"docs": args.docs, "few": args.few, "many": args.many, "s3_files": args.s3_files, "corpus_mb": mb,
              "rounds": args.rounds, "runs": runs, "many_over_few": many_over_few,
              "piece_per_file_over_gathered": per_file_over_gathered,
              "s3_one_at_a_time_over_fetched_ahead": one_at_a_time,
              "target_many_over_few": TARGET, "met": same and max(many_over_few.values()) <= TARGET}
    files = {"few": args.few, "many": args.many}
    md = "\n".join([
        f"# {args.docs:,} documents ({mb} MB) in {args.few} files and in {args.many}: prepare (wordllama chunking)",
        "", f"Best of {args.rounds} round(s). Gathered: small files share read pieces; a piece per file: "
        f"`run.piece_files: 1`, as every build read them before. On S3 (moto on loopback), {args.s3_files} files.", "",
        "| where | files | pieces | seconds | files written |", "|---|---|---:|---:|---:|",
        *[f"| {key.split()[0].replace('_', ' ')} | {args.s3_files if key.startswith('s3') else files[key.split()[1]]}, "
          f"{key.split()[2].replace('_', ' ')} | {r['pieces']} | {r['seconds']} | {r['files_written']:,} |"
          for key, r in runs.items()], "",
        "**many files / few files (gathered): " + ", ".join(f"{e} {v}" for e, v in many_over_few.items()) +
        f"** (target <= {TARGET}).", "",
        "A piece per file / gathered: " + ", ".join(f"{e.replace('_', ' ')} {v}x"
                                                    for e, v in per_file_over_gathered.items()) +
        f". On S3, a gathered piece's files read one after another / fetched 16 at a time: {one_at_a_time}x.",
    ])
    write_report(args, "many_files", report, md)
    return 0 if report["met"] or (args.smoke and same) else 1


if __name__ == "__main__":
    raise SystemExit(main())
