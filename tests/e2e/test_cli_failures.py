"""How the CLI fails: storage that cannot be reached is found before any engine starts and reported in one
line; storage lost mid-run ends in one `error:` line, not tracebacks; a killed CLI leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from flows.local_server import free_port
from tests.conftest import REPO, S3_BUCKET, S3_SECRET, moto_server, write_golden_subset

EMBEDPIPE = [sys.executable, "-m", "flows.cli"]


def _config(folder: Path, docs: list[dict], root: str) -> Path:
    paths = write_golden_subset(folder / "data", docs, 4, 40)
    cfg = {"index_name": "failures", "corpus": {"source": str(paths["corpus"])},
           "evaluation": {"queries": str(paths["queries"]), "qrels": str(paths["qrels"])},
           "index": {"variants": ["exact"]}, "storage": {"root": root},
           "run": {"shards": 2, "actors": 1, "cpus_per_actor": 1.0, "local_embed_max_chunks": 0}}  # Ray actors
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _s3_env(endpoint: str) -> dict[str, str]:
    """The CLI's environment for a run against `endpoint`, with a Ray of its own: the session cluster's workers
    would write to the session S3 server."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "EMBEDPIPETESTKEY",
            "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    """The run failed with exit 2 and exactly one `error:` line, no traceback, no secret."""
    assert out.returncode == 2, (out.stdout[-2000:], out.stderr[-3000:])
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    assert S3_SECRET not in out.stderr + out.stdout
    return errors[0]


def test_an_unreachable_storage_root_fails_before_any_engine_starts(tmp_path, sample_docs):
    port = free_port()  # nothing listens there
    config = _config(tmp_path, sample_docs, f"s3://{S3_BUCKET}/unreachable")
    out = subprocess.run([*EMBEDPIPE, "run", str(config)], cwd=REPO, env=_s3_env(f"http://127.0.0.1:{port}"),
                         capture_output=True, text=True, timeout=300)
    line = _one_error_line(out)
    assert line.startswith(f"error: storage root s3://{S3_BUCKET}/unreachable: cannot connect to the storage "
                           f"endpoint http://127.0.0.1:{port}")
    assert "Prefect server" not in out.stderr and "ray" not in out.stderr.lower()  # nothing started


def test_a_missing_bucket_is_named_before_any_engine_starts(tmp_path, sample_docs, s3_server):
    config = _config(tmp_path, sample_docs, "s3://no-such-bucket/x")
    out = subprocess.run([*EMBEDPIPE, "run", str(config)], cwd=REPO, env=_s3_env(s3_server),
                         capture_output=True, text=True, timeout=300)
    assert _one_error_line(out) == ("error: storage root s3://no-such-bucket/x: cannot write there: its bucket "
                                    "does not exist")


def test_storage_lost_mid_run_ends_in_one_error_line(tmp_path, sample_docs, prefect_api):
    import boto3

    port = free_port()
    server = moto_server(port)
    env = _s3_env(f"http://127.0.0.1:{port}") | {"PREFECT_API_URL": prefect_api}
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="k", aws_secret_access_key="s",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="midrun")
    config = _config(tmp_path, sample_docs, "s3://midrun/store")
    cli = subprocess.Popen([*EMBEDPIPE, "run", str(config), "--json"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and cli.poll() is None:  # the shards' inputs are written: kill S3
            keys = s3.list_objects_v2(Bucket="midrun", Prefix="store/runs/").get("Contents", [])
            if any("/chunks/" in k["Key"] for k in keys):
                break
            time.sleep(0.2)
        server.kill()
        stdout, stderr = cli.communicate(timeout=400)
    finally:
        server.kill()
        cli.kill()
    line = _one_error_line(subprocess.CompletedProcess(cli.args, cli.returncode, stdout, stderr))
    assert line.startswith("error: storage root s3://midrun/store") and f"127.0.0.1:{port}" in line
    assert stdout == ""  # --json keeps stdout for the result; there is none
    # under it, the run id that resumes the run (chosen inside the flow: the user could not know it otherwise)
    after = stderr.splitlines()[stderr.splitlines().index(line) + 1]
    assert re.fullmatch(r"  run (reindex-[0-9a-f-]+): `--run-id \1` resumes it, keeping what it committed", after)


def test_a_killed_cli_leaves_no_process_behind(tmp_path, sample_docs):
    """kill -9 of `embedpipe run` while its own Prefect server and local Ray run: nothing it started survives (the
    watchdog stops them)."""
    import psutil

    config = _config(tmp_path, sample_docs, str(tmp_path / "store"))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}  # starts its own
    cli = subprocess.Popen([*EMBEDPIPE, "run", str(config), "--json"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    parent = psutil.Process(cli.pid)

    def names() -> list[str]:
        found = []
        for p in parent.children(recursive=True):
            try:
                found.append(" ".join(p.cmdline()))
            except psutil.Error:
                continue
        return found

    deadline = time.monotonic() + 240
    # Ray and the run's Prefect server start side by side (flows/cli/jobs.py _run_flow)
    while time.monotonic() < deadline and not all(any(what in n for n in names())
                                                  for what in ("raylet", "prefect server start")):
        assert cli.poll() is None, "the run ended before Ray and Prefect's server started"
        time.sleep(0.3)
    time.sleep(1.5)  # the watchdog records descendants twice a second
    started = parent.children(recursive=True)
    commands = names()
    assert any("prefect server start" in c for c in commands) and any("raylet" in c for c in commands)  # must go
    os.kill(cli.pid, signal.SIGKILL)
    cli.wait()
    _, alive = psutil.wait_procs(started, timeout=45)
    survivors = []
    for p in alive:
        try:
            survivors.append(" ".join(p.cmdline())[:120])
        except psutil.Error:
            continue
    assert survivors == []


def test_actors_larger_than_this_machine_are_refused_not_waited_for(tmp_path, sample_docs):
    """An actor that asks for more CPUs than a local Ray has would stay pending forever (Ray waits for a node that
    never comes): the run ends in one error line naming the setting, and publishes nothing."""
    config = _config(tmp_path, sample_docs, str(tmp_path / "store"))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}  # a local Ray
    too_many = (os.cpu_count() or 1) + 1
    out = subprocess.run([*EMBEDPIPE, "run", str(config), "--set", f"run.cpus_per_actor={too_many}"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    line = _one_error_line(out)
    assert line.startswith(f"error: an embedding actor asks for {too_many} CPU(s) (run.cpus_per_actor) and 0 GPU(s) "
                           f"(run.gpus_per_actor), and this machine's Ray has {os.cpu_count()} CPU(s)")
    assert not (tmp_path / "store" / "snapshots").exists()


def test_migrate_and_monitor_without_a_live_version_fail_before_any_engine_starts(tmp_path, sample_docs):
    config = _config(tmp_path, sample_docs, str(tmp_path / "root"))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # would start a server of its own
    for command, job in ((["migrate", str(config), "--model", "all-mpnet-base-v2"], "migration"),
                         (["monitor", str(config)], "monitoring")):
        out = subprocess.run([*EMBEDPIPE, *command, "--set", "publish.alias=live"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        line = _one_error_line(out)
        assert line.startswith(f"error: {job} of failures: alias live is not set at {tmp_path / 'root'}, so there "
                               "is no live snapshot to compare with")
        assert "Prefect server" not in out.stderr and "ray" not in out.stderr.lower()  # nothing started


def test_a_prefect_server_that_does_not_answer_is_named_before_any_engine_starts(tmp_path, sample_docs):
    """PREFECT_API_URL at a dead address had ended the run in Prefect's client's RuntimeError traceback."""
    config = _config(tmp_path, sample_docs, str(tmp_path / "root"))
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PREFECT_API_URL": url}
    out = subprocess.run([*EMBEDPIPE, "run", str(config)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert _one_error_line(out).startswith(f"error: no Prefect server answers at PREFECT_API_URL={url}")
    assert "ray" not in out.stderr.lower() and not (tmp_path / "root" / "runs").exists()  # nothing started


def test_a_run_whose_own_prefect_server_cannot_start_says_why_in_one_line(tmp_path, sample_docs):
    """Without PREFECT_API_URL the run starts a Prefect server of its own; one that cannot reach its database ends
    the run in one line with the server's own reason (its database URL's password left out), nothing published."""
    config = _config(tmp_path, sample_docs, str(tmp_path / "root"))
    database = f"postgresql+asyncpg://prefect:{S3_SECRET}@127.0.0.1:{free_port()}/prefect"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_API_DATABASE_CONNECTION_URL": database}
    out = subprocess.run([*EMBEDPIPE, "run", str(config)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    line = _one_error_line(out)  # the password appears nowhere
    assert line.startswith("error: Prefect's server on http://127.0.0.1:") and "exited with code" in line
    assert "Connect call failed" in line and line.endswith("PREFECT_API_URL may name a running server to report "
                                                           "to instead")
    assert not (tmp_path / "root" / "snapshots").exists()
