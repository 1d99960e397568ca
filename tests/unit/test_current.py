"""When an incremental reindex finds the live version current and publishes nothing (pipeline/jobs/current.py)."""

from pipeline.config_loader import parse_config
from pipeline.jobs.current import why_live_is_current
from pipeline.snapshots.manifest import library_versions, recorded_config

BASE = {"index_name": "idx", "corpus": {"source": "c.jsonl"}, "index": {"variants": ["exact", "ivfpq"]},
        "evaluation": {"queries": "q.jsonl", "qrels": "r.tsv"}}
COUNTS = {"read": 10, "accepted": 9, "quarantined": 1, "blank_lines": 0, "chunks": 14, "docs_new": 0,
          "docs_changed": 0, "docs_deleted": 0, "docs_kept": 9}


def live(config: dict, counts: dict = COUNTS, digest: str | None = "g1", libraries: dict | None = None) -> dict:
    evaluation = {} if digest is None else {"golden_sha256": digest}
    return {"version": "v1", "config": recorded_config(parse_config(config)), "counts": counts,
            "evaluation": evaluation, "libraries": library_versions() if libraries is None else libraries}


def test_nothing_new_changed_or_deleted_with_the_same_settings_keeps_live():
    cfg = parse_config(BASE)
    why = why_live_is_current(cfg, live(BASE), COUNTS, lambda: "g1")
    assert why.startswith("live version v1 is current: no document new, changed or deleted")
    # how fast vectors are computed is not what they are: a pinned kernel or another batch size keeps live
    faster = BASE | {"model": {"kernel": "fp32-torch", "batch_size": 8}}
    assert why_live_is_current(parse_config(faster), live(BASE), COUNTS, lambda: "g1") == why


def test_any_change_in_documents_counts_settings_golden_set_or_libraries_builds():
    cfg = parse_config(BASE)
    for delta in ("docs_new", "docs_changed", "docs_deleted"):
        assert why_live_is_current(cfg, live(BASE), COUNTS | {delta: 1}, lambda: "g1") is None, delta

    def unread() -> str:
        raise AssertionError("the golden set's files are read only when everything else is the same")

    assert why_live_is_current(cfg, live(BASE), COUNTS | {"docs_new": 1}, unread) is None
    # the same documents, but another line of the input quarantined: live's counts would no longer add up
    assert why_live_is_current(cfg, live(BASE), COUNTS | {"read": 11, "quarantined": 2}, lambda: "g1") is None
    for changed in ({"index": {"variants": ["exact"]}}, {"evaluation": {"queries": "q.jsonl", "qrels": "r.tsv",
                                                                        "k": 200}},
                    {"model": {"precision": "fp32"}}, {"monitor": {"mode": "ivfpq"}},
                    {"corpus": {"source": "c.jsonl", "max_chars": 10}}):
        assert why_live_is_current(parse_config(BASE | changed), live(BASE), COUNTS, lambda: "g1") is None, changed
    assert why_live_is_current(cfg, live(BASE), COUNTS, lambda: "g2") is None  # the golden set's files were edited
    assert why_live_is_current(cfg, live(BASE, digest=None), COUNTS, lambda: "g1") is None  # built before digests
    assert why_live_is_current(cfg, live(BASE, libraries={"faiss-cpu": "1.0"}), COUNTS, lambda: "g1") is None
