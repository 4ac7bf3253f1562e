"""`kaon`: one Typer app; each command group lives in its own module and is added here."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from kaon.errors import KaonError

app = typer.Typer(
    name="kaon",
    help="Train, optimize, explain, serve and scale deep learning models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Wider than any value kaon prints: a table written to a file or a pipe keeps its values whole.
UNLIMITED_WIDTH = 100_000
# What fills the line (a rule, a panel) is this wide in a file or a pipe.
FILE_WIDTH = 80


def make_console(*, stderr: bool = False) -> Console:
    """A Rich Console that fits a terminal's width, and cuts nothing when the output is a file or a pipe.

    Rich falls back to 80 columns off a terminal (or takes the width of the terminal stdin is on), so
    `kaon models list > models.txt` cut long names with an ellipsis. An explicit COLUMNS is still obeyed.
    """
    stream = sys.stderr if stderr else sys.stdout
    to_terminal = callable(getattr(stream, "isatty", None)) and stream.isatty()
    if to_terminal or os.environ.get("COLUMNS", "").isdigit():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=UNLIMITED_WIDTH)


def fill_width(console: Console) -> int:
    """The width for what fills the line, a Rule or a Panel: the terminal's, or FILE_WIDTH off a terminal
    (where the console is UNLIMITED_WIDTH wide). Print those with it: console.print(Rule(...), width=...)."""
    return FILE_WIDTH if console.width >= UNLIMITED_WIDTH else console.width


err_console = make_console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def fail(exc: BaseException) -> None:
    """One error style for every command: a red title and the message, exit code 1, no traceback."""
    kind = type(exc).__name__
    message = getattr(exc, "message", None) or str(exc)
    err_console.print(f"[bold red]error[/] [red]({kind})[/]: {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def reporting_errors() -> Iterator[None]:
    """A KaonError becomes kaon's one red error line on stderr and exit code 1, never a traceback;
    Ctrl-C exits 130."""
    try:
        yield
    except KaonError as exc:
        fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def handles_errors(func: F) -> F:
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with reporting_errors():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _register_commands() -> None:
    from kaon.cli import serve_cmd  # noqa: F401 - registers `kaon serve`

    for module, attr, name in (("kaon.cli.registry_cmd", "runs_app", "runs"),
                               ("kaon.cli.registry_cmd", "models_app", "models"),
                               ("kaon.cli.token_cmd", "token_app", "token")):
        try:
            sub = getattr(__import__(module, fromlist=[attr]), attr)
        except (ImportError, AttributeError):
            continue
        app.add_typer(sub, name=name)
    from kaon.cli import (  # noqa: F401 - each module registers its commands
        audit_cmd,
        build_cmd,
        cluster_cmd,
        explain_cmd,
        monitor_cmd,
        optimize_cmd,
        quickstart_cmd,
        token_cmd,
    )


def main() -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    _register_commands()
    try:
        app()
    except KaonError as exc:  # raised outside a command body (e.g. while parsing)
        fail(exc)
    sys.exit(0)
