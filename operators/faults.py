"""Fault injection for tests, driven by environment variables (read where the fault fires):

    EMBEDPIPE_FAULT_KILL_SHARD=<n>          an embedding actor dies mid-shard n (after encoding, before
                                            writing), once: EMBEDPIPE_FAULT_ONCE=<path> records that it fired
    EMBEDPIPE_FAULT_KILL_COMMITTED_SHARD=<n> an embedding actor dies right after committing shard n, before
                                            reporting it, once (with EMBEDPIPE_FAULT_ONCE)
    EMBEDPIPE_FAULT_FAIL_ACTOR_START=<path> the first embedding actor to start claims the file and raises at each of
                                            its starts, Ray's restarts too (a GPU out of memory on its node)
    EMBEDPIPE_FAULT_EXIT_AFTER_SHARDS=<n>   the driver exits after n shards are committed (between shards)
    EMBEDPIPE_FAULT_EXIT_AFTER_COMMIT=1     the driver exits once its version is committed, before its promote

Ray restarts the actor and retries the shard; a rerun of the run id resumes after a driver exit.
"""

from __future__ import annotations

import os
from pathlib import Path


def _fire_once() -> bool:
    marker = os.environ.get("EMBEDPIPE_FAULT_ONCE")
    if not marker:
        return True
    try:
        Path(marker).touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


def maybe_kill_actor(shard: int) -> None:
    if os.environ.get("EMBEDPIPE_FAULT_KILL_SHARD") == str(shard) and _fire_once():
        os._exit(17)  # as abrupt as a lost node: no cleanup, no exception


def maybe_fail_actor_start(actor_id: str) -> None:
    marker = os.environ.get("EMBEDPIPE_FAULT_FAIL_ACTOR_START")
    if not marker:
        return
    try:
        with open(marker, "x") as fh:
            fh.write(actor_id)
    except FileExistsError:
        pass
    if Path(marker).read_text() == actor_id:
        raise RuntimeError("injected: this embedding actor could not start")


def maybe_kill_actor_after_commit(shard: int) -> None:
    if os.environ.get("EMBEDPIPE_FAULT_KILL_COMMITTED_SHARD") == str(shard) and _fire_once():
        os._exit(17)


def maybe_exit_driver(committed: int) -> None:
    if os.environ.get("EMBEDPIPE_FAULT_EXIT_AFTER_SHARDS") == str(committed) and _fire_once():
        os._exit(18)


def maybe_exit_after_commit() -> None:
    if os.environ.get("EMBEDPIPE_FAULT_EXIT_AFTER_COMMIT") == "1" and _fire_once():
        os._exit(19)
