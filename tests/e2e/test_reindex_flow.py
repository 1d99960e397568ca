"""End to end: the `reindex` flow through a real Prefect server and local Ray on ~200 SciFact documents, with
vector variants and bm25 (hybrid search from the CLI, the bm25 files read by plain bm25s)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import polars as pl
import pytest
import yaml

from pipeline.corpus.readers import read_qrels, read_queries
from pipeline.storage.tables import table_of
from tests.conftest import REPO, SAMPLE, write_jsonl

BAD_LINES = ['{"_id": "bad-json", "text": ', {"_id": "31715818", "text": "a duplicate of a judged doc"},
             {"_id": "empty", "title": "no text", "text": ""},
             '{"_id": "surrogate", "text": "valid JSON, invalid Unicode: \\ud800"}', ""]  # "": a blank line


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, sample_docs):
    """~200 SciFact docs (every judged doc of the first 20 queries) plus 3 bad records, with its golden set."""
    folder = tmp_path_factory.mktemp("corpus")
    qrels = read_qrels(str(SAMPLE / "qrels/test.tsv"))
    queries = read_queries(str(SAMPLE / "queries.jsonl"))
    keep_q = list(qrels)[:20]
    judged = {d for q in keep_q for d in qrels[q]}
    docs = [d for d in sample_docs if d["_id"] in judged]
    docs += [d for d in sample_docs if d["_id"] not in judged][: 200 - len(docs)]
    write_jsonl(folder / "corpus.jsonl", docs[:100] + BAD_LINES + docs[100:])
    write_jsonl(folder / "queries.jsonl", [{"_id": q, "text": queries[q]} for q in keep_q])
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                      "".join(f"{q}\t{d}\t1\n" for q in keep_q for d in qrels[q]))
    return folder, {q: queries[q] for q in keep_q}, {q: qrels[q] for q in keep_q}


@pytest.fixture(scope="module")
def config_path(small_corpus, tmp_path_factory):
    folder, _, _ = small_corpus
    root = tmp_path_factory.mktemp("store")
    cfg = {"index_name": "scifact-small", "corpus": {"source": str(folder / "corpus.jsonl")},
           "chunking": {"mode": "tokens", "max_tokens": 128, "overlap": 16},
           "evaluation": {"queries": str(folder / "queries.jsonl"), "qrels": str(folder / "qrels.tsv")},
           "index": {"variants": ["exact", "ivfpq", "bm25"]},
           # keep_work: the tests below read the finished run's shards
           "run": {"shards": 4, "actors": 2, "cpus_per_actor": 0.5, "keep_work": True}, "storage": {"root": str(root)}}
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def first_run(prefect_api, config_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.reindex import reindex

    with temporary_settings({PREFECT_API_URL: prefect_api}):
        summary = reindex(str(config_path)).to_dict()  # as the CLI prints it with --json
    yield summary
    import ray

    ray.shutdown()


def test_flow_publishes_a_verified_snapshot_with_reconciled_counts(first_run):
    from pipeline.snapshots.snapshot import Snapshot

    counts = first_run["counts"]
    assert counts["read"] == 204 and counts["accepted"] == 200 and counts["quarantined"] == 4
    assert counts["read"] == counts["accepted"] + counts["quarantined"]
    assert counts["blank_lines"] == 1  # every line of the file is accounted for: 204 + 1 = 205 lines
    assert counts["vectors"] == counts["chunks"] > 200 and counts["shards_embedded"] == 4
    snap = Snapshot.open(first_run["snapshot"])
    bm25 = {f"index/bm25/{name}" for name in ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy",
                                               "vocab.index.json", "params.index.json")}
    assert set(snap.verify()) == {"ids.parquet", "documents.parquet", "files.parquet", "index/exact.faiss",
                                  "index/ivfpq.faiss", "index/ivfpq.ivfdata", "index/ivfpq.trained.faiss",
                                  "vectors.f16.npy", "golden/runs.parquet", "golden/judgments.parquet"} | bm25
    assert snap.ids.height == counts["chunks"] and snap.ids["doc_id"].n_unique() == 200
    # each input line's fate, by file, and each accepted document's record, in the version itself
    [file] = pl.read_parquet(snap.local_file("files.parquet")).to_dicts()
    assert (file["read"], file["accepted"], file["quarantined"], file["blank_lines"]) == (204, 200, 4, 1)
    assert pl.read_parquet(snap.local_file("documents.parquet"))["doc_id"].n_unique() == 200
    m = snap.manifest
    assert m["counts"]["blank_lines"] == 1 and m["counts"]["quarantined"] == 4
    assert m["model"]["weights_sha256"].startswith("53aa5117") and m["chunking"]["max_tokens"] == 128
    ivfpq = m["index"]["variants"]["ivfpq"]
    assert ivfpq["factory"].startswith("IVF") and ivfpq["factory"].endswith("np")
    on_disk = m["files"]["index/ivfpq.faiss"]["bytes"] + m["files"]["index/ivfpq.ivfdata"]["bytes"]
    assert ivfpq["index_bytes"] == on_disk and "ivfpq+rescore" in ivfpq["quality"]
    assert m["evaluation"]["modes"]["exact"]["ndcg@10"] > 0.7
    assert "recall@10_vs_exact" in m["evaluation"]["modes"]["ivfpq"]
    covered = m["evaluation"]["coverage"]  # every judged document of the 20 queries is in the corpus
    assert covered["queries"] == 20 and covered["found"] == covered["relevant"] > 0 and not covered["queries_without"]
    # the rankings kept for later gates give back the metrics recorded (pipeline/quality/golden_runs.py)
    from pipeline.quality.metrics import evaluate_run

    judged = pl.read_parquet(io.BytesIO(snap.read_verified("golden/judgments.parquet")))
    ranked = pl.read_parquet(io.BytesIO(snap.read_verified("golden/runs.parquet")))
    assert judged["held"].all() and judged["query_id"].n_unique() == 20
    assert set(ranked["mode"]) == set(m["evaluation"]["modes"]) and ranked["rank"].max() == 99  # evaluation.k 100
    qrels = {q: dict(zip(g["doc_id"], g["grade"], strict=True)) for (q,), g in judged.group_by("query_id")}
    exact = {q: dict(zip(g["doc_id"], (-g["rank"]).cast(float), strict=True))
             for (q,), g in ranked.filter(pl.col("mode") == "exact").group_by("query_id")}
    assert round(evaluate_run(qrels, exact)["ndcg@10"], 5) == m["evaluation"]["modes"]["exact"]["ndcg@10"]
    drift = m["evaluation"]["drift"]  # the monitor's mode (exact): what a later measurement is compared with
    assert drift["mode"] == "exact" and drift["vectors"]["rows"] == counts["chunks"]
    assert drift["scores"]["queries"] == 20 and drift["relevance"]["relevant_first"] > 0.5
    lexical = m["index"]["variants"]["bm25"]
    assert lexical["scoring"] == {"method": "lucene", "k1": 1.2, "b": 0.75} and lexical["statistics"]["chunks"] == \
        counts["chunks"]
    assert lexical["analyzer"]["stopwords"] == "en" and lexical["analyzer"]["stemmer"] == "english"
    assert m["index"]["fusion"]["weight"] == 0.5 and m["config"]["index"]["bm25"]["k1"] == 1.2
    assert set(lexical["quality"]) == {"bm25", "hybrid:exact", "hybrid:ivfpq", "hybrid:ivfpq+rescore",
                                       "hybrid-rrf:exact"}
    assert lexical["index_bytes"] == sum(m["files"][f]["bytes"] for f in bm25)
    modes = m["evaluation"]["modes"]
    assert modes["bm25"]["ndcg@10"] < modes["hybrid:exact"]["ndcg@10"] > 0.9  # (MiniLM alone is better on this set)

    # lineage: the kernel plan the driver measured (it encodes the queries) and what embedded each shard: the same
    # kernel, pinned, on every actor
    queries = m["model"]["kernels"]["queries"]
    assert queries["chosen_by"] in ("probe", "cache") and queries["precision"] == m["model"].get("precision", "fp32")
    kernel = f"{queries['precision']}-{queries['path']}"
    assert kernel in {p["kernel"] for p in queries["probes"]}
    [(label, shards)] = m["model"]["kernels"]["passages"].items()
    assert label.startswith(f"{kernel} on ") and shards == 4 and m["counts"]["kernels"] == {label: 4}
    # why: every Ray node here has this machine's CPU, so the plan measured here is the workers' too
    assert m["model"]["kernels"]["choice"].startswith(f"{kernel} on ")


def test_plain_bm25s_reads_the_published_bm25_files(first_run):
    """A reader without embedpipe: bm25s loads the folder memory-mapped, queries analysed as the manifest says."""
    import bm25s
    import Stemmer

    from pipeline.quality.search import Searcher
    from pipeline.snapshots.snapshot import Snapshot

    snap = Snapshot.open(first_run["snapshot"])
    analyzer = snap.manifest["index"]["variants"]["bm25"]["analyzer"]
    retriever = bm25s.BM25.load(Path(first_run["snapshot"]) / "index" / "bm25", mmap=True)
    query = "biomaterials with inductive properties"
    assert analyzer["normalize"] == "NFKC"  # a reader normalises first: unicodedata.normalize("NFKC", query)
    tokens = bm25s.tokenize([query], stopwords=analyzer["stopwords"], stemmer=Stemmer.Stemmer(analyzer["stemmer"]),
                            return_ids=False, show_progress=False)
    rows, _ = retriever.retrieve(tokens, k=5, show_progress=False)
    docs = snap.ids["doc_id"].gather(rows[0].tolist()).to_list()  # FAISS row = bm25 row -> chunk -> document
    hits = Searcher.from_snapshot(snap).search([query], 5, "bm25")[0]
    assert docs[0] == hits[0].doc_id and snap.ids["chunk_id"][int(rows[0][0])] == hits[0].chunk_id


def test_quarantine_table_keeps_each_bad_record_with_its_reason(first_run, config_path):
    import polars as pl

    root = yaml.safe_load(config_path.read_text())["storage"]["root"]
    q = pl.read_parquet(Path(root) / "runs" / first_run["run_id"] / "quarantine" / "*.parquet")
    assert sorted(r.split(":")[0] for r in q["reason"]) == ["duplicate id", "empty text", "invalid JSON",
                                                            "invalid Unicode"]
    assert q.filter(pl.col("reason").str.starts_with("duplicate"))["position"].to_list() == [102]


def first_run_fingerprint(summary: dict) -> str:
    from pipeline.snapshots.snapshot import Snapshot

    return Snapshot.open(summary["snapshot"]).manifest["model"]["fingerprint"]


def test_each_shard_is_committed_with_vectors_that_carry_their_model_card(first_run, config_path):
    import polars as pl

    from pipeline.jobs.shards import MODEL_CARD_KEY

    root = Path(yaml.safe_load(config_path.read_text())["storage"]["root"])
    shard_dirs = sorted((root / "runs" / first_run["run_id"] / "shards").iterdir())
    assert len(shard_dirs) == 4
    total = 0
    for d in shard_dirs:
        marker = json.loads((d / "_SUCCESS").read_text())
        vectors = pl.concat([table_of(part.read_bytes()) for part in sorted((d / "vectors").iterdir())])
        card = json.loads(pl.read_parquet_metadata(next((d / "vectors").iterdir()))[MODEL_CARD_KEY])
        assert marker["chunks"] == vectors.height and vectors["vector"].dtype == pl.Array(pl.Float32, 384)
        assert card["name"] == "all-MiniLM-L6-v2" and card["dims"] == 384
        assert marker["model_fingerprint"] == first_run_fingerprint(first_run) and " on " in marker["kernel"]
        total += vectors.height
    assert total == first_run["counts"]["chunks"]


def test_judged_document_of_a_known_query_ranks_in_top_10(first_run, small_corpus):
    from pipeline.quality.search import Searcher
    from pipeline.snapshots.snapshot import Snapshot

    _, queries, qrels = small_corpus
    searcher = Searcher.from_snapshot(Snapshot.open(first_run["snapshot"]))
    for variant in ("exact", "ivfpq"):
        hits = searcher.search([queries["1"]], 10, variant)[0]  # "0-dimensional biomaterials show inductive ..."
        assert "31715818" in [h.doc_id for h in hits], variant
        assert len({h.doc_id for h in hits}) == 10 and hits[0].title


def test_flow_run_and_artifact_are_recorded_on_the_server(first_run, prefect_api):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    run_id = UUID(first_run["run_id"].removeprefix("reindex-"))  # a run with no run.run_id is named by its flow run

    async def query():
        async with get_client() as client:
            run = await client.read_flow_run(run_id)
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["reindex-scifact-small"]), flow_run_id=ArtifactFilterFlowRunId(
                    any_=[run_id])))
            return run, arts

    with temporary_settings({PREFECT_API_URL: prefect_api}):
        run, artifacts = asyncio.run(query())
    assert run.state.is_completed()
    assert len(artifacts) == 1 and first_run["version"] in artifacts[0].data and "ndcg@10" in artifacts[0].data


def test_rerun_after_a_crash_redoes_only_the_unfinished_shard(first_run, prefect_api, config_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.reindex import reindex
    from pipeline.snapshots.snapshot import Snapshot

    root = Path(yaml.safe_load(config_path.read_text())["storage"]["root"])
    shard_dir = sorted((root / "runs" / first_run["run_id"] / "shards").iterdir())[1]
    (shard_dir / "_SUCCESS").unlink()  # as if the worker died before committing this shard
    shutil.rmtree(shard_dir / "vectors")
    (shard_dir / "_TERMS").unlink()  # and before it analysed the shard for bm25
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        again = reindex(str(config_path), run_id=first_run["run_id"]).to_dict()
    assert (again["counts"]["shards_embedded"], again["counts"]["shards_skipped"]) == (1, 3)
    assert again["version"] != first_run["version"]
    a, b = Snapshot.open(first_run["snapshot"]), Snapshot.open(again["snapshot"])
    assert a.ids.equals(b.ids)  # same chunks, same FAISS rows
    assert a.manifest["files"]["index/exact.faiss"]["sha256"] == b.manifest["files"]["index/exact.faiss"]["sha256"]
    # the shard was analysed again, its terms from the cache: no text went through the analyzer twice
    c = again["counts"]
    assert c["bm25_analysed"] == 0 < c["bm25_terms_from_cache"] < c["vectors"]
    assert all(a.manifest["files"][f] == b.manifest["files"][f] for f in a.variant_params("bm25")["files"])


def test_cli_search_and_evaluate_print_json(first_run, small_corpus):
    folder, _, _ = small_corpus
    cli = shutil.which("embedpipe", path=str(Path(sys.executable).parent))
    out = subprocess.run([cli, "search", first_run["snapshot"], "biomaterials inductive properties", "-k", "3",
                          "--json"], capture_output=True, text=True, check=True, cwd=REPO)
    result = json.loads(out.stdout)
    assert result["version"] == first_run["version"] and len(result["hits"]) == 3
    assert result["hits"][0]["score"] >= result["hits"][-1]["score"]
    out = subprocess.run([cli, "evaluate", first_run["snapshot"], "--queries", str(folder / "queries.jsonl"),
                          "--qrels", str(folder / "qrels.tsv"), "--json"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)["modes"]
    def quality(metrics: dict) -> dict:
        return {k: v for k, v in metrics.items() if k != "ms_per_query"}  # a timing, not a quality figure

    for mode, metrics in first_run["evaluation"]["modes"].items():  # same snapshot, same numbers, hybrid included
        assert quality(report[mode]) == quality(metrics), mode
    shallow = subprocess.run([cli, "evaluate", first_run["snapshot"], "-k", "10"], capture_output=True, text=True)
    assert shallow.returncode == 2 and "greater than or equal to 100" in shallow.stderr  # recall@100 needs 100


def test_cli_hybrid_search_and_weight_tuning(first_run, small_corpus):
    folder, _, _ = small_corpus
    cli = shutil.which("embedpipe", path=str(Path(sys.executable).parent))
    hits = {}
    for mode, extra in (("exact", []), ("hybrid:exact", []), ("bm25", []), ("hybrid:ivfpq+rescore", ["--weight", "1"])):
        out = subprocess.run([cli, "search", first_run["snapshot"], "biomaterials inductive properties", "-k", "5",
                              "--mode", mode, *extra, "--json"], capture_output=True, text=True, check=True, cwd=REPO)
        found = json.loads(out.stdout)["hits"]
        assert [h["rank"] for h in found] == [1, 2, 3, 4, 5]  # as the HTTP API names them
        hits[mode] = [h["doc_id"] for h in found]
    assert {hits["exact"][0], hits["bm25"][0]} <= set(hits["hybrid:exact"]) and len(set(hits["hybrid:exact"])) == 5
    assert hits["hybrid:ivfpq+rescore"] == hits["bm25"]  # weight 1: all BM25 (ties aside, none here)
    out = subprocess.run([cli, "tune-fusion", first_run["snapshot"], "--queries", str(folder / "queries.jsonl"),
                          "--qrels", str(folder / "qrels.tsv"), "--folds", "4", "--step", "0.25", "--json"],
                         capture_output=True, text=True, check=True)
    tuned = json.loads(out.stdout)
    assert tuned["version"] == first_run["version"] and len(tuned["folds"]) == 4 and tuned["queries"] == 20
    assert tuned["weight"] in tuned["grid"]
    assert tuned["default"] == pytest.approx(first_run["evaluation"]["modes"]["hybrid:exact"]["ndcg@10"], abs=1e-5)
    out = subprocess.run([cli, "search", first_run["snapshot"], "heart", "--mode", "hybrid:int8"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "no search mode 'int8'" in out.stderr
    # BM25's share in convex fusion: given for a mode without it, it changed nothing, silently
    for command in (["search", first_run["snapshot"], "heart"], ["evaluate", first_run["snapshot"]]):
        out = subprocess.run([cli, *command, "--mode", "exact", "--mode", "hybrid-rrf:exact", "--weight", "0.3"]
                             if command[0] == "evaluate" else [cli, *command, "--mode", "bm25", "--weight", "0.3"],
                             capture_output=True, text=True)
        assert out.returncode == 2 and "--weight 0.3 applies to convex fusion (hybrid:<mode>)" in out.stderr, command


def test_the_gate_promotes_on_a_hybrid_mode(first_run, config_path):
    """`promote --mode hybrid:exact`: the gate reads the hybrid mode measured at publish time."""
    cli = shutil.which("embedpipe", path=str(Path(sys.executable).parent))
    root = yaml.safe_load(config_path.read_text())["storage"]["root"]
    hybrid = first_run["evaluation"]["modes"]["hybrid:exact"]["ndcg@10"]
    refused = subprocess.run([cli, "promote", root, "scifact-small", first_run["version"], "--alias", "hybrid-gated",
                              "--mode", "hybrid:exact", "--min-value", str(round(hybrid + 0.01, 4))],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and f"ndcg@10 {hybrid:.4f} is below the minimum" in refused.stderr
    out = subprocess.run([cli, "promote", root, "scifact-small", first_run["version"], "--alias", "hybrid-gated",
                          "--mode", "hybrid:exact", "--min-value", str(round(hybrid - 0.01, 4))],
                         capture_output=True, text=True, check=True)
    assert f"-> {first_run['version']}" in out.stdout


def test_cli_search_refuses_an_empty_or_invalid_query_and_says_when_one_is_truncated(first_run):
    cli = shutil.which("embedpipe", path=str(Path(sys.executable).parent))
    for empty in ("", "   \t"):
        out = subprocess.run([cli, "search", first_run["snapshot"], empty, "--json"], capture_output=True, text=True)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.startswith(f"error: query {empty!r} is empty: expected some text to search for")
    # bytes that are not UTF-8 reach Python's argv as lone surrogates; the tokenizer had failed on them
    out = subprocess.run([cli.encode(), b"search", first_run["snapshot"].encode(), b"statins \xed\xa0\x80"],
                         capture_output=True)
    assert out.returncode == 2 and out.stdout == b"", out.stderr
    assert out.stderr.startswith(b"error: the query is not valid Unicode: a lone surrogate at character 8")
    long = "statins and the heart " * 4_545  # 100,000 characters, ~18,000 tokens
    out = subprocess.run([cli, "search", first_run["snapshot"], long, "-k", "2", "--json"], capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout)
    assert result["truncated_to_tokens"] == 256 and result["query_tokens"] > 10_000 and len(result["hits"]) == 2
    out = subprocess.run([cli, "search", first_run["snapshot"], long, "-k", "2"], capture_output=True, text=True,
                         check=True, env={**os.environ, "COLUMNS": "200"})
    assert "the model reads the first 256 (truncated to 256 tokens)" in out.stdout


def test_a_prefix_wider_than_the_model_fails_before_any_document_is_read(prefect_api, config_path, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.reindex import reindex
    from pipeline.errors import IndexBuildError

    root = tmp_path / "store"
    with temporary_settings({PREFECT_API_URL: prefect_api}), pytest.raises(
            IndexBuildError, match=r"index\.variants: 'exact@9999' asks for a 9999-dim prefix of all-MiniLM-L6-v2's "
                                   r"384-dim vectors"):
        reindex(str(config_path), {"index.variants": ["exact", "exact@9999"], "storage.root": str(root)})
    assert not (root / "runs").exists() and not (root / "snapshots").exists()  # no run files, no claimed version


def test_cli_rejects_a_bad_config_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("index_name: x\ncorpus: {source: nowhere.jsonl}\nrun: {shards: -1}\n")
    cli = shutil.which("embedpipe", path=str(Path(sys.executable).parent))
    out = subprocess.run([cli, "run", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "run.shards" in out.stderr and "greater than 0" in out.stderr
    bad.write_text(f"index_name: x\ncorpus: {{source: {SAMPLE}}}\nmodel: {{path: {tmp_path}/no-model}}\n")
    out = subprocess.run([cli, "run", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no-model: expected a transformers model folder" in out.stderr
    assert "prefect" not in (out.stdout + out.stderr).lower()  # nothing started
