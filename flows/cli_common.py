"""What every CLI module shares: consoles, the --json flag, and how errors are printed."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of tables")]


def fail(exc: Exception) -> NoReturn:
    # Unwrapped and without markup: messages quote values like ['id'] and are grepped by scripts.
    err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
    raise typer.Exit(code=2)
