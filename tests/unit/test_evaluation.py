import math

import pytest

from pipeline.quality.metrics import by_rank, evaluate_run, overlap_at_k

# Two queries, worked out by hand:
#  q1 relevant {d1, d3}; ranking d1, d2, d3 -> hits at ranks 1 and 3.
#     DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3); AP@10 = (1/1 + 2/3)/2; RR = 1
#  q2 relevant {d9}; ranking d5, d9 -> hit at rank 2. nDCG = 1/log2(3); AP = 1/2; RR = 1/2
QRELS = {"q1": {"d1": 1, "d3": 1}, "q2": {"d9": 1}}
RUN = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "q2": {"d5": 0.9, "d9": 0.8}}


def test_metrics_match_hand_worked_values():
    m = evaluate_run(QRELS, RUN)
    ndcg_q1 = 1.5 / (1 + 1 / math.log2(3))
    ndcg_q2 = 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-6)
    assert m["map@10"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 2) / 2, abs=1e-6)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2) / 2, abs=1e-6)
    assert m["recall@10"] == pytest.approx(1.0) and m["recall@100"] == pytest.approx(1.0)


def test_cutoffs_and_missing_queries():
    # relevant doc at rank 11: outside every @10 metric, inside recall@100; an unanswered query scores 0
    run = {"q1": {f"x{i:02d}": 100.0 - i for i in range(10)} | {"d1": 1.0}}
    m = evaluate_run(QRELS, run)
    assert m["ndcg@10"] == 0 and m["mrr@10"] == 0 and m["recall@10"] == 0
    assert m["recall@100"] == pytest.approx((1 / 2 + 0) / 2)


def test_overlap_against_reference_run():
    ref = {"q": {f"d{i}": 10.0 - i for i in range(10)}}
    cand = {"q": {f"d{i}": 10.0 - i for i in range(7)} | {"z1": 1.0, "z2": 0.5, "z3": 0.1}}
    assert overlap_at_k(cand, ref, 10) == pytest.approx(0.7)


def test_a_golden_set_judged_beyond_the_index_is_named_not_scored_silently():
    """Relevant documents the index lacks cap every metric whatever the search: the coverage says how many, and
    which share of the queries can only score 0 (graded-0 judgments and unknown queries do not count)."""
    from pipeline.quality.golden import Coverage, coverage, coverage_note

    qrels = {"q1": {"d1": 1, "d3": 1}, "q2": {"d9": 1, "d1": 0}, "q3": {"d7": 2}, "q4": {"d1": 1}}
    queries = {"q1": "a", "q2": "b", "q3": "c"}  # q4 is judged but not asked
    full = coverage(queries, qrels, ["d1", "d1", "d3", "d9", "d7"])  # d1 twice: two chunks of one document
    assert full == Coverage(queries=3, relevant=4, found=4, queries_without=0) and full.note() is None
    part = coverage(queries, qrels, ["d1", "d3", "d5"])
    assert part == Coverage(queries=3, relevant=4, found=2, queries_without=2)
    assert part.note().startswith("2 of the golden set's 4 relevant documents are not in this index, and 2 of its "
                                  "3 queries have none here")
    assert coverage_note({"coverage": part.to_dict()}) == part.note() and coverage_note({}) is None


def test_a_golden_set_whose_judged_queries_have_no_text_fails_naming_them(tmp_path):
    """A judged query missing from the queries file would score 0 in every mode (nDCG@10 0.06 on the demo with 3 of
    its 50 queries): the metric would measure the files. Queries judged only 0 do not count."""
    from pipeline.config import PipelineConfig
    from pipeline.errors import InputError
    from pipeline.quality.golden import golden_set_of
    from tests.conftest import write_jsonl

    write_jsonl(tmp_path / "queries.jsonl", [{"_id": "1", "text": "a"}, {"_id": "4", "text": "d"}])
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n1\tdocA\t1\n2\tdocB\t1\n3\tdocC\t0\n"
                                        "5\tdocA\t2\n")
    cfg = PipelineConfig.model_validate({"index_name": "x", "corpus": {"source": str(tmp_path / "c.jsonl")},
                                         "evaluation": {"queries": str(tmp_path / "queries.jsonl"),
                                                        "qrels": str(tmp_path / "qrels.tsv")}})
    with pytest.raises(InputError, match=r"qrels\.tsv judges 2 queries that .*queries\.jsonl does not hold \(first: "
                                         r"'2', '5'\): expected a text for every judged query"):
        golden_set_of(cfg)
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n1\tdocA\t1\n3\tdocC\t0\n")
    assert golden_set_of(cfg).qrels == {"1": {"docA": 1}, "3": {"docC": 0}}
    # judgments that are all 0: every version would score 0, and a gate comparing zeros would pass anything
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n1\tdocA\t0\n4\tdocC\t0\n")
    with pytest.raises(InputError, match=r"qrels\.tsv judges no document relevant \(a score above 0\) to any query"):
        golden_set_of(cfg)


def test_tied_documents_are_judged_in_the_order_served():
    """Reciprocal-rank fusion and Hamming distances tie often, and trec_eval breaks ties by doc id descending (in
    float32): metrics are computed on each ranking as served (by_rank), so they describe what a user gets."""
    served = {"q": {"d1": 0.5, "d2": 0.5}, "r": {"a": 1.00000002, "b": 1.00000001}}  # d1 and a served first
    qrels = {"q": {"d1": 1}, "r": {"a": 1}}
    assert evaluate_run(qrels, served)["mrr@10"] == 0.5  # trec_eval's own order puts d2 and b first
    assert evaluate_run(qrels, by_rank(served))["mrr@10"] == 1.0
