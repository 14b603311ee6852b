"""How the command line reports an error: one escaped line, or the full traceback under ``--debug``."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["DEBUG_ENV", "debugging", "fail"]

#: set to 1 by ``ddsd --debug``; also settable by hand
DEBUG_ENV = "DDSD_DEBUG"


def debugging() -> bool:
    """``--debug`` (or ``DDSD_DEBUG=1``): errors show their full traceback."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def fail(console: Console, message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` (escaped: brackets in paths and messages are shown as they are; under
    ``--debug`` the traceback of the exception being handled first) and return the ``typer.Exit`` to raise."""
    if debugging() and sys.exc_info()[0] is not None:
        console.print_exception()
    console.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)
