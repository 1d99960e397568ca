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
    """This process's peak resident memory so far."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB
