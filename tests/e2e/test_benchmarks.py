"""Every script in benchmarks/ runs end to end in its --smoke mode (the same code path on a tiny input) and
writes a report that parses. Smoke runs measure nothing worth asserting: no timing or target is checked here.
The smoke runs are marked `bench` (7-12 minutes in all on 2 cores, each paying its interpreter, Ray and model
loads): `make test-bench` runs them, and CI runs that after the default suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# each script in benchmarks/ -> top-level keys its JSON report must have (beside cpu_model, cpus and smoke, which every
# report has)
REPORT_KEYS = {
    "benchmarks/bm25_reduce.py": {"runs", "streaming_peak_ratio", "met", "in_memory_over_streaming_at_largest"},
    "benchmarks/corpus_planning.py": {"files", "seconds", "ms_per_file", "plan_1_over_32_readers", "before_over_now"},
    "benchmarks/embedding_throughput.py": {"texts", "kernel_plan", "seconds", "texts_per_s", "max_abs_diff_vs_st",
                                           "min_cosine_actor_path_vs_st", "ratio_c_over_a",
                                           "actor_path_over_in_process_seconds"},
    "benchmarks/gpu_embedding.py": {"device", "texts", "paths", "kernel_plans", "ratio_plan_over_best_st"},
    "benchmarks/gpu_index.py": {"n", "plan", "gpus", "runs", "train_speedup_gpu_over_cpu", "recall_gap_gpu_minus_cpu"},
    "benchmarks/hybrid.py": {"table", "targets", "timing", "tuning", "met", "same_as_manifest"},
    "benchmarks/incremental_reindex.py": {"edits", "runs", "identity", "incremental_over_full_flow_run",
                                          "met_flow_run", "unchanged_read_nothing",
                                          "rewritten_hashed_and_published_nothing",
                                          "reordered_read_and_published_nothing"},
    "benchmarks/index_build.py": {"n", "plan", "seconds", "driver_peak_rss_mib", "recall@10_rescored_top100",
                                  "targets"},
    "benchmarks/kept_codes.py": {"docs", "counts", "seconds", "vectors_read", "live_codes_over_every_vector",
                                 "same_files", "met"},
    "benchmarks/kept_merge.py": {"lists", "shards", "sizes", "kept_peak_growth_mib", "added_rows_lists_mib",
                                 "same_files", "met"},
    "benchmarks/many_files.py": {"docs", "few", "many", "s3_files", "runs", "many_over_few",
                                 "piece_per_file_over_gathered", "s3_one_at_a_time_over_fetched_ahead", "met"},
    "benchmarks/kill_resume.py": {"runs", "identical_snapshots", "killed_run_published", "restart_cost_s"},
    "benchmarks/migration.py": {"migrations"},
    "benchmarks/precision.py": {"docs", "queries", "kernel_plan", "ndcg@10", "retention", "min_cosine_docs",
                                "texts_per_s", "retention_by_chance", "retention_one_side", "top10_kept",
                                "retention_interval_95", "queries_changed"},
    "benchmarks/representations.py": {"models", "plot"},
    "benchmarks/scale.py": {"sizes", "cache_runs", "prepare", "ratios", "targets"},
    "benchmarks/scifact_reference.py": {"exact", "ivfpq", "ivfpq_nprobe_sweep", "reproduces_published", "throughput"},
    "benchmarks/serve.py": {"datasets", "clients", "k", "modes"},
    "benchmarks/training_reuse.py": {"data", "n", "factory", "limit", "runs", "lossy_reuses", "needless_retrainings",
                                     "met"},
    "benchmarks/unread_files.py": {"docs", "files", "runs", "same_as_full_build", "prepare_one_over_every",
                                   "flow_run_one_over_every", "prepare_same_bytes_over_every", "hash_s", "met"},
    "benchmarks/worker_memory.py": {"runs", "worker_ratio", "met"},
}
PLOTS = {"benchmarks/representations.py": ["representations.png"]}


def test_every_benchmark_has_a_smoke_test():
    scripts = {f"benchmarks/{p.name}" for p in (REPO / "benchmarks").glob("*.py")}
    helpers = {"benchmarks/__init__.py", "benchmarks/common.py", "benchmarks/recast_weights.py"}  # no benchmarks
    assert REPORT_KEYS.keys() == scripts - helpers


def repo_outputs() -> dict[str, int]:
    """What a full-mode run would write into the repository: a smoke run must leave all of it alone."""
    paths = [*(REPO / "benchmarks" / "out").rglob("*"), REPO / "docs" / "representations.png", REPO / ".embedpipe"]
    return {str(p): p.stat().st_mtime_ns for p in paths if p.exists()}


@pytest.mark.bench
@pytest.mark.parametrize("script", sorted(REPORT_KEYS), ids=lambda script: Path(script).stem)
def test_benchmark_smoke(script, tmp_path, prefect_api):
    before, name = repo_outputs(), Path(script).stem
    proc = subprocess.run([sys.executable, script, "--smoke", "--out", str(tmp_path)], cwd=REPO,
                          env={**os.environ, "PREFECT_API_URL": prefect_api}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    report = json.loads((tmp_path / f"{name}.json").read_text())
    assert REPORT_KEYS[script] | {"cpu_model", "cpus", "smoke"} <= report.keys()
    assert report["smoke"] is True and report["cpu_model"]
    md = (tmp_path / f"{name}.md").read_text()
    assert md.startswith("# ") and f"CPU: {report['cpu_model']}" in md
    for plot in PLOTS.get(script, []):
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")
    assert repo_outputs() == before
