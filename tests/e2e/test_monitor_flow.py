"""The `monitor live index` flow through a real Prefect server: a healthy live snapshot passes; a corrupted
version made live (its id table shuffled against the FAISS rows, as a faulty build could publish) fails the
run, and the artifact with every metric, baseline, drop and threshold is on the server beside the failed run."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
import yaml

from pipeline.storage.backend import Storage
from tests.conftest import REPO, write_golden_subset

INDEX = "scifact-monitor"


def _in_prefect(api: str, fn, *args, **kwargs):
    """A flow run against the test server; its typed result as the JSON the CLI prints (--json)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        result = fn(*args, **kwargs)
    return result.to_dict() if hasattr(result, "to_dict") else result


def _client_call(api: str, method: str, *args, **kwargs):
    from prefect.client.orchestration import get_client

    async def call():
        async with get_client() as client:
            return await getattr(client, method)(*args, **kwargs)

    return _in_prefect(api, asyncio.run, call())


def _latest_artifact(api: str, key: str):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    return _client_call(api, "read_artifacts", artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                        sort=ArtifactSort.CREATED_DESC)[0]


@pytest.fixture(scope="module")
def live(tmp_path_factory, sample_docs, prefect_api):
    """wordllama on ~200 SciFact docs and 20 golden queries, published and made live by the reindex flow, its steps on
    Ray tasks as a large corpus's would be (the evaluation too, and so the monitor's measuring: neither loads the
    index in the driver). The monitor section is left out: its defaults (mode exact, Recall@10 and MRR@10 may drop
    0.02) apply."""
    from flows.reindex import reindex
    from pipeline.models.catalog import model_section

    folder = tmp_path_factory.mktemp("monitor")
    paths = write_golden_subset(folder / "data", sample_docs, 20, 200)
    cfg = {"index_name": INDEX, "corpus": {"source": str(paths["corpus"])}, "chunking": {"mode": "none"},
           "model": model_section("wordllama-l2-supercat"),
           "evaluation": {"queries": str(paths["queries"]), "qrels": str(paths["qrels"])},
           "index": {"variants": ["exact", "bm25"]},
           "run": {"shards": 2, "local_embed_max_chunks": 10_000, "local_prepare_max_bytes": 0},
           "storage": {"root": str(folder / "store")}, "publish": {"alias": "live"}}
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    summary = _in_prefect(prefect_api, reindex, str(config))
    assert summary["promotion"]["promoted"] and summary["counts"]["executor"] == "ray tasks"
    return str(config), summary


def test_a_healthy_live_index_passes_and_leaves_its_artifact(live, prefect_api):
    from flows.monitor import monitor
    from pipeline.config_loader import load_config

    config, built = live
    result = _in_prefect(prefect_api, monitor, config)
    assert result["passed"] and result["version"] == built["version"] and result["violations"] == []
    baseline = built["evaluation"]["modes"]["exact"]
    assert [(r["metric"], r["baseline"], r["current"], r["drop"], r["max_drop"]) for r in result["rows"]] == [
        ("recall@10", baseline["recall@10"], baseline["recall@10"], 0.0, 0.02),
        ("mrr@10", baseline["mrr@10"], baseline["mrr@10"], 0.0, 0.02)]
    stored = json.loads(Storage.of(load_config(config).storage).read_bytes(result["stored_at"]))
    assert stored["passed"] and stored["stats"]["vectors"]["dims"] == 256
    artifact = _latest_artifact(prefect_api, f"monitor-{INDEX}-live")
    assert "**PASSED**" in artifact.data and f"| recall@10 | {baseline['recall@10']:.4f} |" in artifact.data
    # against the drift statistics the build recorded: the same vectors and query scores, nothing moved
    since = result["drift_vs_publish"]
    assert since["blue"] == {k: v for k, v in built["evaluation"]["drift"].items() if k != "mode"}
    assert all(since[side]["vectors"]["rows"] == 200 for side in ("blue", "green"))
    assert {k: since["blue"][k] for k in ("vectors", "scores", "relevance")} == \
        {k: since["green"][k] for k in ("vectors", "scores", "relevance")}
    assert "Drift since publish time" in artifact.data
    assert _client_call(prefect_api, "read_flow_run", artifact.flow_run_id).state.is_completed()


def test_monitoring_watches_a_hybrid_mode_like_any_other(live, prefect_api):
    from flows.monitor import monitor

    config, built = live
    result = _in_prefect(prefect_api, monitor, config, {"monitor.mode": "hybrid:exact", "monitor.max_drop":
                                                        {"ndcg@10": 0.0}})
    baseline = built["evaluation"]["modes"]["hybrid:exact"]
    assert result["passed"] and result["mode"] == "hybrid:exact" and "bm25" in result["modes"]
    assert [(r["metric"], r["baseline"], r["current"]) for r in result["rows"]] == [
        ("ndcg@10", baseline["ndcg@10"], baseline["ndcg@10"])]
    assert baseline["ndcg@10"] > built["evaluation"]["modes"]["exact"]["ndcg@10"]


def test_drift_statistics_watched_against_publish_time_show_in_the_table(live, prefect_api):
    """monitor.max_drift: the healthy live version's scores and vectors have not moved since its build recorded
    them (zero change passes a zero threshold), and the artifact shows each watched statistic."""
    from flows.monitor import monitor

    config, built = live
    watched = {"scores.top1.mean": 0.0, "vectors.pairwise_cosine.mean": 0.0, "relevance.relevant_first": 0.0}
    result = _in_prefect(prefect_api, monitor, config, {"monitor.max_drift": watched})
    recorded = built["evaluation"]["drift"]
    assert result["passed"] and {c["statistic"]: (c["reference"], c["change"], c["ok"]) for c in
                                 result["drift_rows"]} == {
        "scores.top1.mean": (recorded["scores"]["top1"]["mean"], 0.0, True),
        "vectors.pairwise_cosine.mean": (recorded["vectors"]["pairwise_cosine"]["mean"], 0.0, True),
        "relevance.relevant_first": (recorded["relevance"]["relevant_first"], 0.0, True)}
    artifact = _latest_artifact(prefect_api, f"monitor-{INDEX}-live")
    assert "| drift statistic | at publish | now | change | max change | status |" in artifact.data
    assert "| vectors.pairwise_cosine.mean |" in artifact.data and "MOVED" not in artifact.data


def _publish_corrupted_copy(config: str) -> str:
    """Publish the live version again with its id table shuffled against the FAISS rows (checksums valid,
    the manifest claiming the old quality) and make it live, as a faulty build could."""
    from pipeline.config_loader import load_config
    from pipeline.snapshots.aliases import promote, read_alias
    from pipeline.snapshots.publishing import new_version, publish
    from pipeline.snapshots.snapshot import Snapshot
    from pipeline.storage.tables import parquet_bytes

    cfg = load_config(config)
    storage = Storage.of(cfg.storage)
    seen = read_alias(storage, INDEX, "live").version
    snap = Snapshot.at(storage.child(f"snapshots/{INDEX}/{seen}"))
    files = {name: snap.read_verified(name) for name in snap.manifest["files"]}
    ids = snap.ids
    files["ids.parquet"] = parquet_bytes(ids.select("row").hstack(ids.drop("row").sample(fraction=1.0, shuffle=True,
                                                                                        seed=7)))
    manifest = {k: v for k, v in snap.manifest.items() if k not in ("files", "format", "index_name", "version",
                                                                     "created_at")}
    version = new_version()
    publish(storage, INDEX, version, files, manifest)
    promote(storage, INDEX, "live", version, seen, gate=None, by="test: a faulty build")
    return version


def test_a_corrupted_live_version_fails_the_run_after_writing_its_artifact(live, prefect_api):
    from flows.monitor import monitor
    from pipeline.errors import MonitoringFailed

    config, built = live
    bad = _publish_corrupted_copy(config)
    with pytest.raises(MonitoringFailed, match=r"recall@10 dropped from .* > allowed 0\.02") as failed:
        _in_prefect(prefect_api, monitor, config)
    result = failed.value.result.to_dict()
    assert not result["passed"] and result["version"] == bad and len(result["violations"]) == 2
    assert all(not r["ok"] and r["drop"] > 0.3 for r in result["rows"])
    assert result["previous"]["version"] == built["version"]  # the healthy run before, for drift context
    assert any("previous run checked version" in note for note in result["notes"])
    # the drift since publish time says where: the vectors and the scores did not move, the rows they name did
    since = result["drift_vs_publish"]
    assert since["blue"]["vectors"] == since["green"]["vectors"] and since["blue"]["scores"] == since["green"]["scores"]
    assert since["delta"]["relevance"]["relevant_first"] < -0.3

    artifact = _latest_artifact(prefect_api, f"monitor-{INDEX}-live")
    assert bad in artifact.data and "**FAILED**" in artifact.data and artifact.data.count("DROPPED") == 2
    for r in result["rows"]:  # metric, baseline, current, drop, threshold
        assert (f"| {r['metric']} | {r['baseline']:.4f} | {r['current']:.4f} | {r['drop']:.4f} | 0.0200 | DROPPED |"
                in artifact.data)
    assert _client_call(prefect_api, "read_flow_run", artifact.flow_run_id).state.is_failed()


def test_cli_monitor_prints_the_table_and_exits_1_until_the_alias_is_rolled_back(live, prefect_api):
    from pipeline.config_loader import load_config
    from pipeline.snapshots.aliases import read_alias, rollback

    config, built = live
    env = {**os.environ, "PREFECT_API_URL": prefect_api}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)

    out = cli("monitor", config)  # still the corrupted version from the test before
    assert out.returncode == 1, out.stderr[-2000:]
    assert "DROPPED" in out.stdout and "FAILED" in out.stdout and "recall@10" in out.stdout

    storage = Storage.of(load_config(config).storage)
    rollback(storage, INDEX, "live", read_alias(storage, INDEX, "live").version)
    out = cli("monitor", config, "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["passed"] and result["version"] == built["version"]

    out = cli("monitor", config, "--set", "monitor.mode=ivfpq")  # an error, not a quality failure
    assert out.returncode == 2 and "no search mode 'ivfpq'" in out.stderr, out.stderr[-4000:]


def test_monitor_thresholds_are_validated_by_name_and_range():
    from pipeline.config_loader import parse_config
    from pipeline.errors import ConfigError

    base = {"index_name": "x", "corpus": {"source": "a.jsonl"}}
    with pytest.raises(ConfigError, match=r"monitor\.max_drop\.recall@5"):
        parse_config(base | {"monitor": {"max_drop": {"recall@5": 0.02}}})
    with pytest.raises(ConfigError, match=r"monitor\.max_drop\.mrr@10: Input should be greater than or equal to 0"):
        parse_config(base | {"monitor": {"max_drop": {"mrr@10": -0.1}}})
    with pytest.raises(ConfigError, match=r"monitor\.max_drop: Dictionary should have at least 1 item"):
        parse_config(base | {"monitor": {"max_drop": {}}})
    assert parse_config(base).monitor.max_drop == {"recall@10": 0.02, "mrr@10": 0.02}
