"""What a unit of work says about the process that ran it: its node (recorded in each marker, so a run shows
where its pieces and shards ran) and its peak memory."""

from __future__ import annotations

import os
import resource
import socket

NODE_ENV = "EMBEDPIPE_NODE"  # set by the engine in its workers (operators/: the Ray node id)


def node() -> str:
    return os.environ.get(NODE_ENV) or socket.gethostname()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far. On Linux the high-water mark of its own address space (VmHWM):
    `ru_maxrss` survives exec, so a process started by a large parent would report the parent's size."""
    try:
        with open("/proc/self/status") as fh:
            return round(next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024, 1)
    except (OSError, StopIteration):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB
