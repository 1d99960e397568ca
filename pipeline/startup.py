"""A process's start: importing torch, polars, Prefect and a model with Python's cyclic garbage collector paused.

Importing torch and the pipeline creates ~230k objects that live as long as the process. With the collector on,
the collections triggered on the way walk the growing heap again and again: in a new Ray worker on a 2-vCPU Xeon
they were 0.2-0.3 s of the ~1.2 s that importing torch and the pipeline took (docs/BENCHMARKS.md, "An actor's
start without the garbage collector"); in an `embedpipe run`, with Prefect's server modules too, ~1 s (Zen 4).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block without the cyclic garbage collector, then freeze every object alive (gc.freeze), so the
    collections that encoding triggers later skip the imported modules and the model too; the caller's collector
    state is restored. For a process's start only (a Ray actor's, the CLI's before its flow, a service's before
    its versions): what is alive then stays, and cycles that die inside the block are never collected (importing
    torch and the pipeline left ~8.5k such objects)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
