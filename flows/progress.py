"""Progress of long stages, shown as a rich progress bar when a flow runs from the CLI.

Flows call `report(stage, done, total)`; outside `progress_bar()` (a deployment's worker, tests) it does
nothing, and the Prefect UI shows the task states instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_listener: Callable[[str, int, int], None] | None = None


def report(stage: str, done: int, total: int) -> None:
    if _listener is not None:
        _listener(stage, done, total)


@contextmanager
def progress_bar(console: Console) -> Iterator[None]:
    """Show one bar per reported stage while the block runs."""
    global _listener
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bars:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            bars.update(tasks[stage], completed=done, total=total)

        _listener = update
        try:
            yield
        finally:
            _listener = None
