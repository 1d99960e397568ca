"""Connecting to Ray (operators/cluster.py) with a stale `ray_current_cluster` file in Ray's temp dir, as a dead
`ray start` leaves it: without RAY_ADDRESS a fresh local instance starts; with it, that cluster is joined as it
is, or the error names the address and why. Each case runs in its own process (one Ray per process)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from flows.local_server import free_port
from tests.conftest import REPO, stop_processes_mentioning

CONNECT = ("import ray\nfrom operators.cluster import ensure_ray\nensure_ray(num_cpus=2)\n"
           "print('CPUS', ray.cluster_resources()['CPU'])\nray.shutdown()\n")


@pytest.fixture
def stale_ray_tmp():
    """RAY_TMPDIR holding a cluster file that names a dead head (short path: Ray's socket paths have a limit)."""
    tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    (tmp / "ray").mkdir()
    (tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def _connect(tmp: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CONNECT], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "RAY_TMPDIR": str(tmp), **env})


def test_without_ray_address_a_fresh_local_instance_starts_despite_a_stale_cluster_file(stale_ray_tmp):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", CONNECT], cwd=REPO, capture_output=True, text=True, timeout=180,
                         env={**env, "RAY_TMPDIR": str(stale_ray_tmp)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CPUS 2.0" in out.stdout  # local, sized as asked


def test_a_dead_ray_address_is_named_with_the_reason(stale_ray_tmp):
    port = free_port()
    out = _connect(stale_ray_tmp, RAY_ADDRESS=f"127.0.0.1:{port}")
    assert out.returncode != 0
    assert f"ClusterError: cannot join the Ray cluster at RAY_ADDRESS=127.0.0.1:{port}: nothing answers there" \
        in out.stderr


def test_a_live_ray_address_is_joined_with_its_own_resources(stale_ray_tmp):
    port = free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_TMPDIR": str(stale_ray_tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
    try:
        # `ray start` turns token authentication on; a driver joining it says so (the token is in ~/.ray)
        out = _connect(stale_ray_tmp, RAY_ADDRESS=f"127.0.0.1:{port}", RAY_AUTH_MODE="token")
        assert out.returncode == 0, out.stderr[-2000:]
        assert "CPUS 1.0" in out.stdout  # the cluster's one CPU, not the 2 asked of a local instance
    finally:
        stop_processes_mentioning(str(stale_ray_tmp), gcs_port=port)
