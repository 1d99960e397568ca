"""The quality gate's verdicts and reasons (pipeline/snapshots/gate.py)."""

import pytest

from pipeline.config import GateConfig
from pipeline.config_loader import parse_config
from pipeline.errors import ConfigError
from pipeline.snapshots.gate import check_gate


def evaluation(ndcg: float, found: int, relevant: int = 283) -> dict:
    return {"coverage": {"queries": 300, "relevant": relevant, "found": found, "queries_without": 0},
            "modes": {"exact": {"ndcg@10": ndcg}}}


def test_a_drop_from_judged_documents_leaving_the_corpus_is_told_apart():
    """Deleted documents that the golden set judges relevant lower nDCG whatever the search: the refusal says so,
    so that whoever reads it can tell a worse model or index from a corpus that lost judged documents."""
    gate = GateConfig(max_drop=0.0)
    refused = check_gate(gate, evaluation(0.640, found=280), evaluation(0.645, found=283))
    assert not refused.passed and refused.reasons == [
        "ndcg@10 0.6400 is more than 0.0000 below live's 0.6450 (of the golden set's 283 relevant documents, the "
        "index holds 280 against live's 283: judged documents left the corpus, which lowers the metric whatever "
        "the search; promote with --force if that is expected)"]
    # the same documents, or another golden set: the drop is the search's, said plainly
    for candidate in (evaluation(0.640, found=283), evaluation(0.640, found=280, relevant=290)):
        assert check_gate(gate, candidate, evaluation(0.645, found=283)).reasons == [
            "ndcg@10 0.6400 is more than 0.0000 below live's 0.6450"]
    assert check_gate(gate, evaluation(0.645, found=280), evaluation(0.645, found=283)).passed
    # a live version published before coverage was recorded compares as before
    assert check_gate(gate, evaluation(0.640, found=280), {"modes": {"exact": {"ndcg@10": 0.645}}}).reasons == [
        "ndcg@10 0.6400 is more than 0.0000 below live's 0.6450"]


def test_nothing_to_compare_on_and_metrics_that_are_not_numbers_refuse_rather_than_pass():
    from pipeline.snapshots.gate import SharedJudgments

    gate = GateConfig(max_drop=0.01, min_value=0.5)
    # the candidate lost every relevant judged document: 0 against 0 on the shared judgments is no evidence
    lost = check_gate(gate, evaluation(0.0, found=0), evaluation(0.70, found=283), SharedJudgments(0.0, 0.0, 0, 120))
    assert not lost.passed and "no relevant judged document is held by both versions" in lost.reasons[-1]
    nan = check_gate(gate, evaluation(float("nan"), found=283), evaluation(0.70, found=283))
    assert not nan.passed and nan.reasons == ["candidate's ndcg@10 for mode 'exact' is nan: expected a number"]
    # live without the gate's metric: said, and the floor still applies
    other = check_gate(gate, evaluation(0.60, found=283), {"modes": {"ivfpq": {"ndcg@10": 0.7}}})
    assert other.passed and other.notes == ["live has no ndcg@10 for mode 'exact': only the minimum was checked"]


def with_drift(ndcg: float, cosine: float | None, model: str = "minilm", mode: str = "exact") -> dict:
    out = evaluation(ndcg, found=283)
    if cosine is not None:
        out["drift"] = {"mode": mode, "model": model, "scores": {"top1": {"mean": 0.71}},
                        "vectors": {"rows": 5183, "pairwise_cosine": {"mean": cosine}}}
    return out


def test_max_drift_refuses_a_candidate_whose_vectors_moved_though_its_metric_held():
    """A corpus broken upstream (boilerplate for most documents) bunches the vectors together while the golden
    queries, their documents intact, score as before: the metric alone would promote it."""
    gate = GateConfig(max_drop=0.0, max_drift={"vectors.pairwise_cosine.mean": 0.05, "vectors.rows": 1000})
    live = with_drift(0.645, 0.120)
    assert check_gate(gate, with_drift(0.650, 0.170), live).passed  # exactly the allowed change, up or down
    assert check_gate(gate, with_drift(0.650, 0.070), live).passed
    refused = check_gate(gate, with_drift(0.650, 0.311), live)
    assert not refused.passed and refused.candidate > refused.live
    assert refused.reasons == ["vectors.pairwise_cosine.mean moved from 0.12 (live) to 0.311 (+0.191, more than the "
                               "0.05 allowed either way)"]
    assert [(c["statistic"], c["reference"], c["current"], c["change"], c["ok"]) for c in
            refused.to_dict()["drift"]] == [("vectors.pairwise_cosine.mean", 0.12, 0.311, 0.191, False),
                                            ("vectors.rows", 5183, 5183, 0.0, True)]
    # without max_drift the same candidate is promoted
    assert check_gate(GateConfig(max_drop=0.0), with_drift(0.650, 0.311), live).passed


def test_max_drift_compares_only_statistics_that_mean_the_same():
    gate = GateConfig(max_drift={"vectors.pairwise_cosine.mean": 0.05})
    # the candidate must carry them (the check was asked for); a statistic missing on one side fails
    assert check_gate(gate, with_drift(0.65, None), with_drift(0.645, 0.12)).reasons == [
        "candidate recorded no drift statistics, which publish.gate.max_drift compares (a build measures them in "
        "monitor.mode, from the fp16 store or a float variant)"]
    missing = check_gate(GateConfig(max_drift={"scores.at10.mean": 0.05}), with_drift(0.65, 0.3),
                         with_drift(0.645, 0.12))
    assert missing.reasons == ["scores.at10.mean is missing from live"]
    # a live version built before they were recorded, another model (a migration) or mode: not checked, said so
    for live, why in ((with_drift(0.645, None), "the live version recorded no drift statistics"),
                      (with_drift(0.645, 0.12, model="mpnet"), "the live version's statistics are of model 'mpnet', "
                                                                "the candidate's of 'minilm'"),
                      (with_drift(0.645, 0.12, mode="ivfpq"), "the live version's statistics are of mode 'ivfpq', "
                                                               "the candidate's of 'exact'")):
        result = check_gate(gate, with_drift(0.65, 0.9), live)
        assert result.passed and result.notes == [f"drift not checked: {why}"] and result.drift == []
    assert check_gate(gate, with_drift(0.65, 0.9), None).passed  # nothing live: only the floor applies


def test_a_limit_in_percent_is_a_share_of_live_value():
    """A corpus that lost half its documents upstream (a listing that missed files): the golden-set metric may pass
    on the judgments both versions hold, a limit on the rows in percent refuses it, whatever the corpus's size."""
    gate = GateConfig(max_drift={"vectors.rows": "20%"})

    def rows(n: int) -> dict:
        return {**evaluation(0.645, found=283), "drift": {"mode": "exact", "model": "minilm", "vectors": {"rows": n}}}

    assert check_gate(gate, rows(6000), rows(5000)).passed  # exactly 20% more
    assert check_gate(gate, rows(4000), rows(5000)).passed
    refused = check_gate(gate, rows(2600), rows(5000))
    assert refused.reasons == ["vectors.rows moved from 5000 (live) to 2600 (-2400, more than the 20% (1000) allowed "
                               "either way)"]
    assert refused.drift[0].to_dict() | {"ok": None} == {
        "statistic": "vectors.rows", "reference": 5000, "current": 2600, "change": -2400, "max_change": 1000,
        "relative": 0.2, "ok": None}


def test_drift_limits_are_validated_when_the_config_loads():
    base = {"index_name": "x", "corpus": {"source": "a.jsonl"}}
    for limit in ("20 %", "-5%", "lots", -0.1):
        with pytest.raises(ConfigError, match=r"publish\.gate\.max_drift\.vectors\.rows"):
            parse_config(base | {"publish": {"gate": {"max_drift": {"vectors.rows": limit}}}})
    cfg = parse_config(base | {"publish": {"gate": {"max_drift": {"vectors.rows": "12.5%", "vectors.isotropy": 0.05}}}})
    assert cfg.publish.gate.max_drift == {"vectors.rows": "12.5%", "vectors.isotropy": 0.05}


def test_metrics_measured_on_other_golden_sets_or_depths_do_not_compare():
    """Judgments edited since live was measured, or another evaluation.k, make the two numbers incomparable: the
    gate refuses, saying why (a build measures live again on its own golden set before the gate)."""
    gate = GateConfig(max_drop=0.02)
    live = evaluation(1.0, found=283) | {"golden_sha256": "aaa", "k": 100}
    edited = check_gate(gate, evaluation(0.6131, found=283) | {"golden_sha256": "bbb", "k": 100}, live)
    assert not edited.passed and edited.reasons == [
        "the candidate and live were measured on different golden sets (the sha256 of their queries and judgments "
        "differ): their ndcg@10 do not compare (a build measures live again on its own golden set; --force promotes "
        "past the gate)"]
    deeper = check_gate(gate, evaluation(1.0, found=283) | {"golden_sha256": "aaa", "k": 200}, live)
    assert not deeper.passed and "to different depths (evaluation.k 200 for the candidate, 100 for live)" in \
        deeper.reasons[0]
    # the same golden set, or a live version that recorded neither: compared as before
    assert check_gate(gate, evaluation(0.99, found=283) | {"golden_sha256": "aaa", "k": 100}, live).passed
    assert check_gate(gate, evaluation(0.99, found=283) | {"golden_sha256": "bbb"}, evaluation(1.0, found=283)).passed


def test_a_drop_of_exactly_max_drop_passes():
    """0.40 - 0.35 is 0.05000000000000004 in floating point: the gate rounds as the monitor's thresholds do."""
    for live, candidate, max_drop in ((0.40, 0.35, 0.05), (0.20, 0.18, 0.02)):
        result = check_gate(GateConfig(max_drop=max_drop), evaluation(candidate, 283), evaluation(live, 283))
        assert result.passed, (live, candidate, result.reasons)
    assert not check_gate(GateConfig(max_drop=0.05), evaluation(0.3499, 283), evaluation(0.40, 283)).passed
