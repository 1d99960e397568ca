"""What every CLI module shares: consoles, flags, one way to print an error, tables, and the guard around a
flow run (progress bars, one error line, a watchdog for the processes it starts)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Annotated, Any, NoReturn, TypeVar

import click
import typer
import yaml
from rich import box
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from pipeline.errors import EmbedpipeError
from pipeline.reports.tables import Table

console = Console()
err_console = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of tables")]
SetFlag = Annotated[list[str], typer.Option("--set", help="override a config value: KEY=VALUE (dotted key)")]
Config = Annotated[str, typer.Argument(help="YAML config (see configs/demo.yaml)")]

# Set by the process that runs a command, before any library reads them (not on import: a library user's
# process keeps its own settings).
PROCESS_ENV = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0",
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
DEBUG_ENV = "EMBEDPIPE_DEBUG"  # set by --debug: tracebacks and Prefect's failure records on the console

F = TypeVar("F", bound=Callable[..., Any])


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV) == "1"


def fail(exc: Exception) -> NoReturn:
    """Print an error once, as one `error:` line (with its traceback under --debug), and exit 2."""
    if debugging():
        traceback.print_exception(exc, file=sys.stderr)
    # Unwrapped and without markup: messages quote values like ['id'] and are grepped by scripts.
    err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
    print_notes(exc)
    raise typer.Exit(code=2)


def print_notes(exc: Exception) -> None:
    """The notes added on the way up (a run's id, to resume it), one per line under the error."""
    for note in getattr(exc, "__notes__", ()):
        err_console.print(Text(f"  {note}"), soft_wrap=True)


def reports_errors(command: F) -> F:
    """A command's expected failures (embedpipe's errors, bad values) end in one `error:` line and exit 2; so does
    an unexpected one (a bug, a library's own error), named as such: exit 1 is what a command itself means by it
    (`monitor`: quality fell), never a crash."""
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (EmbedpipeError, ValueError) as exc:
            fail(exc)
        except (typer.Exit, typer.Abort, click.ClickException):
            raise
        except Exception as exc:  # its message may quote a URL: redacted; the traceback under --debug only
            from pipeline.redaction import redact

            if debugging():
                traceback.print_exception(exc, file=sys.stderr)
            hint = "" if debugging() else " (--debug prints its traceback)"
            err_console.print(Text.assemble(("error: ", "bold red"), f"unexpected {type(exc).__name__}: "
                                            f"{redact(str(exc))}{hint}"), soft_wrap=True)
            print_notes(exc)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs as config overrides. They become the flow run's parameters, which Prefect stores and
    shows, so storage options and URLs with credentials in them are refused here (the value is never echoed)."""
    from pipeline.redaction import redact

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            # not echoed: a mistyped separator would print the value, and it may be a secret
            fail(ValueError(f"--set argument {len(out) + 1} has no '=': expected KEY=VALUE, e.g. run.shards=8"))
        key = key.strip()
        if key in ("storage", "storage.options") or key.startswith("storage.options.") or redact(value) != value:
            fail(ValueError(f"--set {key}: storage options and credentials cannot be given with --set (Prefect keeps "
                            "a flow run's parameters); put them in the config file or the environment "
                            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)"))
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:  # the value is not echoed (see above); YAML's own message quotes it
            mark = getattr(exc, "problem_mark", None)
            at = f" at character {mark.column + 1}" if mark else ""
            fail(ValueError(f"--set {key}: the value is not valid YAML{at}; expected a YAML scalar, list or mapping "
                            "(quote a string that starts with @, [, {, * or &)"))
    return out


def rich_table(table: Table, **options: Any) -> RichTable:
    """A reports.tables.Table for the terminal (the same figures the Prefect artifacts show)."""
    out = RichTable(title=table.title, **options)
    for i, column in enumerate(table.columns):
        out.add_column(column, justify="right" if table.numeric and i else "left", no_wrap=i == 0)
    for row in table.rows:
        out.add_row(*row)
    return out


def compact_table(table: Table) -> RichTable:
    """One row of figures under their headers, no frame: fits 80 columns."""
    return rich_table(table, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)


class _FailuresPrintedByTheCli(logging.Filter):
    """Prefect logs a failed task or flow run on the console (the exception with its traceback, then "Finished in
    state Failed(...)"), once per task and once per flow: the same error several times beside the CLI's own
    line. On the console the CLI's line is enough; the Prefect server's run logs keep every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
            return True
        return record.levelno < logging.ERROR and not record.getMessage().startswith("Finished in state Failed")


class _LostConnectionEchoes(logging.Filter):
    """When the object store goes away mid-run, the storage client's in-flight requests fail in its own event
    loop and asyncio logs each one with a traceback ("Task exception was never retrieved"), while the request
    that was awaited raises the error the CLI prints. The echoes add nothing to that line; --debug keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, OSError)  # connection reset, refused, timed out


def _quiet_prefect_failures() -> None:
    import prefect.main  # noqa: F401  (sets up Prefect's logging, console handler included)
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_FailuresPrintedByTheCli())
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _LostConnectionEchoes) for f in asyncio_log.filters):
        asyncio_log.addFilter(_LostConnectionEchoes())


@contextlib.contextmanager
def flow_output(as_json: bool) -> Iterator[None]:
    """While a flow runs: progress bars on stderr, and with --json stdout kept for the result (Ray's log
    monitor prints worker messages on stdout); a failure is printed once, by the CLI (see --debug). A watchdog
    stops what the run started (its Prefect server, a local Ray) if this process dies. After the
    flow, the Ray connection it opened, if any, is closed (flushing worker logs)."""
    from flows.cli import watchdog
    from flows.progress import progress_bar

    watchdog.start()
    if not debugging():
        _quiet_prefect_failures()
    with contextlib.redirect_stdout(sys.stderr if as_json else sys.stdout), \
            (contextlib.nullcontext() if as_json else progress_bar(err_console)):
        try:
            yield
        finally:
            if "ray" in sys.modules:  # a run that embedded in-process never imported Ray (0.5 s saved)
                from operators.cluster import shutdown_ray

                shutdown_ray()
