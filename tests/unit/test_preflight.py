"""The checks a build makes before any engine starts (pipeline/jobs/preflight.py)."""

import re

import pytest

from pipeline.config_loader import parse_config
from pipeline.errors import ConfigError, InputError
from pipeline.jobs.preflight import check_inputs as check_inputs_of
from pipeline.storage.backend import Storage
from tests.conftest import SAMPLE, write_jsonl


def base_config(tmp_path) -> dict:
    return {"index_name": "x", "corpus": {"source": str(SAMPLE)}, "storage": {"root": str(tmp_path / "store")}}


def check_inputs(cfg):
    return check_inputs_of(cfg, Storage.of(cfg.storage))


def test_preflight_names_the_missing_input(tmp_path):
    base = base_config(tmp_path)
    check_inputs(parse_config(base))  # the shipped sample is complete
    with pytest.raises(InputError, match=r"corpus\.source: .*nope\.jsonl does not exist"):
        check_inputs(parse_config({**base, "corpus": {"source": str(tmp_path / "nope.jsonl")},
                                   "storage": {"root": str(tmp_path / "untouched")}}))
    assert not (tmp_path / "untouched").exists()  # a bad input is found before the storage probe writes there
    with pytest.raises(InputError, match=r"corpus\.source: .*missing-dir does not exist"):
        check_inputs(parse_config({**base, "corpus": {"source": str(tmp_path / "missing-dir")}}))
    with pytest.raises(InputError, match=r"evaluation\.qrels: .*q\.tsv does not exist"):
        check_inputs(parse_config({**base, "evaluation": {"queries": str(SAMPLE / "queries.jsonl"),
                                                          "qrels": str(tmp_path / "q.tsv")}}))
    # a relative path is read from the working directory, not the config's folder: the error says which it was
    with pytest.raises(InputError, match=r"data/elsewhere does not exist \(relative to the working directory /"):
        check_inputs(parse_config({**base, "corpus": {"source": "data/elsewhere"}}))


def test_an_alias_without_a_golden_set_fails_before_any_work(tmp_path):
    """The alias moves only through the gate, which needs a golden set: a corpus without one, with publish.alias
    set, would publish every run and promote none. Said before the storage root is touched, with both ways out."""
    corpus = write_jsonl(tmp_path / "c.jsonl", ['{"_id": "d1", "text": "statins and the heart"}'])
    cfg = {**base_config(tmp_path), "corpus": {"source": str(corpus)}}
    with pytest.raises(ConfigError, match=r"publish\.alias 'live' moves only through the quality gate.*has none: set "
                                          r"evaluation\.queries and evaluation\.qrels.*or publish\.alias to null"):
        check_inputs(parse_config({**cfg, "publish": {"alias": "live"}}))
    assert not (tmp_path / "store").exists()
    check_inputs(parse_config(cfg))  # no alias: versions are published, nothing is promoted
    check_inputs(parse_config({**cfg, "publish": {"alias": "live"}, "evaluation": {
        "queries": str(SAMPLE / "queries.jsonl"), "qrels": str(SAMPLE / "qrels" / "test.tsv")}}))


@pytest.mark.parametrize(("variants", "mode", "ok"), [
    (["exact", "ivfpq"], "ivfpq+rescore", True),
    (["exact", "bm25"], "hybrid:exact", True),
    (["binary"], "binary+hamming", True),
    (["ivfpq"], "exact", False),  # the default gate mode, for a build without the exact variant
    (["exact"], "hybrid:exact", False),  # no bm25
    (["exact"], "exact+rescore", False),  # lossless: never evaluated
    (["exact", "ivfpq"], "ivfpq+rescore", False),  # with store_fp16 off (below)
])
def test_a_gate_mode_the_build_does_not_evaluate_fails_before_any_work(tmp_path, variants, mode, ok):
    index = {"variants": variants, "store_fp16": mode != "ivfpq+rescore" or ok}
    cfg = parse_config({**base_config(tmp_path), "index": index, "publish": {"alias": "live", "gate": {"mode": mode}}})
    if ok:
        check_inputs(cfg)
        return
    with pytest.raises(ConfigError, match=rf"publish\.gate\.mode '{re.escape(mode)}' is not a search mode a build of "
                                          rf"index\.variants .* evaluates: expected one of \["):
        check_inputs(cfg)


@pytest.mark.parametrize(("index", "monitor_mode", "error"), [
    ({"variants": ["exact"]}, "exact", None),
    ({"variants": ["ivfpq"], "store_fp16": True}, "ivfpq", None),
    ({"variants": ["exact"]}, "ivfpq", r"for monitor\.mode 'ivfpq', which a build of index\.variants \['exact'\] "
                                       r"does not evaluate"),
    ({"variants": ["exact", "ivfpq"], "store_fp16": False}, "ivfpq", None),
    ({"variants": ["ivfpq"], "store_fp16": False}, "ivfpq", r"cannot read back: keep the fp16 store or add an exact"),
])
def test_a_drift_gate_the_builds_cannot_feed_fails_before_any_work(tmp_path, index, monitor_mode, error):
    """publish.gate.max_drift compares the statistics each build records for monitor.mode from vectors it reads back:
    a config whose builds record none would refuse every candidate."""
    cfg = parse_config({**base_config(tmp_path), "index": index, "monitor": {"mode": monitor_mode},
                        "publish": {"alias": "live", "gate": {"mode": index["variants"][0],
                                                              "max_drift": {"vectors.pairwise_cosine.mean": 0.05}}}})
    if error is None:
        check_inputs(cfg)
        return
    with pytest.raises(ConfigError, match=rf"publish\.gate\.max_drift .*{error}"):
        check_inputs(cfg)
