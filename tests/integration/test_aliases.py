"""Blue-green aliases, the quality gate, rollback, retention and publish faults, on both backends."""

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from pipeline.config import GateConfig
from pipeline.errors import AliasMoved, GateRefused, PreconditionFailed, SnapshotError
from pipeline.index.faiss_ops import build_exact, to_bytes
from pipeline.snapshots.aliases import _move, list_aliases, promote, read_alias, rollback
from pipeline.snapshots.publishing import claim, commit, publish
from pipeline.snapshots.retention import apply_gc, plan_gc
from pipeline.snapshots.snapshot import MANIFEST, Snapshot
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from tests.integration.test_storage import race

GATE = GateConfig(metric="ndcg@10", mode="exact", min_value=0.5, max_drop=0.01)


def version(day: int, hour: int = 0) -> str:
    return f"202601{day:02d}T{hour:02d}0000000000Z-abc123"


def files() -> dict[str, bytes]:
    return {"index/exact.faiss": to_bytes(build_exact(np.eye(4, dtype=np.float32))), "ids.parquet": b"ids"}


def put(storage: Storage, v: str, ndcg: float | None = 0.6) -> str:
    evaluation = {"modes": {"exact": {"ndcg@10": ndcg}}} if ndcg is not None else {}
    manifest = {"index": {"variants": {"exact": {"kind": "exact", "file": "index/exact.faiss"}}},
                "counts": {"max_chunks_per_doc": 1}, "evaluation": evaluation}
    return publish(storage, "idx", v, files(), manifest, publisher="test-run")


def test_promote_rollback_and_history(storage_root):
    s = Storage(storage_root)
    for day in (1, 2, 3):
        put(s, version(day))
    promote(s, "idx", "live", version(1), seen=None, gate=GATE)
    promote(s, "idx", "live", version(2), seen=version(1), gate=GATE)
    promote(s, "idx", "live", version(3), seen=version(2), gate=GATE)
    assert read_alias(s, "idx", "live").version == version(3)
    rollback(s, "idx", "live", seen=version(3))
    assert read_alias(s, "idx", "live").version == version(2)
    rollback(s, "idx", "live", seen=version(2))  # each rollback steps one promotion further back
    state = read_alias(s, "idx", "live")
    assert state.version == version(1) and state.previous == version(2)
    assert [e["action"] for e in state.history] == ["promote"] * 3 + ["rollback"] * 2
    with pytest.raises(SnapshotError, match="no earlier promoted version"):
        rollback(s, "idx", "live", seen=version(1))
    with pytest.raises(SnapshotError, match=r"alias idx/canary is not set: nothing to roll back"):
        rollback(s, "idx", "canary", seen=None)
    assert len(s.list("aliases/idx/history")) == 5 and list_aliases(s, "idx") == ["live"]
    # readers resolve the alias to a committed version
    assert Snapshot.open(s.url_of("aliases/idx/live")).version == version(1)


def test_promoting_the_live_version_again_changes_nothing_and_rollback_still_steps_back(storage_root):
    s = Storage(storage_root)
    for day in (1, 2):
        put(s, version(day))
    promote(s, "idx", "live", version(1), seen=None, gate=GATE)
    promote(s, "idx", "live", version(2), seen=version(1), gate=GATE)
    before = read_alias(s, "idx", "live")
    state, result = promote(s, "idx", "live", version(2), seen=version(2), gate=GATE)  # a retried promote
    assert (state.version, state.tag, result) == (version(2), before.tag, None)
    assert read_alias(s, "idx", "live").history == before.history
    assert rollback(s, "idx", "live", seen=version(2)).version == version(1)
    # a history written before such promotes changed nothing: its event from a version to itself is skipped
    promote(s, "idx", "live", version(2), seen=version(1), gate=GATE)
    _move(s, read_alias(s, "idx", "live"), version(2), "promote", "an older embedpipe")
    assert rollback(s, "idx", "live", seen=version(2)).version == version(1)


def test_promote_refuses_a_moved_alias_and_uncommitted_versions(storage_root):
    s = Storage(storage_root)
    put(s, version(1))
    put(s, version(2))
    promote(s, "idx", "live", version(1), seen=None)
    with pytest.raises(AliasMoved, match="is at 20260101.*not None"):
        promote(s, "idx", "live", version(2), seen=None)
    s.write_bytes(f"snapshots/idx/{version(3)}/ids.parquet", b"half an upload")
    with pytest.raises(SnapshotError, match="not committed"):
        promote(s, "idx", "live", version(3), seen=version(1))
    assert read_alias(s, "idx", "live").version == version(1)


def test_gate_refuses_worse_candidates_unless_forced(storage_root):
    s = Storage(storage_root)
    put(s, version(1), ndcg=0.60)
    put(s, version(2), ndcg=0.58)  # 0.02 below live: more than max_drop
    put(s, version(3), ndcg=0.40)  # below min_value
    put(s, version(4), ndcg=None)  # never evaluated
    promote(s, "idx", "live", version(1), seen=None, gate=GATE)
    with pytest.raises(GateRefused, match=r"0\.5800 is more than 0\.0100 below live's 0\.6000"):
        promote(s, "idx", "live", version(2), seen=version(1), gate=GATE)
    with pytest.raises(GateRefused, match=r"below the minimum 0\.5000"):
        promote(s, "idx", "live", version(3), seen=version(1), gate=GATE)
    with pytest.raises(GateRefused, match=r"has no ndcg@10 .*: it was not evaluated \(its build had no golden set\)"):
        promote(s, "idx", "live", version(4), seen=version(1), gate=GATE)
    assert read_alias(s, "idx", "live").version == version(1)  # nothing moved
    state, result = promote(s, "idx", "live", version(2), seen=version(1), gate=GATE, force=True, by="alice")
    assert state.version == version(2) and not result.passed
    assert state.history[-1]["forced"] is True and state.history[-1]["by"] == "alice"


QRELS = {"q1": {"a": 1}, "q2": {"b": 1, "w": 0}, "q3": {"c": 1, "z": 0}}  # w: judged, held by no version


def put_judged(storage: Storage, v: str, held: str, exact: dict[str, str], golden: bool = True) -> None:
    """A version holding the documents `held` (one letter each) whose exact search ranks each query's documents in
    the order given, with its golden files as a build writes them (or without, as before they were kept)."""
    from pipeline.quality.golden import coverage
    from pipeline.quality.golden_runs import golden_files
    from pipeline.quality.metrics import evaluate_run

    runs = {"exact": {q: {d: -float(r) for r, d in enumerate(docs)} for q, docs in exact.items()}}
    queries = dict.fromkeys(QRELS, "text")
    evaluation = {"coverage": coverage(queries, QRELS, held).to_dict(),
                  "modes": {"exact": evaluate_run(QRELS, runs["exact"])}}
    kept = golden_files(runs, QRELS, queries, set(held), k=10) if golden else {}
    manifest = {"index": {"variants": {"exact": {"kind": "exact", "file": "index/exact.faiss"}}},
                "counts": {"max_chunks_per_doc": 1}, "evaluation": evaluation}
    publish(storage, "idx", v, files() | kept, manifest, publisher="test-run")


def test_gate_judges_a_corpus_that_lost_judged_documents_on_the_judgments_both_versions_hold(storage_root):
    """A nightly reindex after a judged document was deleted: nDCG falls whatever the search, so the gate compares
    the two versions on the judgments both can find (from the rankings each build kept), and still refuses a
    candidate that searches worse on those."""
    from pipeline.quality.golden_runs import shared_judgments

    s = Storage(storage_root)
    put_judged(s, version(1), "abcxyz", {"q1": "axy", "q2": "xby", "q3": "cxy"})
    put_judged(s, version(2), "bcxyz", {"q1": "xy", "q2": "xby", "q3": "cxy"})  # `a` deleted
    put_judged(s, version(3), "bcxyz", {"q1": "xy", "q2": "xby", "q3": "xyc"})  # and `c` ranked lower
    put_judged(s, version(4), "bcxyz", {"q1": "xy", "q2": "xby", "q3": "cxy"}, golden=False)
    gate = GateConfig(max_drop=0.0)
    promote(s, "idx", "live", version(1), seen=None, gate=gate)

    shared = shared_judgments(s, "idx", version(2), version(1), gate)
    assert (shared.relevant, shared.dropped) == (2, 1) and shared.candidate == shared.live == 0.81546
    state, result = promote(s, "idx", "live", version(2), seen=version(1), gate=gate, shared=shared)
    assert state.version == version(2) and result.passed and result.candidate < result.live
    assert result.notes == ["ndcg@10 0.5436 is more than 0.0000 below live's 0.8770, but 0.8155 against 0.8155 on "
                            "the 2 relevant judgments both versions can find (leaving out 1 judged document only one "
                            "of them holds): the drop is the corpus's, not the search's"]
    assert state.history[-1]["gate"]["shared"]["dropped"] == 1  # the audit trail says what it judged on
    rollback(s, "idx", "live", seen=version(2))

    worse = shared_judgments(s, "idx", version(3), version(1), gate)
    with pytest.raises(GateRefused, match=r"below live's 0\.8770, and 0\.5655 against 0\.8155 on the 2 relevant"):
        promote(s, "idx", "live", version(3), seen=version(1), gate=gate, shared=worse)
    # nothing to settle: the same documents; or a version published without its golden rankings (the refusal then
    # says judged documents left, as before)
    assert shared_judgments(s, "idx", version(1), version(1), gate) is None
    assert shared_judgments(s, "idx", version(4), version(1), gate) is None
    assert shared_judgments(s, "idx", version(9), version(1), gate) is None  # not committed: promote says so
    with pytest.raises(GateRefused, match="index holds 2 against live's 3: judged documents left the corpus"):
        promote(s, "idx", "live", version(4), seen=version(1), gate=gate)
    assert read_alias(s, "idx", "live").version == version(1)


def test_8_concurrent_promoters_exactly_one_wins(storage_root):
    s = Storage(storage_root)
    for day in range(1, 10):
        put(s, version(day))
    promote(s, "idx", "live", version(1), seen=None)
    outcomes = race(8, lambda i: promote(s, "idx", "live", version(i + 2), seen=version(1)))
    winners = [i for kind, i in outcomes if kind == "won"]
    assert len(winners) == 1 and len(outcomes) == 8  # the 7 others got AliasMoved, none silently lost
    state = read_alias(s, "idx", "live")
    assert state.version == version(winners[0] + 2)
    assert [e["version"] for e in state.history] == [version(1), state.version]


def test_8_concurrent_publishers_of_one_version_exactly_one_commits(storage_root):
    s = Storage(storage_root)

    errors = []

    def publisher(i: int) -> None:
        try:
            publish(s, "idx", version(1), {"ids.parquet": f"writer {i}".encode()},
                    {"index": {"variants": {}}, "writer": i}, publisher=f"publisher-{i}")
        except SnapshotError as exc:
            errors.append(str(exc))
            raise PreconditionFailed(str(exc)) from exc

    outcomes = race(8, publisher)
    winners = [i for kind, i in outcomes if kind == "won"]
    assert len(winners) == 1 and len(errors) == 7
    assert all("being published by another publisher" in e or "already exists" in e for e in errors)
    snap = Snapshot.open(s.url_of(f"snapshots/idx/{version(1)}"))
    assert snap.manifest["writer"] == winners[0]
    assert s.read_bytes(f"snapshots/idx/{version(1)}/ids.parquet") == f"writer {winners[0]}".encode()
    assert snap.verify() == {"ids.parquet": "ok"}  # the committed files match the manifest


class Crash(Exception):
    pass


class CrashingStorage(Storage):
    """The real backend, with a crash injected before the n-th write."""

    def __init__(self, root: str, crash_at: int) -> None:
        super().__init__(root)
        self.writes, self.crash_at = 0, crash_at

    def _count(self) -> None:
        self.writes += 1
        if self.writes == self.crash_at:
            raise Crash(f"injected crash before write {self.crash_at}")

    def write_bytes(self, key: str, data: bytes) -> None:
        self._count()
        super().write_bytes(key, data)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self._count()
        super().put_if_absent(key, data)


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4], ids=["claim", "first-file", "second-file", "manifest"])
def test_a_crash_during_publish_leaves_nothing_visible_and_a_rerun_completes(storage_root, crash_at):
    s = Storage(storage_root)
    put(s, version(1))
    promote(s, "idx", "live", version(1), seen=None)
    with pytest.raises(Crash):
        put(CrashingStorage(storage_root, crash_at), version(2))
    assert Snapshot.open(s.url_of("snapshots/idx")).version == version(1)  # newest *committed*
    with pytest.raises(SnapshotError, match="not committed"):
        promote(s, "idx", "live", version(2), seen=version(1))
    assert read_alias(s, "idx", "live").version == version(1)
    put(s, version(2))  # rerun
    assert Snapshot.open(s.url_of(f"snapshots/idx/{version(2)}")).verify()
    promote(s, "idx", "live", version(2), seen=version(1))
    assert Snapshot.open(s.url_of("aliases/idx/live")).version == version(2)


def test_a_crash_after_commit_before_promote_keeps_live_and_promote_completes(storage_root):
    s = Storage(storage_root)
    put(s, version(1))
    promote(s, "idx", "live", version(1), seen=None)
    put(s, version(2))  # committed, then the process died before promoting
    assert read_alias(s, "idx", "live").version == version(1)
    promote(s, "idx", "live", version(2), seen=version(1))
    assert read_alias(s, "idx", "live").version == version(2)


def _two_old_and_a_live(s: Storage) -> tuple[Storage, object]:
    """Versions 1-3 committed, live at 3 (at 1 before), and a gc plan made two hours on, with a grace period of
    one, that deletes 1 and 2."""
    for day in (1, 2, 3):
        put(s, version(day))
    promote(s, "idx", "live", version(1), seen=None)
    promote(s, "idx", "live", version(3), seen=version(1))
    plan = plan_gc(s, "idx", keep_last=1, grace=timedelta(hours=1), now=datetime.now(UTC) + timedelta(hours=2))
    assert set(plan.delete) == {version(1), version(2)}
    return s, plan


def test_a_gc_between_a_promotes_check_and_its_move_never_leaves_the_alias_on_a_deleted_version(storage_root,
                                                                                                monkeypatch):
    """The gc runs whole after the promote checked its target and before it moved the alias: the promote finds
    the target gone once it has moved, moves the alias back, and says so."""
    s, plan = _two_old_and_a_live(Storage(storage_root))
    swap = s.compare_and_swap

    def gc_then_swap(key, data, expected):
        monkeypatch.setattr(s, "compare_and_swap", swap)
        assert sorted(apply_gc(s, plan)) == [version(1), version(2)]  # the alias was still at 3
        return swap(key, data, expected)

    monkeypatch.setattr(s, "compare_and_swap", gc_then_swap)
    with pytest.raises(SnapshotError, match=f"moved back to {version(3)}: .*{version(1)} is not committed"):
        rollback(s, "idx", "live", seen=version(3))
    state = read_alias(s, "idx", "live")
    assert state.version == version(3) and [e["action"] for e in state.history][-2:] == ["rollback", "revert"]
    assert Snapshot.open(s.url_of("aliases/idx/live")).version == version(3)


def test_a_version_marked_by_gc_takes_no_alias_and_a_stopped_gcs_mark_is_cleared(storage_root, monkeypatch):
    """A promote that comes after the gc marked its target is refused; the gc deletes the version. A mark left by
    a gc that stopped half-way refuses promotes too, until a gc that keeps the version takes it off."""
    s, plan = _two_old_and_a_live(Storage(storage_root))
    write, refused = s.write_bytes, []

    def mark_then_promote(key, data):
        write(key, data)
        if key == layout.retiring_key("idx", version(1)):  # marked; the gc has not read the aliases again yet
            with pytest.raises(SnapshotError, match="being garbage-collected") as exc:
                promote(s, "idx", "live", version(1), seen=version(3))
            refused.append(str(exc.value))

    monkeypatch.setattr(s, "write_bytes", mark_then_promote)
    assert sorted(apply_gc(s, plan)) == [version(1), version(2)] and refused
    monkeypatch.setattr(s, "write_bytes", write)
    assert read_alias(s, "idx", "live").version == version(3)

    put(s, version(4))
    s.write_bytes(layout.retiring_key("idx", version(4)), b"")  # a gc stopped after marking it
    with pytest.raises(SnapshotError, match="a gc that stopped half-way leaves the mark"):
        promote(s, "idx", "live", version(4), seen=version(3))
    keep_all = plan_gc(s, "idx", keep_last=5, grace=timedelta(hours=1))
    assert apply_gc(s, keep_all) == []
    promote(s, "idx", "live", version(4), seen=version(3))
    assert read_alias(s, "idx", "live").version == version(4)


def test_gc_keeps_aliased_recent_and_in_flight_versions(storage_root):
    s = Storage(storage_root)
    for day in range(1, 7):
        put(s, version(day))
    promote(s, "idx", "live", version(1), seen=None)
    promote(s, "idx", "live", version(2), seen=version(1))
    s.write_bytes(f"snapshots/idx/{version(7)}/ids.parquet", b"abandoned upload")
    # the alias's history is stamped by the clock: v1 left two hours before this gc, past its one-hour grace
    now = datetime.now(UTC) + timedelta(hours=2)
    assert "within the grace period" in plan_gc(s, "idx", 2, timedelta(hours=1), now - timedelta(hours=1.5)).keep[
        version(1)]
    in_flight = (now - timedelta(minutes=5)).strftime("%Y%m%dT%H%M%S%fZ") + "-ffffff"
    s.write_bytes(f"snapshots/idx/{in_flight}/ids.parquet", b"still uploading")
    resumed = version(8)  # a run that chose its version on day 8 and was resumed minutes ago: it renewed its claim
    claim(s, "idx", resumed, "run-8", now=now - timedelta(days=1))
    claim(s, "idx", resumed, "run-8", now=now - timedelta(minutes=5))
    s.write_bytes(f"snapshots/idx/{resumed}/ids.parquet", b"uploading again")
    plan = plan_gc(s, "idx", keep_last=2, grace=timedelta(hours=1), now=now)
    assert set(plan.delete) == {version(1), version(3), version(4), version(7)}
    assert "claimed within" in plan.keep[resumed]
    assert "alias live points at it" in plan.keep[version(2)]
    assert plan.keep[version(5)].startswith("one of the newest") and "in progress" in plan.keep[in_flight]
    assert plan.delete[version(1)] == "older than the kept versions"  # pointed at, but before the grace period
    before = s.list("snapshots/idx")
    assert sorted(apply_gc(s, plan)) == sorted(plan.delete)
    assert sorted(s.list("snapshots/idx")) == sorted(set(before) - set(plan.delete))
    assert read_alias(s, "idx", "live").version == version(2)
    assert json.loads(s.read_bytes(f"snapshots/idx/{version(2)}/{MANIFEST}"))["version"] == version(2)


def test_a_version_whose_files_went_before_its_commit_is_not_committed(storage_root):
    """A gc (or anything else) deleted files of an upload before its manifest was written: committing it would
    publish a version every reader refuses, so the commit is refused and nothing becomes visible."""
    s = Storage(storage_root)
    claim(s, "idx", version(1), "run-1")
    written = {"ids.parquet": b"ids", "index/exact.faiss": b"faiss bytes"}
    for name, data in written.items():
        s.write_bytes(f"snapshots/idx/{version(1)}/{name}", data)
    files = {name: {"sha256": "0" * 64, "bytes": len(data)} for name, data in written.items()}
    s.delete(f"snapshots/idx/{version(1)}/index/exact.faiss")
    with pytest.raises(SnapshotError, match=r"not committed: 1 of its files are not in storage as written "
                                            r"\(index/exact\.faiss\); was it garbage-collected"):
        commit(s, "idx", version(1), files, {})
    assert not s.exists(f"snapshots/idx/{version(1)}/{MANIFEST}")
    s.write_bytes(f"snapshots/idx/{version(1)}/index/exact.faiss", written["index/exact.faiss"])
    assert commit(s, "idx", version(1), files, {}).endswith(version(1))
