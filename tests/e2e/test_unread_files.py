"""A scheduled reindex of a corpus of many files reads only the files that changed since the live version: the
others' documents are live's rows (pipeline/corpus/files.py). What it publishes is what a full build of the same
files publishes, ids, documents, per-file counts and quarantine included, even where a change moves an id between
a file it reads and one it leaves unread."""

from __future__ import annotations

import os

import polars as pl
import pytest
import yaml

from pipeline.snapshots.snapshot import Snapshot
from tests.conftest import SAMPLE, write_jsonl

FILES = 4
PER_FILE = 15


def config(path, corpus, root, **corpus_extra) -> str:
    path.write_text(yaml.safe_dump({
        "index_name": "files", "corpus": {"source": f"{corpus}/*.jsonl", **corpus_extra},
        "chunking": {"mode": "tokens", "max_tokens": 128, "overlap": 16},
        "evaluation": {"queries": str(SAMPLE / "queries.jsonl"), "qrels": str(SAMPLE / "qrels/test.tsv")},
        "index": {"variants": ["exact", "bm25"]}, "publish": {"alias": "live", "gate": {"max_drop": 1.0}},
        "run": {"shards": 3, "local_embed_max_chunks": 10_000}, "storage": {"root": str(root)}}))
    return str(path)


def published(summary: dict, root) -> dict:
    """What a version holds, for comparing two builds of the same files (change stamps and read/unread aside)."""
    snap = Snapshot.open(summary["snapshot"])
    quarantine = pl.concat([pl.read_parquet(p) for p in (root / "runs" / summary["run_id"]).glob(
        "quarantine/*.parquet")])
    return {"ids": snap.ids.drop("row"), "documents": pl.read_parquet(snap.local_file("documents.parquet")),
            "files": pl.read_parquet(snap.local_file("files.parquet")).drop("stamp", "unread"),
            "quarantine": quarantine.select("source", "position", "doc_id", "reason").sort("source", "position"),
            "counts": {k: summary["counts"][k] for k in ("read", "accepted", "quarantined", "blank_lines", "chunks")},
            "fingerprint": snap.manifest["corpus"]["fingerprint"]}


def assert_same(a: dict, b: dict) -> None:
    for key in ("ids", "documents", "files", "quarantine"):
        assert a[key].equals(b[key]), key
    assert a["counts"] == b["counts"] and a["fingerprint"] == b["fingerprint"]


@pytest.fixture(scope="module")
def builds(prefect_api, sample_docs, tmp_path_factory):
    """v1 of four files; v2 after edits to files 0 and 2 (files 1 and 3 untouched); v3 after another to file 0;
    each incremental version beside a full build of the same files in a fresh root."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.reindex import reindex

    work = tmp_path_factory.mktemp("unread")
    corpus = work / "corpus"
    corpus.mkdir()
    files = [sample_docs[i * PER_FILE:(i + 1) * PER_FILE] for i in range(FILES)]
    for i, docs in enumerate(files):
        write_jsonl(corpus / f"part-{i}.jsonl", docs)
    cfg = config(work / "config.yaml", corpus, work / "store")
    out = {"work": work, "corpus": corpus, "config": cfg, "files": files}
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        out["v1"] = reindex(cfg).to_dict()
        # file 2: two documents edited, one added, and a copy of untouched file 1's first id (a later copy);
        # file 0: a record with untouched file 3's first id (an earlier copy: file 3's record becomes the later one)
        edited = [{**d, "text": d["text"] + " Erratum."} for d in files[2][:2]] + files[2][2:] + [
            {"_id": "added-1", "title": "", "text": "A new abstract on stem cells."},
            {"_id": files[1][0]["_id"], "title": "", "text": "A later copy."}]
        first = files[0] + [{"_id": files[3][0]["_id"], "title": "", "text": "This id now comes from file 0."}]
        write_jsonl(corpus / "part-0.jsonl", first)
        write_jsonl(corpus / "part-2.jsonl", edited)
        # file 1 exported again with the same bytes (a new file renamed over it): left unread by its sha256
        os.replace(write_jsonl(corpus / "part-1.jsonl.new", files[1]), corpus / "part-1.jsonl")
        out["v2"] = reindex(cfg).to_dict()
        out["full2"] = reindex(cfg, {"storage.root": str(work / "full2")}, full=True).to_dict()
        write_jsonl(corpus / "part-0.jsonl", files[0])  # the copy goes: file 3's record is the first again
        out["v3"] = reindex(cfg).to_dict()
        out["full3"] = reindex(cfg, {"storage.root": str(work / "full3")}, full=True).to_dict()
    return out


def test_a_reindex_reads_only_the_changed_files_and_publishes_what_a_full_build_does(builds):
    work, v2 = builds["work"], builds["v2"]
    c = v2["counts"]
    assert (c["files_read"], c["files_unread"], c["pieces"]) == (2, 2, 1)  # the two read in one piece
    assert c["docs_unread"] == 2 * PER_FILE - 1  # file 3's first record lost its id to file 0
    # added-1 is new; file 2's two edits and file 3's id (its text now file 0's) changed; nothing else embedded
    assert (c["docs_new"], c["docs_changed"], c["docs_deleted"]) == (1, 3, 0)
    files = builds["files"]
    redone = {"added-1", files[2][0]["_id"], files[2][1]["_id"], files[3][0]["_id"]}
    ids1, ids2 = (Snapshot.open(builds[v]["snapshot"]).ids for v in ("v1", "v2"))
    embedded = ids2.join(ids1, on="chunk_hash", how="anti")  # chunks v1 had are the cache's
    assert c["embedded"] == embedded.height > 0 and set(embedded["doc_id"].to_list()) <= redone
    assert_same(published(v2, work / "store"), published(builds["full2"], work / "full2"))
    quarantine = published(v2, work / "store")["quarantine"]
    assert quarantine["doc_id"].to_list() == [files[1][0]["_id"], files[3][0]["_id"]]
    tables = [pl.read_parquet(Snapshot.open(builds[v]["snapshot"]).local_file("files.parquet")) for v in ("v1", "v2")]
    assert tables[1]["unread"].to_list() == [False, True, False, True]
    assert [a == b for a, b in zip(tables[0]["stamp"], tables[1]["stamp"], strict=True)] == [False, False, False, True]
    assert tables[0]["sha256"][1] == tables[1]["sha256"][1]  # file 1: written again, the same bytes


def test_a_file_with_a_quarantined_record_is_read_again_and_gets_its_id_back(builds):
    """File 3 lost a record to file 0; once file 0 lets go of that id, file 3 must be read for it to count."""
    work, v3 = builds["work"], builds["v3"]
    c = v3["counts"]
    assert (c["files_read"], c["files_unread"]) == (3, 1)  # file 0 changed; files 2 and 3 hold a quarantined record
    assert_same(published(v3, work / "store"), published(builds["full3"], work / "full3"))
    ids = Snapshot.open(v3["snapshot"]).ids
    assert builds["files"][3][0]["_id"] in set(ids["doc_id"].to_list())
    assert c["quarantined"] == 1  # file 2's copy of file 1's id, still later


def test_a_reindex_with_other_corpus_settings_reads_every_file(builds, prefect_api):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.reindex import reindex

    with temporary_settings({PREFECT_API_URL: prefect_api}):
        summary = reindex(builds["config"], {"corpus.max_chars": 50_000}).to_dict()
    assert (summary["counts"]["files_read"], summary["counts"]["files_unread"]) == (FILES, 0)
