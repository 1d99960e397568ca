"""The quality gate's verdicts and reasons (pipeline/snapshots/gate.py)."""

from pipeline.config import GateConfig
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
