"""How the command line talks to people: its consoles, and the one place where a
slidewatch error becomes a single line and an exit code.

Every command function is decorated with :func:`friendly_errors`, so it behaves the same
whether the main CLI registers it or a test mounts it on its own ``typer.Typer()``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.core.errors import SlidewatchError
from pipeline.core.secrets import redact

__all__ = ["err_console", "friendly_errors", "out_console", "show_error"]

F = TypeVar("F", bound=Callable[..., None])


def out_console() -> Console:
    """Results (tables, paths): standard output."""
    return Console()


def err_console() -> Console:
    """Progress, notes and errors: standard error."""
    return Console(stderr=True)


def show_error(exc: SlidewatchError) -> int:
    """Print ``error: <cause> Fix: <fix>`` on one line (soft-wrapped, credentials redacted,
    never read as markup); return the exit code."""
    err_console().print(f"[bold red]error:[/] {escape(redact(str(exc)))}", soft_wrap=True)
    return int(getattr(exc, "exit_code", 2))


def friendly_errors(fn: F) -> F:
    """Turn slidewatch errors into one line and their exit code (2), and Ctrl-C into a
    resume hint and 130, for a typer command."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> None:
        try:
            fn(*args, **kwargs)
        except SlidewatchError as exc:
            raise typer.Exit(show_error(exc)) from None
        except KeyboardInterrupt:
            err_console().print("[yellow]interrupted[/]: rerun the same command to resume.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
