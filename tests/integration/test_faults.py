"""Crashes during embedding: an actor killed mid-shard, the driver killed between shards. The finished
run's snapshot must equal an uninterrupted run's (same chunk ids, same vectors, same index bytes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_golden_subset


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_docs, prefect_api):
    folder = tmp_path_factory.mktemp("faults")
    write_golden_subset(folder, sample_docs, queries=5, size=40)  # the golden set: for the test that promotes
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({
        "index_name": "faults", "corpus": {"source": str(folder / "corpus.jsonl")},
        "model": {"name": "wordllama-l2-supercat", "package": "wordllama"},
        "chunking": {"max_tokens": 64, "overlap": 8}, "index": {"variants": ["exact", "int8"]},
        "run": {"shards": 4, "actors": 2, "cpus_per_actor": 0.5, "local_embed_max_chunks": 0}}))  # always actors
    cli = shutil.which("embedpipe", path=str(Path(sys.executable).parent))

    def run(root: Path, run_id: str, *sets: str, **faults: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PREFECT_API_URL": prefect_api, **faults}
        return subprocess.run([cli, "run", str(config), "--set", f"storage.root={root}", "--run-id", run_id,
                               *(a for kv in sets for a in ("--set", kv)), "--json", "--no-example"],
                              capture_output=True, text=True, env=env, timeout=600)

    clean = run(folder / "clean", "r1")
    assert clean.returncode == 0, clean.stderr[-3000:]
    return folder, run, json.loads(clean.stdout)


def same_snapshot(a: str, b: str) -> None:
    from pipeline.snapshots.snapshot import Snapshot

    sa, sb = Snapshot.open(a), Snapshot.open(b)
    assert sa.ids.equals(sb.ids)  # same chunk ids, same FAISS rows
    for name in ("vectors.f16.npy", "index/exact.faiss", "index/int8.faiss"):
        assert sa.manifest["files"][name]["sha256"] == sb.manifest["files"][name]["sha256"], name


def test_actor_killed_mid_shard_is_restarted_and_the_run_completes(setup):
    folder, run, clean = setup
    once = folder / "actor-fault-fired"
    result = run(folder / "killed", "r1", EMBEDPIPE_FAULT_KILL_SHARD="1", EMBEDPIPE_FAULT_ONCE=str(once))
    assert result.returncode == 0, result.stderr[-3000:]
    assert once.exists()  # the actor really died once
    summary = json.loads(result.stdout)
    assert summary["counts"]["vectors"] == clean["counts"]["vectors"]
    same_snapshot(clean["snapshot"], summary["snapshot"])


def test_an_actor_killed_after_committing_its_shard_is_counted_as_embedding_it(setup):
    """Ray restarts the actor and retries the shard, which finds its marker: the shard was embedded by this run,
    not by an earlier attempt, so the counts say embedded (they said resumed)."""
    folder, run, clean = setup
    once = folder / "committed-fault-fired"
    result = run(folder / "after-commit", "r1", EMBEDPIPE_FAULT_KILL_COMMITTED_SHARD="1",
                 EMBEDPIPE_FAULT_ONCE=str(once))
    assert result.returncode == 0, result.stderr[-3000:]
    assert once.exists()
    counts = json.loads(result.stdout)["counts"]
    assert (counts["shards_embedded"], counts["shards_skipped"]) == (4, 0)
    assert counts["embedded"] == clean["counts"]["embedded"] and counts["vectors"] == clean["counts"]["vectors"]
    same_snapshot(clean["snapshot"], json.loads(result.stdout)["snapshot"])


def test_an_actor_that_cannot_start_leaves_the_shards_to_the_others(setup):
    """One of two actors fails in its start, Ray's retries too (a GPU out of memory on its node): the run goes on
    with the other and publishes what an uninterrupted run does. (Where the failure is seen before the other actor
    has finished, it used to fail the embed stage; the log then says "an embedding actor could not start".)"""
    folder, run, clean = setup
    failing = folder / "start-fault-actor"  # the actor that claims it fails at every start, Ray's restarts too
    result = run(folder / "one-actor", "r1", EMBEDPIPE_FAULT_FAIL_ACTOR_START=str(failing))
    assert result.returncode == 0, result.stderr[-3000:]
    assert failing.exists()  # an actor claimed the fault, and failed
    counts = json.loads(result.stdout)["counts"]
    assert (counts["shards_embedded"], counts["vectors"]) == (4, clean["counts"]["vectors"])
    same_snapshot(clean["snapshot"], json.loads(result.stdout)["snapshot"])


def test_driver_killed_between_shards_resumes_with_the_same_run_id(setup):
    folder, run, clean = setup
    once = folder / "driver-fault-fired"
    crashed = run(folder / "driver", "r1", EMBEDPIPE_FAULT_EXIT_AFTER_SHARDS="2", EMBEDPIPE_FAULT_ONCE=str(once))
    assert crashed.returncode == 18 and once.exists()
    assert not (folder / "driver" / "snapshots").exists()  # nothing published
    resumed = run(folder / "driver", "r1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    counts = json.loads(resumed.stdout)["counts"]
    # every shard committed before the exit (2, or 3 if the other actor finished one meanwhile) is skipped
    assert counts["shards_skipped"] >= 2 and counts["shards_skipped"] + counts["shards_embedded"] == 4
    same_snapshot(clean["snapshot"], json.loads(resumed.stdout)["snapshot"])


def test_driver_killed_after_its_commit_is_finished_by_a_retry_not_built_again(setup):
    """A run that stopped between its commit and its promote: the retry promotes the committed version instead of
    publishing a second one (which would leave the first as an orphan until gc)."""
    from pipeline.snapshots.aliases import read_alias
    from pipeline.storage.backend import Storage

    folder, run, clean = setup
    once, root = folder / "commit-fault-fired", folder / "committed"
    live = ("publish.alias=live", f"evaluation.queries={folder / 'queries.jsonl'}",
            f"evaluation.qrels={folder / 'qrels.tsv'}")
    crashed = run(root, "r1", *live, EMBEDPIPE_FAULT_EXIT_AFTER_COMMIT="1", EMBEDPIPE_FAULT_ONCE=str(once))
    assert crashed.returncode == 19 and once.exists()
    storage = Storage(str(root))
    [version] = storage.list("snapshots/faults")
    assert storage.exists(f"snapshots/faults/{version}/manifest.json")
    assert read_alias(storage, "faults", "live").version is None  # committed, not promoted
    resumed = run(root, "r1", *live)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)
    assert summary["version"] == version and storage.list("snapshots/faults") == [version]
    assert summary["promotion"]["promoted"] and read_alias(storage, "faults", "live").version == version
    assert summary["counts"]["vectors"] == clean["counts"]["vectors"]
    assert not storage.list("runs/r1/shards")  # finished: its work files went
