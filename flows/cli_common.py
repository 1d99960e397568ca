"""What every CLI module shares: consoles, the --json flag, and how errors are printed."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of tables")]
SetFlag = Annotated[list[str], typer.Option("--set", help="override a config value: KEY=VALUE (dotted key)")]


def fail(exc: Exception) -> NoReturn:
    # Unwrapped and without markup: messages quote values like ['id'] and are grepped by scripts.
    err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
    raise typer.Exit(code=2)


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(ValueError(f"--set {pair!r}: expected KEY=VALUE, e.g. run.shards=8"))
        out[key.strip()] = yaml.safe_load(value)
    return out


@contextlib.contextmanager
def flow_output(as_json: bool) -> Iterator[None]:
    """While a flow runs: progress bars on stderr, and with --json stdout kept for the result (Ray's log
    monitor prints worker messages on stdout). After it, the Ray connection it opened, if any, is closed
    (flushing worker logs)."""
    from flows.progress import progress_bar

    with contextlib.redirect_stdout(sys.stderr if as_json else sys.stdout), \
            (contextlib.nullcontext() if as_json else progress_bar(err_console)):
        try:
            yield
        finally:
            if "ray" in sys.modules:  # a run that embedded in-process never imported Ray (0.5 s saved)
                from operators.cluster import shutdown_ray

                shutdown_ray()
