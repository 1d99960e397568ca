"""`embedpipe`: the command line. Jobs (flows/cli/jobs.py) run a Prefect flow in this process; snapshot commands
read published versions (flows/cli/snapshots.py), version commands manage them and their aliases
(flows/cli/versions.py); deploy registers the scheduled deployments.

Heavy imports (torch, ray, prefect) happen inside commands so `--help` stays instant.
"""

from __future__ import annotations

import atexit
import gc
import os
from typing import Annotated

import typer

from flows.cli import deploy, jobs, serve, snapshots, versions
from flows.cli.common import DEBUG_ENV, PROCESS_ENV

app = typer.Typer(help="Batch embedding and indexing pipeline: corpus -> chunks -> vectors -> FAISS snapshots.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="on an error, print its traceback, and Prefect's "
                                                             "records of failed runs")] = False) -> None:
    for key, value in PROCESS_ENV.items():
        os.environ.setdefault(key, value)
    # Registered before the command imports anything heavy, so it runs after their exit handlers: the interpreter's
    # teardown then skips the heap in its collections (~1.9 s of a run's exit with torch and Prefect loaded, Zen 4)
    atexit.register(gc.freeze)
    if debug:
        os.environ[DEBUG_ENV] = "1"


for _command in (jobs.run, jobs.backfill, snapshots.search, snapshots.evaluate, snapshots.tune_fusion, deploy.deploy,
                 versions.versions, snapshots.show, snapshots.verify, versions.promote, versions.rollback,
                 versions.gc, versions.gc_cache, versions.gc_runs, jobs.migrate, jobs.monitor, serve.serve):
    app.command()(_command)
