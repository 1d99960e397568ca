"""The snapshot-management CLI as a user drives it: versions, show, verify, promote, rollback, gc."""

import json

from typer.testing import CliRunner

from flows.cli import app
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from tests.integration.test_aliases import files, put, version

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args))


def test_promote_rollback_versions_verify_gc(tmp_path):
    root = str(tmp_path)
    s = Storage(root)
    put(s, version(1), ndcg=0.60)
    put(s, version(2), ndcg=0.62)
    put(s, version(3), ndcg=0.40)
    assert cli("promote", root, "idx", version(1)).exit_code == 0
    out = cli("promote", root, "idx", version(2), "--max-drop", "0.01")
    assert out.exit_code == 0 and f"{version(1)} -> {version(2)}" in out.stdout
    again = cli("promote", root, "idx", version(2), "--max-drop", "0.01")  # a retry: no move, no history event
    assert again.exit_code == 0 and f"idx/live is at {version(2)} already: nothing changed" in again.stdout
    refused = cli("promote", root, "idx", version(3), "--max-drop", "0.01")
    assert refused.exit_code == 2 and "quality gate refused" in refused.stderr
    stale = cli("promote", root, "idx", version(3), "--expect", version(1), "--no-gate")
    assert stale.exit_code == 2 and "not 20260101" in stale.stderr
    listed = json.loads(cli("versions", root, "idx", "--json").stdout)
    assert [(r["version"], r["aliases"]) for r in listed] == [(version(1), []), (version(2), ["live"]),
                                                              (version(3), [])]
    assert cli("rollback", root, "idx").exit_code == 0
    assert json.loads(cli("show", f"{root}/aliases/idx/live").stdout)["version"] == version(1)
    assert "3 files match" not in cli("verify", f"{root}/snapshots/idx/{version(1)}").stdout  # 2 files
    assert "2 files match" in cli("verify", f"{root}/snapshots/idx/{version(1)}").stdout
    dry = json.loads(cli("gc", root, "idx", "--keep-last", "1", "--grace-hours", "0", "--dry-run", "--json").stdout)
    assert set(dry["delete"]) == {version(2)} and dry["deleted"] == []  # v1: alias; v3: newest
    done = json.loads(cli("gc", root, "idx", "--keep-last", "1", "--grace-hours", "0", "--json").stdout)
    assert done["deleted"] == [version(2)] and version(2) not in s.list("snapshots/idx")
    s.write_bytes(layout.retiring_key("idx", version(3)), b"")  # a gc that stopped after marking it
    assert [r["retiring"] for r in json.loads(cli("versions", root, "idx", "--json").stdout)] == [False, True]
    marked = cli("promote", root, "idx", version(3), "--no-gate")
    assert marked.exit_code == 2 and "being garbage-collected" in marked.stderr


def test_promote_with_max_drift_refuses_a_version_whose_vectors_bunched_together(tmp_path):
    from pipeline.snapshots.publishing import publish

    root = str(tmp_path)
    for day, cosine, rows in ((1, 0.12, 5000), (2, 0.31, 2600)):
        drift = {"mode": "exact", "model": "minilm", "vectors": {"pairwise_cosine": {"mean": cosine}, "rows": rows}}
        manifest = {"index": {"variants": {"exact": {"kind": "exact", "file": "index/exact.faiss"}}},
                    "counts": {"max_chunks_per_doc": 1},
                    "evaluation": {"modes": {"exact": {"ndcg@10": 0.6}}, "drift": drift}}
        publish(Storage(root), "idx", version(day), files(), manifest, publisher="test-run")
    assert cli("promote", root, "idx", version(1)).exit_code == 0
    refused = cli("promote", root, "idx", version(2), "--max-drift", "vectors.pairwise_cosine.mean=0.05")
    assert refused.exit_code == 2 and "quality gate refused" in refused.stderr
    assert "vectors.pairwise_cosine.mean moved from 0.12 (live) to 0.31 (+0.19" in " ".join(refused.stderr.split())
    typo = cli("promote", root, "idx", version(2), "--max-drift", "vectors.pairwise=0.05")
    assert typo.exit_code == 2 and "vectors.pairwise_cosine.mean" in typo.stderr
    assert typo.stderr.startswith("error: the gate (--metric, --mode, --min-value, --max-drop, --max-drift) is "
                                  "invalid:\n  max_drift.vectors.pairwise.[key]: Input should be")
    assert "Traceback" not in typo.stderr and "errors.pydantic.dev" not in typo.stderr
    shrunk = cli("promote", root, "idx", version(2), "--max-drift", "vectors.rows=20%")
    assert shrunk.exit_code == 2 and "vectors.rows moved from 5000 (live) to 2600 (-2400, more than the 20% (1000)" \
        in " ".join(shrunk.stderr.split())
    assert cli("promote", root, "idx", version(2), "--max-drift", "vectors.pairwise_cosine.mean=0.2").exit_code == 0


def test_an_index_that_is_not_there_is_an_error_not_an_empty_list(tmp_path):
    root = str(tmp_path)
    for args in (("versions", root, "idx"), ("gc", root, "idx", "--dry-run")):
        out = cli(*args)
        assert out.exit_code == 2 and f"no index 'idx' under {root}: nothing was published there" in out.stderr
    put(Storage(root), version(1), ndcg=0.60)
    out = cli("versions", root, "idz")
    assert out.exit_code == 2 and f"no index 'idz' under {root}: it holds idx" in out.stderr
    assert cli("versions", root, "idx").exit_code == 0


def test_gc_cache_of_a_root_that_is_not_there_is_an_error_not_a_silent_success(tmp_path):
    out = cli("gc-cache", str(tmp_path / "typo"), "--dry-run")
    assert out.exit_code == 2 and f"nothing under {tmp_path / 'typo'}: no snapshots and no cache" in out.stderr
    Storage(str(tmp_path)).write_bytes("cache/queries/0123abcd/q.parquet", b"")  # only golden-query vectors
    out = cli("gc-cache", str(tmp_path), "--dry-run")
    assert out.exit_code == 0 and "no cached vectors or bm25 terms under" in out.stdout


def test_gc_runs_deletes_the_work_of_runs_abandoned_long_ago_and_keeps_their_records(tmp_path, sample_docs, encoder):
    """Two runs stopped after prepare: one last written 8 days ago, one yesterday (it may still be resumed). gc-runs
    deletes the old one's pieces and shards, keeps its quarantine and run.json, and leaves the other alone."""
    import os
    import time

    from pipeline.config_loader import parse_config
    from pipeline.jobs.executor import LocalExecutor
    from pipeline.jobs.prepare import ShardInput, prepare
    from tests.conftest import write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", sample_docs[:6])
    root = tmp_path / "root"
    cfg = parse_config({"index_name": "t", "corpus": {"source": str(corpus)}, "storage": {"root": str(root)}})
    s = Storage(str(root))
    for run_id, days in (("abandoned", 8), ("recent", 1)):
        prepare(cfg, s, run_id, ShardInput(None), encoder.card, LocalExecutor())  # stopped before embedding
        then = time.time() - days * 86400
        for path in (root / "runs" / run_id).rglob("*"):
            os.utime(path, (then, then))
    dry = json.loads(cli("gc-runs", str(root), "--dry-run", "--json").stdout)
    assert list(dry["delete"]) == ["abandoned"] and list(dry["keep"]) == ["recent"]
    assert dry["delete"]["abandoned"] == "last written 192.0 h ago" and "shards" in s.list("runs/abandoned")
    out = cli("gc-runs", str(root))
    assert out.exit_code == 0 and "deleted the work files of abandoned" in out.stdout
    assert s.list("runs/abandoned") == ["files.parquet", "quarantine", "run.json"]
    assert {"pieces", "shards"} <= set(s.list("runs/recent"))
    assert cli("gc-runs", str(root), "--grace-hours", "0").exit_code == 0
    assert s.list("runs/recent") == ["files.parquet", "quarantine", "run.json"]
    assert "nothing to delete" in cli("gc-runs", str(root)).stdout
    typo = cli("gc-runs", str(tmp_path / "typo"))
    assert typo.exit_code == 2 and "no snapshots and no runs" in typo.stderr


def test_gc_says_kept_for_a_version_an_alias_moved_to_while_it_ran(tmp_path, monkeypatch):
    import pipeline.snapshots.retention as retention
    from pipeline.snapshots.aliases import promote

    root, s = str(tmp_path), Storage(str(tmp_path))
    for day in (1, 2, 3):
        put(s, version(day), ndcg=0.60)
    promote(s, "idx", "live", version(3), None)
    planned = retention.plan_gc

    def plan_then_promote(*args, **kwargs):  # an operator promotes v1 between gc's plan and its deletes
        plan = planned(*args, **kwargs)
        promote(s, "idx", "live", version(1), version(3))
        return plan

    monkeypatch.setattr(retention, "plan_gc", plan_then_promote)
    out = cli("gc", root, "idx", "--keep-last", "1", "--grace-hours", "0")
    assert out.exit_code == 0 and f"deleted {version(2)}" in out.stdout
    assert f"keep   {version(1)}  (an alias moved to it while gc ran)" in out.stdout
    assert f"deleted {version(1)}" not in out.stdout and version(1) in s.list("snapshots/idx")
