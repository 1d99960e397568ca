"""The index stage of an incremental build: the kept chunks' codes copied from the live version against every vector
read and encoded again, on one prepared run (pipeline/jobs/kept_codes.py).

    (i)   a synthetic corpus of --docs documents (words from SciFact's vocabulary, embedded with wordllama), built
          in full in this process (prepare, embed, index) and committed as v1
    (ii)  --changed of its documents edited (a sentence appended), prepared and embedded against v1: the incremental
          run's own steps
    (iii) the index stage over (ii)'s run, --rounds times each way, alternating, each into a fresh version folder:
          with v1's codes for the kept chunks (what the run does), and with no live version given, so every vector
          is read and encoded (what it did before; the same IVF-PQ training, kept from v1, both ways)
Reported: the seconds of each round, the median ratio, the vectors each way read, and whether the two ways wrote the
same files (every file's sha256). Target: the same files, and with the default variants (exact, ivfpq; the fp16
store) the index stage at most 0.6 x the time of encoding every vector at the default size.
Writes benchmarks/out/kept_codes.{json,md}. About 6 minutes on 2 CPUs.
--smoke: 600 documents, one round each way; exit 0 whatever the ratio, as long as the files are the same.

Usage: .venv/bin/python benchmarks/kept_codes.py [--docs 200000 --changed 0.001 --rounds 3] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_args, synthetic_corpus, write_report  # noqa: E402
from benchmarks.scale import MEAN_WORDS  # noqa: E402

SMOKE = {"docs": 600, "rounds": 1}
TARGET = 0.6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--changed", type=float, default=0.001, help="share of the documents edited")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="exact,ivfpq")
    args = parse_args(parser)
    if args.smoke:
        vars(args).update(SMOKE)

    from dataclasses import replace

    from pipeline.config_loader import parse_config
    from pipeline.jobs import indexing
    from pipeline.jobs.build import build_indexes
    from pipeline.jobs.embedder import LocalEmbedder
    from pipeline.jobs.executor import LocalExecutor
    from pipeline.jobs.plan import BuildPlan, reusable_training
    from pipeline.jobs.prepare import ShardInput, prepare
    from pipeline.models.encoder import cached_encoder
    from pipeline.snapshots.publishing import claim, commit
    from pipeline.snapshots.snapshot import Snapshot
    from pipeline.storage.backend import Storage

    work = args.out / "kept_codes"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    corpus = work / "corpus.jsonl"
    synthetic_corpus(corpus, args.docs, seed=0, mean_words=MEAN_WORDS)  # as benchmarks/unread_files.py
    cfg = parse_config({"index_name": "kept", "corpus": {"source": str(corpus)},
                        "storage": {"root": str(work / "store")},
                        "model": {"name": "wordllama-l2-supercat", "package": "wordllama"},
                        "chunking": {"max_tokens": 256, "overlap": 32},
                        "index": {"variants": args.variants.split(",")},
                        "run": {"shards": 4, "local_prepare_max_bytes": 1 << 40}})
    storage, executor, encoder = Storage(cfg.storage.root), LocalExecutor(), cached_encoder(cfg.model)
    read: list[int] = []  # rows whose vectors the index stage read, per call
    with_vectors = indexing.with_vectors
    indexing.with_vectors = lambda *a: read.append(a[-1].height) or with_vectors(*a)

    def prepared_run(run_id: str, plan: BuildPlan):
        prepared = prepare(cfg, storage, run_id, plan.against, encoder.card, executor)
        LocalEmbedder(storage, encoder).embed(run_id, prepared.largest_first(), lambda _: None)
        return prepared

    start = time.perf_counter()
    full = BuildPlan(ShardInput(None), None, "full build")
    first = prepared_run("v1", full)
    claim(storage, "kept", "v1", "v1")
    staged = build_indexes(cfg, storage, first, storage.child("snapshots/kept/v1"), full, encoder.card.dims, executor)
    commit(storage, "kept", "v1", staged.files, {"index": staged.params, "chunking": first.chunking,
                                                "model": {"fingerprint": encoder.card.fingerprint}})
    v1_s = time.perf_counter() - start

    docs = [json.loads(line) for line in corpus.read_text().splitlines()]
    step = max(1, round(1 / args.changed))
    for doc in docs[::step]:
        doc["text"] += " An erratum was appended to this record."
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    live = Snapshot.of(storage, "kept", "v1").storage
    plan = BuildPlan(ShardInput(live), "v1", "incremental against v1",
                     reusable_training(storage, "kept", "v1", encoder.card.fingerprint, first.chunking))
    second = prepared_run("v2", plan)

    ways = {"live_codes": plan, "every_vector": replace(plan, against=ShardInput(None))}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    files, reads, params = {}, {}, {}
    for r in range(args.rounds):
        for way, how in ways.items():
            target = storage.child(f"snapshots/kept/{way}-{r}")
            read.clear()
            t = time.perf_counter()
            out = build_indexes(cfg, storage, second, target, how, encoder.card.dims, executor)
            seconds[way].append(round(time.perf_counter() - t, 3))
            files[way], reads[way], params = out.files, sum(read), out.params
            shutil.rmtree(target.root, ignore_errors=True)
            print(f"round {r} {way}: {seconds[way][-1]} s, {reads[way]:,} vectors read", flush=True)
    ratio = round(statistics.median(seconds["live_codes"]) / statistics.median(seconds["every_vector"]), 4)
    same = files["live_codes"] == files["every_vector"]
    counts = {k: second.counts[k] for k in ("chunks", "chunks_redone", "chunks_kept")}
    report = {"docs": args.docs, "changed": args.changed, "variants": cfg.index.variants, "counts": counts,
              "v1_build_s": round(v1_s, 1), "seconds": seconds, "vectors_read": reads,
              "training": {name: p["training"] for name, p in params["variants"].items() if "training" in p},
              "live_codes_over_every_vector": ratio, "same_files": same, "target": TARGET,
              "met": same and ratio <= TARGET}
    md = (f"# The index stage of an incremental build: kept chunks' codes from live, or every vector encoded\n\n"
          f"{args.docs:,} synthetic documents (wordllama), {counts['chunks']:,} chunks, variants "
          f"{', '.join(cfg.index.variants)} (and the fp16 store); {counts['chunks_redone']:,} chunks redone, "
          f"{counts['chunks_kept']:,} kept. v1 built in {v1_s:.1f} s.\n\n"
          f"| way | index stage s (each round) | vectors read |\n|---|---|---|\n" +
          "".join(f"| {way} | {', '.join(map(str, seconds[way]))} | {reads[way]:,} |\n" for way in ways) +
          f"\n**Kept codes / every vector: {ratio} (median of rounds)**; target <= {TARGET}. The same files both ways: "
          f"**{same}**.\n\n" + "".join(f"- {name}: {why}\n" for name, why in report["training"].items()))
    write_report(args, "kept_codes", report, md)
    return 0 if same and (args.smoke or ratio <= TARGET) else 1


if __name__ == "__main__":
    raise SystemExit(main())
