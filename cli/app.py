"""The `memloc` command: a thin Typer app over the library.

Errors a user can fix print one line on stderr and exit 1 (usage errors exit 2);
``--debug`` anywhere on the command line shows the traceback instead. Ctrl-C exits
130 with one line saying what stopped and whether a rerun resumes it.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence

import typer
from memloc.cli import edit, locate, models
from memloc.cli.demo import demo_command
from memloc.cli.ensemble import ensemble_command
from memloc.cli.finetune import finetune_command
from memloc.cli.flags import cli_message
from memloc.cli.help_format import hide_flag_types
from memloc.cli.import_run import import_command
from memloc.cli.interrupt import EXIT_CODE, interrupted_message, lost_interrupts_reraised
from memloc.cli.report import report_command
from memloc.cli.train import train_command
from memloc.core.errors import MemlocError, MemlocWarning

# Typer vendors click from 0.2x on; its ClickException is the base of its usage errors.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

hide_flag_types()
app = typer.Typer(
    name="memloc",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Locate where neural networks memorize, and edit what they memorized.",
)
app.command("train")(train_command)
app.command("import")(import_command)
app.command("ensemble")(ensemble_command)
app.command("demo")(demo_command)
app.command("finetune")(finetune_command)
app.command("report")(report_command)
app.add_typer(locate.app, name="locate")
app.add_typer(models.app, name="models")
app.add_typer(edit.app, name="edit")


def _show_version(wanted: bool) -> None:
    if wanted:
        from importlib import metadata

        try:
            version = metadata.version("memloc")
        except metadata.PackageNotFoundError:  # run from a source tree without installing
            version = "(not installed)"
        print(f"memloc {version}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (accepted anywhere on the line)."),
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print memloc's version and exit."
    ),
) -> None:
    """memloc: locate memorization in classifiers and language models, and edit it."""


def _fail(message: str, code: int) -> None:
    print(f"memloc: error: {message}", file=sys.stderr)
    sys.exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # What memloc recovered from is one line for the user; other warnings keep Python's form.
    if issubclass(category, MemlocWarning):
        print(f"memloc: warning: {message}", file=sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    warnings.showwarning = _show_warning
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MEMLOC_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        # Without standalone mode click *returns* the code of an Exit, and Typer turns
        # Ctrl-C inside a command into Exit(130): both would be lost if not passed on.
        with lost_interrupts_reraised():
            code = app(args=args, prog_name="memloc", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except _UsageError as exc:
        if debug:
            raise
        _fail(exc.format_message(), exc.exit_code)
    except MemlocError as exc:
        if debug:
            raise
        _fail(cli_message(exc), 1)
    except KeyboardInterrupt:  # before Typer's own handler takes over
        code = EXIT_CODE
    if code == EXIT_CODE:
        print(interrupted_message(typer.main.get_command(app), args), file=sys.stderr)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()

# Canaries for measuring exposure (cli/canaries.py).
from memloc.cli import canaries  # noqa: E402

app.add_typer(canaries.app, name="canaries")
