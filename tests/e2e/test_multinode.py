"""A real multi-node run: a Ray cluster of two nodes on this machine (a head and a second `ray start` with its own
temp dir), the corpus and the storage root on an S3 server on loopback, so no step can lean on a path the driver
and the workers share. The reindex flow runs every stage on the cluster (pieces, shards, actors, index tasks); the
markers show work on both nodes, and the snapshot equals a one-node run's. The second node declares a GPU (a real
one where the machine has it), for a driver that must let a GPU node choose its actors' kernels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from flows.local_server import free_port
from tests.conftest import REPO, moto_server, stop_processes_mentioning, write_golden_subset

pytestmark = pytest.mark.cluster
RAY = str(Path(sys.executable).parent / "ray")
BUCKET = "multinode"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 server every process reaches (credentials from the environment, as on a real cluster)."""
    import boto3

    port = free_port()
    server = moto_server(port)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "multinode",
           "AWS_SECRET_ACCESS_KEY": "multinode-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="k", aws_secret_access_key="s",
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield env
    server.kill()


@pytest.fixture(scope="module")
def cluster(s3):
    """Two Ray nodes of one CPU each, each with its own temp dir (short paths: Ray's sockets have a limit); only the
    second has a GPU (declared: on a machine without one, a task asking for it is placed there and sees no CUDA)."""
    port, dirs = free_port(), [Path(tempfile.mkdtemp(prefix="rayh", dir="/tmp")),
                               Path(tempfile.mkdtemp(prefix="rayw", dir="/tmp"))]
    env = {**os.environ, **s3, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
                        "--include-dashboard=false",
                        "--disable-usage-stats"], env={**env, "RAY_TMPDIR": str(dirs[0])}, check=True,
                       capture_output=True, timeout=180)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", "--num-gpus=1"],
                       env={**env, "RAY_TMPDIR": str(dirs[1])}, check=True, capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}"
    finally:
        for d in dirs:
            stop_processes_mentioning(str(d), gcs_port=port)
            shutil.rmtree(d, ignore_errors=True)


def _run(config: Path, root: str, env: dict, prefect_api: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(config), "--set", f"storage.root={root}",
                          "--json", "--no-example"], cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**env, "PREFECT_API_URL": prefect_api})
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout)


def test_a_two_node_cluster_on_s3_builds_the_snapshot_a_single_node_builds(tmp_path, sample_docs, s3, cluster,
                                                                             prefect_api, monkeypatch):
    from pipeline.snapshots.snapshot import Snapshot
    from pipeline.storage.backend import Storage

    for key, value in s3.items():  # this process writes the corpus and reads the results on S3 too
        monkeypatch.setenv(key, value)
    paths = write_golden_subset(tmp_path / "data", sample_docs, 10, 200)
    data = Storage(f"s3://{BUCKET}/data")
    for path in paths.values():
        data.put_file(path.name, path)
    urls = {k: data.url_of(p.name) for k, p in paths.items()}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "index_name": "multinode", "corpus": {"source": urls["corpus"]},
        "evaluation": {"queries": urls["queries"], "qrels": urls["qrels"]},
        "model": {"name": "wordllama-l2-supercat", "package": "wordllama"},
        "chunking": {"max_tokens": 64, "overlap": 8}, "index": {"variants": ["exact", "ivfpq", "int8"]},
        "run": {"shards": 4, "actors": 2, "cpus_per_actor": 1.0, "piece_bytes": 65536,
                # every stage on the cluster, however small the corpus; the markers, read below, kept
                "local_prepare_max_bytes": 0, "local_embed_max_chunks": 0, "keep_work": True}}))
    base = {**os.environ, **s3, "RAY_AUTH_MODE": "token"}
    two = _run(config, f"s3://{BUCKET}/two-nodes", base | {"RAY_ADDRESS": cluster}, prefect_api)
    one = _run(config, f"s3://{BUCKET}/one-node", {k: v for k, v in base.items() if k != "RAY_ADDRESS"}, prefect_api)

    assert two["counts"]["executor"] == "ray tasks" and two["counts"]["embedded_in"] == "ray actors"
    assert two["counts"]["pieces"] > 1  # the corpus was read in several pieces
    store = Storage(f"s3://{BUCKET}/two-nodes")
    run = f"runs/{two['run_id']}"
    nodes = {json.loads(store.read_bytes(f"{run}/pieces/{p}/_SUCCESS"))["node"] for p in store.list(f"{run}/pieces")}
    for shard in store.list(f"{run}/shards"):
        for marker in ("_PREPARED", "_SUCCESS"):
            if store.exists(f"{run}/shards/{shard}/{marker}"):
                nodes.add(json.loads(store.read_bytes(f"{run}/shards/{shard}/{marker}"))["node"])
    assert len(nodes) == 2, nodes  # work ran on both nodes

    a, b = Snapshot.open(two["snapshot"]), Snapshot.open(one["snapshot"])
    assert a.verify() and a.ids.equals(b.ids)  # the same chunks in the same rows
    va, vb = (s.index("exact").reconstruct_n(0, s.ids.height) for s in (a, b))
    # the same vectors, to float tolerance (each shard is embedded alone with the run's one kernel, in the same
    # batches, on one thread, so bf16 runs agree as closely as fp32 ones)
    assert np.abs(va - vb).max() < 1e-5
    if np.array_equal(va, vb):  # deterministic from there: the same files, byte for byte
        assert {k: v["sha256"] for k, v in a.manifest["files"].items()} == \
            {k: v["sha256"] for k, v in b.manifest["files"].items()}
    assert two["evaluation"]["modes"]["exact"]["ndcg@10"] == one["evaluation"]["modes"]["exact"]["ndcg@10"]


GPU_PLAN = """
import json, sys
from flows.engine import kernels_for_actors
from operators.kernel_probe import plan_like_an_actor
from pipeline.config_loader import load_config
from pipeline.errors import ClusterError
from pipeline.storage.backend import Storage

cfg = load_config("configs/demo.yaml", {"run.gpus_per_actor": 1, "run.cpus_per_actor": 1})
storage = Storage(sys.argv[1])
pinned, why = kernels_for_actors(cfg, storage, "r1", 0)
resumed, why_resumed = kernels_for_actors(cfg, storage, "r1", 0)
try:
    plan_like_an_actor(cfg.model, cfg.run.model_copy(update={"gpus_per_actor": 2}), timeout_s=3)
    refused = None
except ClusterError as exc:
    refused = str(exc)
kept = json.loads(storage.read_bytes("runs/r1/kernel.json"))
result = {"model": pinned.model.model_dump(), "kept": kept, "why": why, "resumed": resumed.model.model_dump(),
          "why_resumed": why_resumed, "refused": refused}
open(sys.argv[2], "w").write(json.dumps(result))  # not stdout: Ray prints its workers' logs there
"""


def test_a_cpu_driver_lets_a_gpu_node_choose_its_gpu_actors_precision(cluster, tmp_path):
    """model.precision auto with GPU actors and a driver without a GPU (a CPU head node): the driver's CPU must not
    decide the precision (it would run GPUs in fp32, or in what suits its CPU). One task shaped like an actor (a GPU,
    run.cpus_per_actor CPUs) measures the candidates, the run is pinned to its choice, and a resumed run keeps it."""
    env = {**os.environ, "RAY_ADDRESS": cluster, "RAY_AUTH_MODE": "token", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", GPU_PLAN, str(tmp_path / "store"), str(tmp_path / "result.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    plan = result["kept"]["measured"]
    assert not plan["chosen_by"].startswith("pinned") and "chosen on a GPU worker" in result["why"]  # measured there
    assert plan["threads"] == 1  # the actor's CPUs, not this process's
    assert result["model"]["kernel"] == result["kept"]["kernel"] == f"{plan['precision']}-{plan['path']}"
    assert result["model"]["precision"] == plan["precision"]
    # a resumed attempt of the run is pinned to the same kernel without measuring again
    assert result["resumed"] == result["model"] and "this run's first attempt" in result["why_resumed"]
    # no node with two GPUs: a clear error naming what was asked for, not a wait for good
    assert "no Ray worker with 2 GPU(s) and 1 CPU(s) was free within 3 s" in result["refused"]


CPU_PLAN = """
import json, sys
from dataclasses import asdict
from operators.kernel_probe import actor_nodes_by_cpu, plan_across_cpus
from pipeline.config_loader import load_config
from pipeline.models.kernel_plan import cpu_class

cfg = load_config("configs/demo.yaml", {"run.cpus_per_actor": 1})
skipped = plan_across_cpus(cfg.model, cfg.run)
kernel, why, machines = plan_across_cpus(cfg.model, cfg.run, always=True)
result = {"nodes": actor_nodes_by_cpu(cfg.run), "here": cpu_class(), "skipped": skipped, "kernel": kernel,
          "why": why, "machines": [asdict(m) for m in machines]}
open(sys.argv[1], "w").write(json.dumps(result))
"""


def test_cpu_actors_on_a_cluster_measure_every_cpu_kernel_on_each_kind_of_cpu(cluster, tmp_path):
    """CPU actors on a cluster: each node says which CPU it has. Nodes all of this machine's kind leave the plan to
    this process (no measurement); otherwise one task per kind of CPU, shaped like an actor and placed on a node of
    that kind, measures every CPU kernel as that CPU runs it, and the kernel fastest in sum over the actors wins
    (both nodes here share one CPU, so the measurement is asked for explicitly)."""
    env = {**os.environ, "RAY_ADDRESS": cluster, "RAY_AUTH_MODE": "token"}
    out = subprocess.run([sys.executable, "-c", CPU_PLAN, str(tmp_path / "result.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    [(cpu, nodes)] = result["nodes"].items()
    assert cpu == result["here"] and sorted(nodes.values()) == [1, 1]  # two nodes, room for one actor each
    assert result["skipped"] is None  # every node has this machine's CPU: this process's plan is theirs
    [machine] = result["machines"]
    assert machine["cpu"] == cpu and machine["actors"] == 2 and machine["plan"]["threads"] == 1
    measured = {p["kernel"]: p for p in machine["plan"]["probes"]}
    # every offered kernel measured as this CPU runs it (bf16 too, emulated where the CPU has no bf16 units)
    assert set(machine["runs_as"]) == {"fp32-torch", "fp32-onednn", "bf16-onednn", "bf16-autocast"}
    assert set(machine["runs_as"].values()) == set(measured)
    fine = {k: p["tokens_per_s"] for k, p in measured.items() if p["min_cosine"] >= machine["plan"]["tolerance"]}
    assert machine["runs_as"][result["kernel"]] == max(fine, key=fine.get)
    assert result["why"].startswith(f"{result['kernel']}, the fastest in sum over the cluster's kinds of CPU ({cpu}: "
                                    "2 actors at ")
