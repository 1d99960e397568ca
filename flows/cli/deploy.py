"""`embedpipe deploy`: register prefect.yaml's deployments and their schedules (flows/deployments.py)."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import asdict
from typing import Annotated

import typer

from flows.cli.common import JsonFlag, console, reports_errors


@reports_errors
def deploy(
    config: Annotated[str | None, typer.Option(help="config_path parameter of the deployments (default: "
                                                    "prefect.yaml's); relative paths resolve at the repo root")] = None,
    cron: Annotated[str | None, typer.Option(help='replace the schedules of the deployments --only names with this '
                                                  'cron, e.g. "0 2 * * *"')] = None,
    timezone: Annotated[str, typer.Option(help="time zone of --cron")] = "UTC",
    work_pool: Annotated[str | None, typer.Option(help="process work pool (created if missing; default: "
                                                       "prefect.yaml's)")] = None,
    only: Annotated[list[str], typer.Option("--only", help="deploy only this deployment name (repeatable)")] = [],  # noqa: B006
    as_json: JsonFlag = False,
) -> None:
    """Register prefect.yaml's deployments and their schedules on the server PREFECT_API_URL names."""
    from flows.deployments import REPO, load_specs, register
    from pipeline.config_loader import load_config

    every = load_specs()
    specs = [s for s in every if not only or s.name in only]
    if unknown := sorted(set(only) - {s.name for s in specs}):
        raise ValueError(f"--only {', '.join(unknown)}: not in prefect.yaml; its deployments are "
                         f"{', '.join(s.name for s in every)}")
    if cron and len(specs) > 1:  # the ad-hoc backfill and the model upgrade would run on it too
        names = ", ".join(s.name for s in specs)
        raise ValueError(f"--cron replaces the schedules of every deployment it deploys ({names}): expected exactly "
                         "one --only NAME, the deployment to run on it, e.g. --only nightly")
    if config is not None:
        load_config(str(REPO / config))  # a bad config fails now, not at 2 am
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the result
        registered = register(specs, config_path=config, cron=cron, timezone=timezone, work_pool=work_pool)
    if as_json:
        print(json.dumps([asdict(r) | {"id": str(r.id), "next_run": r.next_run and r.next_run.isoformat()}
                          for r in registered], indent=2))
        return
    for r in registered:
        console.print(f"[bold]{r.name}[/] ({r.entrypoint}, work pool {r.work_pool})", soft_wrap=True)
        console.print(f"  parameters: {json.dumps(r.parameters)}", soft_wrap=True, markup=False)
        console.print(f"  schedule:   {'; '.join(r.schedules) or 'none'}", markup=False)
        console.print(f"  next run:   {r.next_run.isoformat() if r.next_run else '-'}")
    for pool in dict.fromkeys(r.work_pool for r in registered):
        console.print(f"runs start when a worker serves the pool: prefect worker start --pool {pool}", soft_wrap=True)
