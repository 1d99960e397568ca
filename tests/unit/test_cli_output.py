"""What the CLI prints fits a terminal of 80 columns, and a failure is one line, not echoes of it."""

import asyncio
import gc
import logging
import logging.handlers

import pytest
from rich.console import Console

from flows.cli.common import _quiet_prefect_failures, compact_table
from pipeline.reports.tables import timings_table


def test_stage_timings_print_as_one_table_row_within_80_columns():
    timings = {"compare": 0.31, "prepare": 3.21, "embed": 35.2, "index": 1.94, "evaluate": 1.2, "publish": 0.4,
               "promote": 0.1}
    console = Console(width=80, record=True)
    console.print(compact_table(timings_table(timings)))
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 80
    header = next(line for line in lines if "compare" in line)
    values = next(line for line in lines if "35.2" in line)
    assert header.split() == list(timings) and values.split() == ["0.3", "3.2", "35.2", "1.9", "1.2", "0.4", "0.1"]


def test_requests_cut_off_by_lost_storage_are_not_echoed_with_tracebacks():
    """The object store vanishing mid-run fails the storage client's in-flight requests in its event loop; asyncio
    logs each ("Task exception was never retrieved", with a traceback). The CLI prints the awaited error once and
    drops those echoes; any other unretrieved error still shows."""

    async def fails(error: Exception) -> None:
        raise error

    def abandon(error: Exception) -> None:
        loop = asyncio.new_event_loop()
        task = loop.create_task(fails(error))
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        del task
        gc.collect()  # asyncio logs an unretrieved exception when the task is collected

    _quiet_prefect_failures()  # (re)configures Prefect's logging, so the records are caught on asyncio's logger
    caught = logging.handlers.BufferingHandler(capacity=100)
    logging.getLogger("asyncio").addHandler(caught)
    try:
        abandon(ConnectionResetError("Cannot write to closing transport"))
        abandon(TimeoutError("read timed out"))
        abandon(ValueError("a bug, not a lost connection"))
    finally:
        logging.getLogger("asyncio").removeHandler(caught)
    assert [type(r.exc_info[1]) for r in caught.buffer if r.exc_info] == [ValueError]


def test_storage_options_and_credentials_are_refused_on_the_command_line():
    """--set values become a flow run's parameters, which Prefect stores: a secret there would be kept and shown."""
    from typer.testing import CliRunner

    from flows.cli import app

    for pair in ("storage.options.key=SeCrEt123", "storage.options={secret: SeCrEt123}",
                 "storage.root=s3://AKIA:SeCrEt123@bucket/x", "corpus.source=s3://AKIA:SeCrEt123@bucket/c.jsonl"):
        out = CliRunner().invoke(app, ["run", "configs/demo.yaml", "--set", pair])
        assert out.exit_code == 2 and "cannot be given with --set" in out.stderr, pair
        assert "SeCrEt123" not in out.stdout + out.stderr
    typo = ["--set", "run.shards=2", "--set", "storage.key:SeCrEt123"]  # ':' for '='
    out = CliRunner().invoke(app, ["run", "configs/demo.yaml", *typo])
    assert out.exit_code == 2 and "--set argument 2 has no '='" in out.stderr and "SeCrEt123" not in out.stderr
    for pair, at in (("evaluation.queries=@SeCrEt123", 1), ("run.shards=[SeCrEt123", 11)):  # not YAML
        out = CliRunner().invoke(app, ["run", "configs/demo.yaml", "--set", pair])
        assert out.exit_code == 2 and "SeCrEt123" not in out.stdout + out.stderr, out.stderr
        assert f"the value is not valid YAML at character {at}" in out.stderr


def test_a_run_id_that_is_not_one_folder_name_is_refused_naming_the_flag():
    """A run id names runs/<run_id>/: 'a/b' would nest one run's folder inside another's, '..' would leave runs/."""
    from typer.testing import CliRunner

    from flows.cli import app
    from pipeline.errors import SnapshotError
    from pipeline.storage.layout import run_key

    for run_id in ("..", "a/b", ".hidden", "-x"):
        out = CliRunner().invoke(app, ["run", "configs/demo.yaml", f"--run-id={run_id}"])
        assert out.exit_code == 2 and "Invalid value for '--run-id'" in out.stderr, run_id
    with pytest.raises(SnapshotError, match=r"run id 'a/b': expected letters"):  # a flow started without the CLI
        run_key("a/b", "plan.json")
    assert run_key("reindex-1f2e.3_b", "plan.json") == "runs/reindex-1f2e.3_b/plan.json"


def test_a_build_without_a_golden_set_says_its_quality_was_not_measured(monkeypatch):
    """Without a golden set (and so without an alias to promote) a build publishes unmeasured: the terminal and
    the run's artifact say so and how to measure it, rather than leaving the quality table out silently."""
    from flows.cli import jobs
    from pipeline.jobs.build import BuildSummary
    from pipeline.reports.markdown import build_markdown

    summary = BuildSummary("reindex", "docs", "v1", "/store/snapshots/docs/v1", "run-1", "full build",
                           {"read": 3, "accepted": 3}, {}, {"variants": {}}, {"embed": 0.1}, None)
    console = Console(width=80, record=True)
    monkeypatch.setattr(jobs, "console", console)
    jobs._print_summary(summary, example=True, config="unused.yaml", overrides={})
    printed = " ".join(console.export_text().split())
    assert "quality: not measured (no golden set: set evaluation.queries and evaluation.qrels" in printed
    markdown = build_markdown(summary)
    assert "Quality: not measured (no golden set: set evaluation.queries" in markdown
    # each table a block of its own: after a single newline, CommonMark ran "**counts**" into the line above
    assert "\n\n**counts**\n\n| " in markdown and "\n\n**seconds per stage**" in markdown


def test_a_build_whose_golden_set_reaches_beyond_its_corpus_says_so(monkeypatch):
    from flows.cli import jobs
    from pipeline.jobs.build import BuildSummary
    from pipeline.reports.markdown import build_markdown

    metrics = {"ndcg@10": 0.22, "map@10": 0.2, "recall@10": 0.24, "recall@100": 0.26, "mrr@10": 0.22, "queries": 300,
               "ms_per_query": 1.0}
    evaluation = {"coverage": {"queries": 300, "relevant": 283, "found": 72, "queries_without": 219},
                  "modes": {"exact": metrics}}
    summary = BuildSummary("reindex", "docs", "v1", "/store/snapshots/docs/v1", "run-1", "full build",
                           {"read": 500, "accepted": 500}, evaluation, {"variants": {}}, {"embed": 0.1}, None)
    console = Console(width=80, record=True)
    monkeypatch.setattr(jobs, "console", console)
    jobs._print_summary(summary, example=False, config="unused.yaml", overrides={})
    printed = " ".join(console.export_text().split())
    expected = "211 of the golden set's 283 relevant documents are not in this index, and 219 of its 300 queries"
    assert f"golden set: {expected}" in printed and f"Golden set: {expected}" in build_markdown(summary)


def test_a_build_on_ray_is_not_loaded_for_the_example_search(monkeypatch):
    """The example search after `embedpipe run` loads the version in this process: for a build whose steps ran on
    Ray (a corpus over run.local_prepare_max_bytes) that would load indexes growing with the corpus into the driver,
    so it says how to search instead (the snapshot URL here does not exist: opening it would fail)."""
    from flows.cli import jobs
    from pipeline.jobs.build import BuildSummary

    metrics = {"ndcg@10": 0.6, "map@10": 0.5, "recall@10": 0.7, "recall@100": 0.9, "mrr@10": 0.6, "queries": 20,
               "ms_per_query": 1.0}
    summary = BuildSummary("reindex", "docs", "v1", "/nowhere/snapshots/docs/v1", "run-1", "full build",
                           {"read": 9, "accepted": 9, "executor": "ray tasks"},
                           {"queries": "/nowhere/q.jsonl", "modes": {"exact": metrics}}, {"variants": {}},
                           {"embed": 0.1}, None)
    console = Console(width=200, record=True)
    monkeypatch.setattr(jobs, "console", console)
    jobs._print_summary(summary, example=True, config="unused.yaml", overrides={})
    printed = " ".join(console.export_text().split())
    assert "example search: skipped for a version built on Ray (embedpipe search /nowhere/snapshots/docs/v1 QUERY" \
        in printed


def test_a_build_says_whether_it_kept_live_s_ivfpq_training_and_why(monkeypatch):
    from flows.cli import jobs
    from pipeline.index.training import FULL_BUILD
    from pipeline.jobs.build import BuildSummary
    from pipeline.reports.markdown import build_markdown

    redone = ("trained on this build's vectors: they fit version v1's training 1.62x worse than the vectors it was "
              "trained on (PQ reconstruction error 0.3 against 0.185; index.ivf.max_reuse_error_ratio 1.15)")
    variants = {"ivfpq": {"training": redone}, "ivfpq@128": {"training": FULL_BUILD.why}, "exact": {}}
    summary = BuildSummary("reindex", "docs", "v2", "/store/snapshots/docs/v2", "run-2", "incremental",
                           {"read": 3, "accepted": 3}, {}, {"variants": variants}, {"embed": 0.1}, None)
    console = Console(width=80, record=True)
    monkeypatch.setattr(jobs, "console", console)
    jobs._print_summary(summary, example=False, config="unused.yaml", overrides={})
    printed = " ".join(console.export_text().split())
    assert f"training of ivfpq: {redone}" in printed and f"Training of ivfpq: {redone}" in build_markdown(summary)
    assert "ivfpq@128" not in printed  # a plain first training is not news


def test_an_unexpected_error_exits_2_in_one_line_not_1_with_a_traceback(tmp_path, monkeypatch):
    """Exit 1 is what a command means by it (`monitor`: quality fell); a crash must not look like that, nor print
    a traceback whose messages may quote a URL with credentials (--debug prints it)."""
    from typer.testing import CliRunner

    from flows.cli import app

    def broken(*_args, **_kwargs):
        raise KeyError("s3://AKIAEXAMPLE:SeCrEt123@bucket/aliases")

    from pipeline.snapshots.publishing import publish
    from pipeline.storage.backend import Storage

    publish(Storage(str(tmp_path)), "idx", "v1", {"ids.parquet": b"ids"}, {})
    monkeypatch.setattr("pipeline.snapshots.aliases.list_aliases", broken)
    out = CliRunner().invoke(app, ["versions", str(tmp_path), "idx"])
    assert out.exit_code == 2 and "Traceback" not in out.output and "SeCrEt123" not in out.output
    assert "error: unexpected KeyError: 's3://***@bucket/aliases' (--debug prints its traceback)" in out.output


def test_a_backfill_summary_counts_the_documents_it_redid(monkeypatch):
    """A backfill of two documents whose content had not changed printed none of them (neither new nor changed):
    `docs_redone` is what it selected."""
    from flows.cli import jobs
    from pipeline.jobs.build import BuildSummary

    counts = {"read": 500, "accepted": 500, "docs_new": 0, "docs_changed": 0, "docs_deleted": 0, "docs_kept": 498,
              "docs_redone": 2, "chunks": 956, "embedded": 0, "reused_from_cache": 4}
    printed = {}
    for job in ("backfill", "reindex"):
        console = Console(width=200, record=True)
        monkeypatch.setattr(jobs, "console", console)
        summary = BuildSummary(job, "docs", "v2", "/store/snapshots/docs/v2", "run-1", job, counts, {},
                               {"variants": {}}, {"embed": 0.1}, None)
        jobs._print_summary(summary, example=False, config="unused.yaml", overrides={})
        printed[job] = console.export_text()
    assert "docs_redone" not in printed["reindex"]  # new and changed say it there
    assert "docs_redone 2" in printed["backfill"]
