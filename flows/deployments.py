"""Deployments and schedules of embedpipe's flows, registered through the Prefect API.

`prefect.yaml` at the repo root is the one list of deployments: Prefect's own `prefect deploy --all` reads it,
and so does `register` here (behind `embedpipe deploy`), which adds what the project file cannot: it creates
the `process` work pool when it is missing and can override the config, schedule and pool per call. Nothing is
built or pushed: the deployments point at this checkout (pull step `set_working_directory`), so a worker of the
pool runs the flows from it. A new flow needs one entry in prefect.yaml and nothing here.
"""

from __future__ import annotations

import datetime
import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.flows import load_flow_from_entrypoint
from prefect.runner.storage import LocalStorage
from prefect.schedules import Cron, Interval, Schedule
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import ValidationError

from flows.prefect_api import check_prefect_api
from flows.scheduled_runs import planned_by_replaced_schedule
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILE = REPO / "prefect.yaml"
POOL_TYPE = "process"  # runs flows as subprocesses of the worker, from the checkout: no image needed
SCHEDULER_SETTLE_S = 0.5


@dataclass(frozen=True)
class DeploymentSpec:
    """One entry of prefect.yaml's `deployments:` list (the fields embedpipe uses)."""

    name: str
    entrypoint: str  # path/to/file.py:flow_function, relative to the repo root
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: list[dict[str, Any]] = field(default_factory=list)  # {cron|interval, timezone, active}
    work_pool: str = "embedpipe"
    work_queue: str | None = None
    description: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Registered:
    """What the server now holds for one deployment."""

    id: UUID
    name: str  # flow/deployment, as `prefect deployment run` takes it
    entrypoint: str
    parameters: dict[str, Any]
    work_pool: str
    schedules: list[str]  # "cron 0 2 * * * (UTC)" ...
    next_run: datetime.datetime | None  # the earliest next start over the active schedules


def load_specs(path: Path = PROJECT_FILE) -> list[DeploymentSpec]:
    if not path.is_file():  # a non-editable install: the package is not beside the checkout's prefect.yaml
        raise ConfigError(f"{path} not found: deployments run flows from a checkout of embedpipe (pip install -e "
                          "., as infra/bootstrap.sh and the images do); expected prefect.yaml beside flows/")
    doc = yaml.safe_load(path.read_text()) or {}
    specs = []
    for i, entry in enumerate(doc.get("deployments") or []):
        missing = [k for k in ("name", "entrypoint") if not entry.get(k)]
        if missing:
            raise ConfigError(f"{path.name}: deployments[{i}]: missing {', '.join(missing)}")
        pool = entry.get("work_pool") or {}
        specs.append(DeploymentSpec(
            name=entry["name"], entrypoint=entry["entrypoint"], parameters=dict(entry.get("parameters") or {}),
            schedules=[dict(s) for s in entry.get("schedules") or []], work_pool=pool.get("name", "embedpipe"),
            work_queue=pool.get("work_queue_name"), description=entry.get("description"),
            tags=list(entry.get("tags") or [])))
    return specs


def flow_parameters(entrypoint: str) -> dict[str, inspect.Parameter]:
    """The parameters of the flow an entrypoint names (imports its module)."""
    return dict(inspect.signature(load_flow_from_entrypoint(str(REPO / entrypoint)).fn).parameters)


def to_schedule(entry: dict[str, Any]) -> Schedule:
    """A prefect.yaml schedule entry -> a Prefect schedule; a bad cron string fails here, before the server."""
    timezone, active = entry.get("timezone"), entry.get("active", True)
    if "cron" in entry:
        try:
            CronSchedule(cron=entry["cron"], timezone=timezone)  # validates the expression and the time zone
        except ValidationError as exc:
            raise ConfigError(f"schedule cron {entry['cron']!r} timezone {timezone!r}: "
                              + "; ".join(e["msg"] for e in exc.errors())) from None
        return Cron(entry["cron"], timezone=timezone, active=active)
    if "interval" in entry:
        return Interval(entry["interval"], timezone=timezone, active=active)
    raise ConfigError(f"schedule {entry}: expected a `cron` or `interval` key")


def ensure_work_pool(name: str) -> bool:
    """Create the `process` work pool if missing; True when it was created. A pool of another type is refused:
    its workers would need an image holding this code, which these deployments do not build."""
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(
                    name=name, type=POOL_TYPE, base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="embedpipe flows, run as processes from a checkout of the repo"))
                return True
            except ObjectAlreadyExists:  # created by a concurrent call meanwhile
                pool = client.read_work_pool(name)
    if pool.type != POOL_TYPE:
        raise ConfigError(f"work pool {name!r} has type {pool.type!r}; embedpipe deploys to a {POOL_TYPE!r} pool")
    return False


def next_run(schedules: list[Schedule], after: datetime.datetime | None = None) -> datetime.datetime | None:
    """The earliest next start of the active schedules, computed as the server's scheduler does."""
    from prefect.server.schemas.schedules import CronSchedule as ServerCron
    from prefect.server.schemas.schedules import IntervalSchedule

    dates = []
    for s in schedules:
        if not s.active:
            continue
        sched = ServerCron(cron=s.cron, timezone=s.timezone or "UTC") if s.cron else \
            IntervalSchedule(interval=s.interval, timezone=s.timezone or "UTC")
        dates += run_coro_as_sync(sched.get_dates(n=1, start=after))
    return min(dates, default=None)


def register(specs: list[DeploymentSpec] | None = None, *, config_path: str | None = None, cron: str | None = None,
             timezone: str = "UTC", work_pool: str | None = None) -> list[Registered]:
    """Create or update the deployments (all of prefect.yaml by default) on the server PREFECT_API_URL names.

    `config_path` replaces the parameter of that name, `cron` replaces every schedule, `work_pool` the pool.
    """
    override = [to_schedule({"cron": cron, "timezone": timezone})] if cron else None  # a typo first, server or not
    if not check_prefect_api():
        raise ConfigError("PREFECT_API_URL is not set: deployments need a running Prefect server "
                          "(e.g. `prefect server start`, then PREFECT_API_URL=http://127.0.0.1:4200/api)")
    specs = load_specs() if specs is None else specs
    plans = []
    for spec in specs:  # everything is checked before the first write to the server
        schedules = override or [to_schedule(e) for e in spec.schedules]
        accepted = flow_parameters(spec.entrypoint)
        parameters = dict(spec.parameters)
        if config_path is not None and "config_path" in accepted:
            parameters["config_path"] = config_path
        unknown = sorted(set(parameters) - set(accepted))
        if unknown:
            raise ConfigError(f"deployment {spec.name!r}: {spec.entrypoint} takes no parameter {', '.join(unknown)}")
        plans.append((spec, parameters, schedules, work_pool or spec.work_pool))
    for pool in dict.fromkeys(p[3] for p in plans):
        ensure_work_pool(pool)
    registered: list[Registered] = []
    for spec, parameters, schedules, pool in plans:
        deployment = RunnerDeployment.from_storage(
            storage=LocalStorage(str(REPO)), entrypoint=spec.entrypoint, name=spec.name, schedules=schedules,
            parameters=parameters, description=spec.description, tags=spec.tags, work_pool_name=pool,
            work_queue_name=spec.work_queue)
        deployment_id = deployment.apply(work_pool_name=pool)
        if not schedules:  # an update sends schedules only when there are some: drop ones left from before
            _drop_schedules(deployment_id)
        registered.append(Registered(
            id=deployment_id, name=f"{deployment.flow_name}/{spec.name}", entrypoint=spec.entrypoint,
            parameters=parameters, work_pool=pool, schedules=[_describe(s) for s in schedules],
            next_run=next_run(schedules)))
    for _ in range(2):  # a second look, after any scheduler pass that read the old schedules has had time to end
        time.sleep(SCHEDULER_SETTLE_S)
        for r in registered:
            drop_runs_of_replaced_schedules(r.id)
    return registered


def drop_runs_of_replaced_schedules(deployment_id: UUID) -> int:
    """Delete the deployment's scheduled runs that a schedule it no longer has planned; returns how many.

    Prefect deletes a deployment's auto-scheduled runs as it updates it, but its scheduler may insert runs it
    planned from the schedules just replaced a moment later (PrefectHQ/prefect#17703): a nightly run at the old
    time, which would otherwise stay."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    # "Scheduled" by name: Late, AwaitingRetry and AwaitingConcurrencySlot runs are of that type too, and were due
    scheduled = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]),
                                                       name=FlowRunFilterStateName(any_=["Scheduled"])))
    with get_client(sync_client=True) as client:
        current = client.read_deployment_schedules(deployment_id)
        ours, runs, page = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])), [], 200
        while batch := client.read_flow_runs(deployment_filter=ours, flow_run_filter=scheduled, limit=page,
                                             offset=len(runs)):
            runs += batch
            if len(batch) < page:
                break
        stale = [r.id for r in runs if r.run_count == 0 and planned_by_replaced_schedule(r, current)]
        for run_id in stale:
            client.delete_flow_run(run_id)
    return len(stale)


def _drop_schedules(deployment_id: UUID) -> None:
    with get_client(sync_client=True) as client:
        for schedule in client.read_deployment_schedules(deployment_id):
            client.delete_deployment_schedule(deployment_id, schedule.id)


def _describe(s: Schedule) -> str:
    what = f"cron {s.cron}" if s.cron else f"every {s.interval}"
    return f"{what} ({s.timezone or 'UTC'})" + ("" if s.active else " inactive")
