"""The monitor's verdict (pipeline/jobs/monitoring.py): metrics against the publish-time baseline, and the drift
statistics against those the build recorded, within monitor.max_drift."""

from datetime import UTC, datetime

from pipeline.jobs.monitoring import monitor_result
from pipeline.quality.golden import GoldenSet
from pipeline.quality.measure import Measurement
from pipeline.reports.markdown import monitor_markdown

GOLDEN = GoldenSet({"q1": "a question"}, {"q1": {"d1": 1}}, "golden/queries.jsonl", "golden/qrels.tsv")
METRICS = {"recall@10": 0.8, "mrr@10": 0.6}


def stats(top1: float) -> dict:
    return {"model": "minilm", "scores": {"queries": 300, "top1": {"mean": top1}},
            "vectors": {"rows": 5183, "pairwise_cosine": {"mean": 0.12}}}


def manifest(recorded: dict | None) -> dict:
    evaluation = {"queries": GOLDEN.queries_url, "qrels": GOLDEN.qrels_url, "modes": {"exact": METRICS}}
    return {"index_name": "docs", "version": "v1", "created_at": "2026-12-01T00:00:00+00:00",
            "evaluation": evaluation | ({"drift": {"mode": "exact", **recorded}} if recorded else {})}


def verdict(recorded: dict | None, top1_now: float, max_drift: dict[str, float]):
    measured = Measurement("docs", "v1", "minilm", 384, "exact", {"exact": METRICS}, {}, stats(top1_now))
    return monitor_result("live", manifest(recorded), GOLDEN, measured, {"recall@10": 0.02}, None,
                          now=datetime(2026, 12, 5, tzinfo=UTC), max_drift=max_drift)


def test_scores_that_moved_since_publish_fail_the_run_though_the_metrics_held():
    """The snapshot's vectors cannot change, so a shift of the golden queries' scores since publish time is the
    query side: a tokenizer or library upgrade encoding queries differently from the corpus."""
    watched = {"scores.top1.mean": 0.05, "vectors.pairwise_cosine.mean": 0.0}
    held = verdict(stats(0.71), 0.68, watched)
    assert held.passed and [(c.statistic, c.change, c.ok) for c in held.drift_rows] == [
        ("scores.top1.mean", -0.03, True), ("vectors.pairwise_cosine.mean", 0.0, True)]
    moved = verdict(stats(0.71), 0.63, watched)
    assert not moved.passed and all(r.ok for r in moved.rows)  # the metrics held
    assert moved.violations == ["scores.top1.mean moved from 0.71 (publish time) to 0.63 (-0.08, more than the 0.05 "
                                "allowed either way)"]
    text = monitor_markdown(moved)
    assert "| scores.top1.mean | 0.71 | 0.63 | -0.08 | 0.05 | MOVED |" in text and "**FAILED**" in text
    assert moved.to_dict()["drift_rows"][0] | {"ok": None} == {
        "statistic": "scores.top1.mean", "reference": 0.71, "current": 0.63, "change": -0.08, "max_change": 0.05,
        "relative": None, "ok": None}


def test_a_version_published_without_drift_statistics_is_checked_on_its_metrics_and_says_so():
    result = verdict(None, 0.63, {"scores.top1.mean": 0.05})
    assert result.passed and result.drift_rows == []
    assert result.notes == ["monitor.max_drift not checked: the manifest recorded no drift statistics of mode 'exact' "
                            "at publish time"]
    assert verdict(stats(0.71), 0.2, {}).passed  # nothing watched: the metrics alone decide, as before


def test_drift_since_the_previous_run_compares_the_same_search_mode_only():
    measured = Measurement("docs", "v1", "minilm", 384, "exact", {"exact": METRICS}, {}, stats(0.70))
    previous = {"checked_at": "2026-11-28T00:00:00+00:00", "version": "v1", "passed": True, "stats": stats(0.71)}
    def run_after(mode: str):
        return monitor_result("live", manifest(stats(0.71)), GOLDEN, measured, {"recall@10": 0.02},
                              previous | {"mode": mode})

    same = run_after("exact")
    assert same.drift_vs_previous["delta"]["scores"]["top1"]["mean"] == -0.01 and same.notes == []
    other = run_after("bm25")
    assert other.drift_vs_previous is None
    assert other.notes == ["the previous run measured search mode 'bm25': no drift since then"]


def test_a_golden_set_edited_in_place_is_named_as_a_possible_cause():
    """The same URLs with other contents (its sha256 recorded at publish time): a metric's change may be the golden
    set's, not the index's."""
    from dataclasses import replace

    measured = Measurement("docs", "v1", "minilm", 384, "exact", {"exact": METRICS}, {}, stats(0.71))
    recorded = manifest(None)
    recorded["evaluation"]["golden_sha256"] = "digest-at-publish"
    notes = monitor_result("live", recorded, replace(GOLDEN, digest="digest-now"), measured, {"recall@10": 0.02},
                           None).notes
    assert any("changed since the baseline was measured" in n for n in notes), notes
    same = monitor_result("live", recorded, replace(GOLDEN, digest="digest-at-publish"), measured,
                          {"recall@10": 0.02}, None).notes
    assert not any("golden set" in n for n in same), same
