"""What a build spends on its corpus's listing before it reads a piece, for a glob of Parquet files on S3.

A CLI build looks at the corpus five times before prepare's workers read it: the CLI's input check, the decision
to start Ray ahead, the flow's own input check (a deployment's run has no CLI before it), the build's choice of
executor, and prepare's plan of pieces. Only the plan needs each Parquet file's row groups (its footer, a request
or two per file); the other four need the listing alone (sizes come with it). Measured here, side by side on one
S3 server on loopback (moto's standalone server, started by this script), each sequence from a cold listing cache:

    now:    four listings (pipeline.corpus.readers.list_corpus) and one plan with the footers read 32 at a time
            (describe_corpus), as a build does since 2026-12-05;
    before: five plans, the footers read one after another (describe_inputs(readers=1)), as every look did before.

Also the plan alone with 1 and with 32 readers. moto's server is Python on the same CPUs, so the gain from reading
side by side is bounded by its CPU here; against a remote S3 each footer is mostly waiting, which 32 readers overlap.
Writes benchmarks/out/corpus_planning.{json,md}. --smoke: 20 files instead of --files.

Usage: .venv/bin/python benchmarks/corpus_planning.py [--files 1000] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_args, write_report  # noqa: E402

BUCKET = "corpus-planning"


def start_s3_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("moto_server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    args = parse_args(parser)
    files = 20 if args.smoke else args.files
    server, endpoint = start_s3_server()
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        import boto3
        import pyarrow as pa
        import pyarrow.parquet as pq

        from pipeline.config import CorpusConfig
        from pipeline.corpus.pieces import describe_inputs
        from pipeline.corpus.readers import describe_corpus, list_corpus

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        body = io.BytesIO()  # 2,000 rows in 4 row groups, ~20 KB: a small file keeps the footer's share honest
        pq.write_table(pa.table({"_id": [f"d{i}" for i in range(2000)], "text": ["a short abstract " * 8] * 2000}),
                       body, row_group_size=500)
        for i in range(files):
            s3.put_object(Bucket=BUCKET, Key=f"corpus/part-{i:05d}.parquet", Body=body.getvalue())
        cfg = CorpusConfig(source=f"s3://{BUCKET}/corpus/*.parquet")

        def timed(fn) -> float:  # each sequence starts with a listing, which lists afresh (list_inputs)
            start = time.perf_counter()
            fn()
            return round(time.perf_counter() - start, 3)

        def now() -> None:
            for _ in range(4):
                list_corpus(cfg)
            describe_corpus(cfg)

        def before() -> None:
            for _ in range(5):
                describe_inputs(cfg.source, "parquet", readers=1)

        seconds = {"listing": timed(lambda: list_corpus(cfg)),
                   "plan_1_reader": timed(lambda: describe_inputs(cfg.source, "parquet", readers=1)),
                   "plan_32_readers": timed(lambda: describe_corpus(cfg)),
                   "before_build_now": timed(now), "before_build_before": timed(before)}
        assert sum(len(f.row_groups) for f in describe_corpus(cfg)) == 4 * files
    finally:
        server.terminate()
        server.wait()
    report = {"files": files, "seconds": seconds,
              "ms_per_file": {k: round(1000 * v / files, 2) for k, v in seconds.items()},
              "plan_1_over_32_readers": round(seconds["plan_1_reader"] / seconds["plan_32_readers"], 2),
              "before_over_now": round(seconds["before_build_before"] / seconds["before_build_now"], 2)}
    md = "\n".join([
        f"# A build's looks at its corpus: {files} Parquet files on a loopback S3 server", "",
        "| what | seconds | ms per file |", "|---|---|---|",
        *[f"| {k} | {v} | {report['ms_per_file'][k]} |" for k, v in seconds.items()], "",
        f"Plan with footers read one at a time / 32 at a time: **{report['plan_1_over_32_readers']}x**. Before a "
        f"build reads a piece, five plans read one footer at a time (before) / four listings and one plan (now): "
        f"**{report['before_over_now']}x**.", ""])
    write_report(args, "corpus_planning", report, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
