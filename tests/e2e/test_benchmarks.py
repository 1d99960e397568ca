"""Every script in benchmarks/ runs end to end in its --smoke mode (the same code path on a tiny input) and
writes a report that parses. Smoke runs measure nothing worth asserting: no timing or target is checked here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# script -> top-level keys its JSON report must have (beside cpu_model, cpus and smoke, which every report has)
REPORT_KEYS = {
    "embedding_throughput": {"texts", "kernel_plan", "seconds", "texts_per_s", "max_abs_diff_vs_st",
                             "min_cosine_actor_path_vs_st", "ratio_c_over_a", "actor_path_over_in_process_seconds"},
    "gpu_embedding": {"device", "texts", "paths", "kernel_plans", "ratio_plan_over_best_st"},
    "hybrid": {"table", "targets", "timing", "tuning", "met", "same_as_manifest"},
    "incremental_reindex": {"edits", "runs", "identity", "incremental_over_full_flow_run", "met_flow_run"},
    "index_build": {"n", "plan", "seconds", "driver_peak_rss_mib", "recall@10_rescored_top100", "targets"},
    "kill_resume": {"runs", "identical_snapshots", "killed_run_published", "restart_cost_s"},
    "migration": {"migrations"},
    "precision": {"docs", "queries", "kernel_plan", "ndcg@10", "retention", "min_cosine_docs", "texts_per_s"},
    "representations": {"models", "plot"},
    "scale": {"sizes", "cache_runs", "prepare", "ratios", "targets"},
    "scifact_reference": {"exact", "ivfpq", "ivfpq_nprobe_sweep", "reproduces_published", "throughput"},
    "serve": {"datasets", "clients", "k", "modes"},
    "worker_memory": {"runs", "worker_ratio", "met"},
}
PLOTS = {"representations": ["representations.png"]}


def test_every_benchmark_has_a_smoke_test():
    assert REPORT_KEYS.keys() == {p.stem for p in (REPO / "benchmarks").glob("*.py")} - {"__init__", "common"}


def repo_outputs() -> dict[str, int]:
    """What a full-mode run would write into the repository: a smoke run must leave all of it alone."""
    paths = [*(REPO / "benchmarks" / "out").rglob("*"), REPO / "docs" / "representations.png", REPO / ".embedpipe"]
    return {str(p): p.stat().st_mtime_ns for p in paths if p.exists()}


@pytest.mark.parametrize("name", sorted(REPORT_KEYS))
def test_benchmark_smoke(name, tmp_path, prefect_api):
    before = repo_outputs()
    proc = subprocess.run([sys.executable, f"benchmarks/{name}.py", "--smoke", "--out", str(tmp_path)], cwd=REPO,
                          env={**os.environ, "PREFECT_API_URL": prefect_api}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    report = json.loads((tmp_path / f"{name}.json").read_text())
    assert REPORT_KEYS[name] | {"cpu_model", "cpus", "smoke"} <= report.keys()
    assert report["smoke"] is True and report["cpu_model"]
    md = (tmp_path / f"{name}.md").read_text()
    assert md.startswith("# ") and f"CPU: {report['cpu_model']}" in md
    for plot in PLOTS.get(name, []):
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")
    assert repo_outputs() == before
