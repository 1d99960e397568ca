from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from flows.local_server import free_port, loopback_server

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The clusters the tests start with `ray start` use token authentication, and a fresh machine has no token
# (~/.ray/auth_token appears only once some local Ray has run): one for the session, inherited by every process.
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ["RAY_AUTH_MODE"] = "token"  # set before any `import ray`: the driver reads it once, at import
# kernel plans probed once per test session (not read from an earlier session's cache); subprocesses inherit it
os.environ.setdefault("EMBEDPIPE_KERNEL_CACHE", tempfile.mkdtemp(prefix="embedpipe-kernels-"))
# and the weights' digests remembered only within the session, outside the user's home
os.environ.setdefault("EMBEDPIPE_DIGEST_CACHE", tempfile.mkdtemp(prefix="embedpipe-digests-"))

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "scifact-sample"
SCIFACT = REPO.parent / "shared" / "data" / "beir" / "scifact"


def write_jsonl(path: Path, lines: list[str | bytes | dict]) -> Path:
    """Write raw lines (bytes/str kept as-is, dicts as JSON); .gz paths are gzipped."""
    data = b"".join((x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode()) + b"\n"
                    for x in lines)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_elsewhere(url: str, body: bytes | None) -> None:
    """Write (or, with None, delete) `url` as another program would: on S3 through a client of its own, not this
    process's s3fs, whose own writes clear what it keeps cached."""
    if url.startswith("s3://"):
        import boto3

        bucket, _, key = url.removeprefix("s3://").partition("/")
        client = boto3.client("s3")
        if body is None:
            client.delete_object(Bucket=bucket, Key=key)
        else:
            client.put_object(Bucket=bucket, Key=key, Body=body)
    elif body is None:
        Path(url).unlink()
    else:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        Path(url).write_bytes(body)


@pytest.fixture(scope="session")
def sample_docs() -> list[dict]:
    return [json.loads(line) for line in gzip.open(SAMPLE / "corpus.jsonl.gz", "rt", encoding="utf-8")]


@pytest.fixture(scope="session")
def encoder():
    from pipeline.config import ModelConfig
    from pipeline.models.encoder import cached_encoder

    # fp32 through oneDNN, pinned: these tests compare vectors with sentence-transformers and between batchings to
    # 1e-5, which bf16 would not meet (tests/unit/test_kernels.py covers the measured choice)
    return cached_encoder(ModelConfig(precision="fp32", kernel="fp32-onednn"))


@pytest.fixture(scope="session")
def tokenizer(encoder):
    return encoder.tokenizer


# A real S3 server on loopback (moto's standalone server). The credentials are fake but distinctive, so
# tests can assert they never leak into manifests, logs or errors.
S3_KEY, S3_SECRET, S3_BUCKET = "EMBEDPIPETESTKEY", "embedpipe-test-secret-9f3c2a", "embedpipe-test"


@pytest.fixture(scope="session")
def s3_server():
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": S3_KEY,
           "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    yield env["AWS_ENDPOINT_URL"]
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(params=["local", "s3"])
def storage_root(request, tmp_path) -> str:
    """The same tests run against the filesystem backend and the S3 server."""
    if request.param == "local":
        return str(tmp_path / "root")
    import uuid

    request.getfixturevalue("s3_server")
    return f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory) -> Path:
    """The session Prefect server's PREFECT_HOME (its SQLite database is prefect.db there)."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture(scope="session")
def prefect_api(prefect_home):
    """A real Prefect server on loopback: one for the session, not a temporary one per flow run (~12 s each)."""
    with loopback_server(prefect_home) as url:
        yield url


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Loading an encoder with `threads=` sets torch's thread count for the whole process: a later test would run
    on one thread (and skip what needs two) because an earlier one loaded an encoder so."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    yield
    if before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def shared_ray(request):
    """One Ray head for the session, joined through RAY_ADDRESS by every flow the tests run, in this process and in
    subprocesses, as runs join a long-lived cluster: starting a local Ray costs ~9 s of a 2-core machine and
    stopping it 1.5 s, joining one 0.1 s. Its workers see this environment as it is here, with the session S3
    server's endpoint and test credentials: a test that points a run at another endpoint, or needs a cluster of its
    own, drops RAY_ADDRESS. Not started for sessions that need no Ray of theirs (unit tests, `-m cluster`) or when
    RAY_ADDRESS names a cluster already."""
    needs_ray = any("unit" not in item.path.parts and not item.get_closest_marker("cluster")
                    for item in request.session.items)
    if os.environ.get("RAY_ADDRESS") or not needs_ray:
        yield None
        return
    request.getfixturevalue("s3_server")
    port, temp = free_port(), tempfile.mkdtemp(prefix="rays", dir="/tmp")  # short: Ray's socket paths have a limit
    env = {**os.environ, "RAY_TMPDIR": temp}
    subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
                    f"--num-cpus={os.cpu_count()}", "--include-dashboard=false", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=180)
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    try:
        yield os.environ["RAY_ADDRESS"]
    finally:
        del os.environ["RAY_ADDRESS"]
        import ray

        ray.shutdown()  # a driver left connected here would wait 60 s for the stopped head, then abort the process
        stop_processes_mentioning(temp, gcs_port=port)
        shutil.rmtree(temp, ignore_errors=True)


def write_golden_subset(folder: Path, docs: list[dict], queries: int, size: int) -> dict[str, Path]:
    """A small corpus from the SciFact sample that holds every judged doc of its first `queries` golden queries
    (then other docs up to `size`), with those queries and their qrels: the paths of the three files."""
    from pipeline.corpus.readers import read_qrels, read_queries

    qrels = read_qrels(str(SAMPLE / "qrels/test.tsv"))
    texts = read_queries(str(SAMPLE / "queries.jsonl"))
    keep = list(qrels)[:queries]
    judged = {d for q in keep for d in qrels[q]}
    chosen = [d for d in docs if d["_id"] in judged]
    chosen += [d for d in docs if d["_id"] not in judged][: size - len(chosen)]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"corpus": folder / "corpus.jsonl", "queries": folder / "queries.jsonl", "qrels": folder / "qrels.tsv"}
    write_jsonl(paths["corpus"], chosen)
    write_jsonl(paths["queries"], [{"_id": q, "text": texts[q]} for q in keep])
    paths["qrels"].write_text("query-id\tcorpus-id\tscore\n" +
                              "".join(f"{q}\t{d}\t1\n" for q in keep for d in qrels[q]))
    return paths


def stop_processes_mentioning(text: str, gcs_port: int | None = None) -> None:
    """Stop the processes whose command line mentions `text` (e.g. a Ray temp dir), or whose arguments end with
    `:gcs_port` (the head's Ray client server names only the head's address), and their children: how a test
    stops a `ray start` cluster of its own without `ray stop`, which stops every Ray on the machine."""
    import psutil

    from flows.cli.watchdog import stop

    def mentions(p: psutil.Process) -> bool:
        try:
            return any(text in part or (gcs_port and part.endswith(f":{gcs_port}")) for part in p.cmdline())
        except psutil.Error:
            return False

    stop([p for p in psutil.process_iter() if mentions(p)])


@pytest.fixture(scope="session")
def serving_corpus(encoder, sample_docs):
    """60 abstracts of the demo sample embedded with the real model, for the serving tests' snapshots."""
    from tests.serving import sample_corpus

    return sample_corpus(encoder, sample_docs, 60)


def moto_server(port: int) -> subprocess.Popen:
    """moto's S3 server in a process of its own, on loopback: a test can kill it, or share it with other processes
    (a Ray cluster's workers)."""
    import urllib.request

    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2)
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("moto_server did not start")
