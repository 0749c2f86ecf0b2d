"""How every CLI command reports: its console, and the decorator that turns an agentstack error into `error:` and
`fix:` lines (exit 1), an interrupt into exit 130, and a bug into two lines and a crash report file, never a
traceback."""

from __future__ import annotations

import functools
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.exceptions import TyperException

from agentstack.errors import AgentStackError

__all__ = ["console", "err_console", "reports_errors"]

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Turn an `AgentStackError` into a two-line report and exit code 1 instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AgentStackError as exc:
            err_console.print(f"[bold red]error:[/] {escape(exc.problem)}")
            if exc.fix:
                err_console.print(f"[bold]fix:[/] {escape(exc.fix)}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, TyperException, SystemExit):
            raise  # typer's own: usage errors (BadParameter...) and exits print themselves
        except Exception as exc:  # a bug of ours: the user gets two lines and a file, not a traceback
            report = _write_crash_report()
            err_console.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))}")
            err_console.print(f"[bold]fix:[/] this is a bug in agentstack; please report it with {report}")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _write_crash_report() -> str:
    """The current exception's traceback, in a file of its own; its path."""
    with tempfile.NamedTemporaryFile("w", prefix="agentstack-crash-", suffix=".txt", delete=False) as report:
        report.write(f"agentstack {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
    return report.name
