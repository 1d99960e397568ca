"""The reindex flow publishing to a real S3 server and promoting `live`; a plain client reads the result."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, S3_BUCKET, S3_KEY, S3_SECRET, write_jsonl


@pytest.fixture(scope="module")
def s3_run(s3_server, tmp_path_factory, sample_docs):
    """`embedpipe run` in a fresh process (as a user would), twice, the second with another setting (a run that
    changed nothing publishes nothing): both publish, both promote through the gate. Without PREFECT_API_URL, as a
    user without a Prefect server: each run starts one of its own, its database in PREFECT_HOME."""
    folder = tmp_path_factory.mktemp("s3corpus")
    write_jsonl(folder / "corpus.jsonl", sample_docs[:40])
    root = f"s3://{S3_BUCKET}/flow"
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({
        "index_name": "s3demo", "corpus": {"source": str(folder / "corpus.jsonl")},
        "evaluation": {"queries": str(folder / "queries.jsonl"), "qrels": str(folder / "qrels.tsv")},
        "index": {"variants": ["exact", "int8"]}, "run": {"shards": 2, "actors": 1},
        "storage": {"root": root}, "publish": {"alias": "live", "gate": {"min_value": 0.5, "max_drop": 0.0}}}))
    # golden set: each document's own title finds it
    golden = list(enumerate(sample_docs[:10]))
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": d["title"]} for i, d in golden])
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                      "".join(f"q{i}\t{d['_id']}\t1\n" for i, d in golden))
    cli = shutil.which("embedpipe", path=str(Path(sys.executable).parent))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(folder / "prefect")}
    runs = [subprocess.run([cli, "run", str(config), "--json", "--no-example", *extra], capture_output=True,
                           text=True, cwd=REPO, env=env, timeout=600)
            for extra in ([], ["--set", "evaluation.k=200"])]
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    return root, [json.loads(r.stdout) for r in runs], "".join(r.stdout + r.stderr for r in runs), folder / "prefect"


def test_flow_publishes_to_s3_and_promotes_through_the_gate(s3_run):
    from pipeline.snapshots.aliases import read_alias
    from pipeline.snapshots.snapshot import Snapshot
    from pipeline.storage.backend import Storage

    root, (first, second), _, _ = s3_run
    assert first["promotion"]["promoted"] and second["promotion"]["promoted"]
    state = read_alias(Storage(root), "s3demo", "live")
    assert state.version == second["version"] and state.previous == first["version"]
    snap = Snapshot.open(f"{root}/aliases/s3demo/live")
    assert snap.version == second["version"] and set(snap.verify()) >= {"ids.parquet", "index/exact.faiss"}
    # the second run's vectors are the cache's files copied on the server: none embedded, the same index bytes
    assert second["counts"]["embedded"] == 0 and second["counts"]["reused_from_cache"] == first["counts"]["chunks"]
    before = Snapshot.open(f"{root}/snapshots/s3demo/{first['version']}")
    assert before.manifest["files"]["index/exact.faiss"] == snap.manifest["files"]["index/exact.faiss"]


def test_each_run_reports_to_a_prefect_server_of_its_own_and_stops_it(s3_run):
    import sqlite3
    import urllib.error
    import urllib.request

    _, _, output, prefect_home = s3_run
    urls = re.findall(r"Starting this run's Prefect server on (http://127\.0\.0\.1:\d+)", output)
    assert len(urls) == 2
    with sqlite3.connect(prefect_home / "prefect.db") as db:  # the server's database, where PREFECT_HOME says
        runs = db.execute("SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON r.flow_id = f.id").fetchall()
    assert runs == [("reindex", "COMPLETED")] * 2
    for url in urls:  # stopped with its run: nothing listens on its port
        with pytest.raises(urllib.error.URLError) as refused:
            urllib.request.urlopen(f"{url}/api/health", timeout=2)
        assert isinstance(refused.value.reason, ConnectionRefusedError), refused.value.reason
    assert "Error logging to API" not in output  # the runs' logs reached their server before it stopped
    assert "View at" not in output  # no link to a UI that the server does not serve, and that stops with it


def test_no_credential_in_any_output_manifest_or_object(s3_run):
    import boto3

    _, summaries, output, _ = s3_run
    assert S3_SECRET not in output and S3_SECRET not in json.dumps(summaries)
    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix="flow/")
            for o in page.get("Contents", [])]
    assert any(k.endswith("manifest.json") for k in keys)
    for key in keys:
        body = s3.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read()
        assert S3_SECRET.encode() not in body and S3_KEY.encode() not in body, key


def test_a_plain_client_reads_the_snapshot_with_boto3_pyarrow_and_faiss(s3_run, tmp_path):
    """What the README shows: no embedpipe code, only boto3 + pyarrow + faiss (+ numpy)."""
    import boto3
    import faiss
    import numpy as np
    import pyarrow.parquet as pq

    _, (_, second), _, _ = s3_run
    s3 = boto3.client("s3")  # endpoint and credentials from the environment
    alias = json.loads(s3.get_object(Bucket=S3_BUCKET, Key="flow/aliases/s3demo/live.json")["Body"].read())
    prefix = f"flow/snapshots/s3demo/{alias['version']}"
    manifest = json.loads(s3.get_object(Bucket=S3_BUCKET, Key=f"{prefix}/manifest.json")["Body"].read())

    def fetch(name: str) -> bytes:
        data = s3.get_object(Bucket=S3_BUCKET, Key=f"{prefix}/{name}")["Body"].read()
        assert hashlib.sha256(data).hexdigest() == manifest["files"][name]["sha256"]
        return data

    (tmp_path / "exact.faiss").write_bytes(fetch("index/exact.faiss"))
    index = faiss.read_index(str(tmp_path / "exact.faiss"))
    ids = pq.read_table(io.BytesIO(fetch("ids.parquet"))).to_pylist()
    vectors = np.load(io.BytesIO(fetch("vectors.f16.npy")), allow_pickle=False).astype("float32")
    _, rows = index.search(vectors[:3], 1)
    assert [ids[r]["chunk_id"] for r in rows[:, 0]] == [ids[i]["chunk_id"] for i in range(3)]
    assert manifest["version"] == second["version"] and manifest["model"]["dims"] == index.d
