"""Scheduled runs that a replaced schedule planned.

Prefect's scheduler plans a pass's runs, then inserts them; a pass that read a deployment's schedule before a deploy
replaced it inserts runs at the old time after the deploy deleted the planned ones (PrefectHQ/prefect#17703).
`embedpipe deploy` deletes those it finds (flows/deployments.py); one inserted after its last look still starts,
and the scheduled flows end it as Cancelled before doing anything (`cancel_if_planned_by_replaced_schedule`).
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import DeploymentSchedule, FlowRun
from prefect.context import FlowRunContext
from prefect.states import Cancelled, State


def planned_by_replaced_schedule(run: FlowRun, schedules: list[DeploymentSchedule]) -> bool:
    """The run was planned by its deployment's scheduler from a schedule not among `schedules` (the deployment's
    schedules now), for a time after they replaced it, and never ran before (its first start at most).

    Prefect gives a deployment's schedules new ids whenever a deploy updates it, even unchanged, so a run planned
    before then is not one of these: a Late run (due before the deploy, its worker down) or a failed run retried
    (Retry in the UI resumes its run id) must run."""
    by = run.created_by
    if not (run.auto_scheduled and by is not None and by.type == "SCHEDULE") or run.run_count > 1:
        return False
    if by.id in {s.id for s in schedules}:
        return False
    replaced_at = min((s.created for s in schedules if s.created), default=None)
    return replaced_at is None or run.expected_start_time is None or run.expected_start_time > replaced_at


def replaced_schedule(run: FlowRun) -> str | None:
    """Why `run` should do nothing (a schedule its deployment no longer has planned it), else None."""
    if run.deployment_id is None or not run.auto_scheduled:
        return None
    with get_client(sync_client=True) as client:
        schedules = client.read_deployment_schedules(run.deployment_id)
    if not planned_by_replaced_schedule(run, schedules):
        return None
    return (f"flow run {run.name} was planned for {run.expected_start_time:%Y-%m-%d %H:%M %Z} by a schedule its "
            f"deployment no longer has (a deploy replaced it after Prefect's scheduler had read it); nothing done")


def cancel_if_planned_by_replaced_schedule() -> State | None:
    """A Cancelled state for the flow to return when the flow run in progress is such a run, else None (also
    outside a deployment's run: a CLI call)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or not (why := replaced_schedule(context.flow_run)):
        return None
    get_run_logger().warning("%s", why)
    return Cancelled(message=why)
