"""Tie the processes a CLI run starts (its Prefect server, a local Ray's raylet, GCS and agents) to the CLI's
lifetime, however it ends: a crash or `kill -9` included.

Ray's processes are started by Ray, not by embedpipe, so no parent-death signal can be set on them; the run's
Prefect server is covered the same way.
A small watchdog process, in its own session (a Ctrl-C in the terminal does not reach it), records every
descendant of the CLI process twice a second while the CLI lives; once the CLI is gone it stops every recorded
process that is still running (and their children), SIGTERM first, SIGKILL after a grace period, then exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 3.0


def start(pid: int | None = None) -> subprocess.Popen:
    """Watch `pid` (default: this process) from a new, detached process."""
    return subprocess.Popen([sys.executable, "-m", "flows.cli.watchdog", str(pid or os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _alive(process: psutil.Process) -> bool:
    """Running and still the same process (is_running compares its start time, so a reused pid is not it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def stop(processes: list[psutil.Process]) -> None:
    """SIGTERM to each live process and its children, SIGKILL to what is left after GRACE_S."""
    targets = {p.pid: p for p in processes if _alive(p)}
    for p in list(targets.values()):
        targets |= {c.pid: c for c in _descendants(p)}
    for p in targets.values():
        try:
            p.terminate()
        except psutil.Error:
            continue
    _, left = psutil.wait_procs(list(targets.values()), timeout=GRACE_S)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            continue


def watch(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    seen: dict[int, psutil.Process] = {}
    while _alive(parent):
        seen = {p.pid: p for p in [*seen.values(), *_descendants(parent)] if _alive(p)}
        time.sleep(POLL_S)
    seen.pop(os.getpid(), None)
    stop(list(seen.values()))


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]))
