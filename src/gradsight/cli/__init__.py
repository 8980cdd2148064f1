"""The ``gradsight`` command line.

Each command lives in its own module of this package and defines a click command
named ``command``; :data:`COMMAND_MODULES` lists them in ``--help`` order. Every
command turns bad input into a one-line ``gradsight: error: ...`` on stderr and exit
status 2, never a traceback (:data:`USER_ERRORS`); any other exception is a bug and
prints its traceback with a request to report it (exit status 1).
"""

from __future__ import annotations

import importlib
import sqlite3
import sys
import traceback

import click

from gradsight._version import __version__
from gradsight._errors import GradsightError
from gradsight._text import printable

#: Command modules, in the order ``gradsight --help`` lists them; a module that is
#: not present (an optional part not installed) is skipped.
COMMAND_MODULES = (
    "demo",
    "compare",
    "info",
    "plot",
    "report",
    "serve",
    "graph",
    "probe",
    "shattering",
    "paths",
    "doctor",
    "export",
)


class UserError(click.ClickException):
    """Bad input from the user: one line on stderr, exit status 2."""

    exit_code = 2


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # keep COMMAND_MODULES order


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gradsight")
def cli() -> None:
    """gradsight: see how gradients flow through a PyTorch network.

    Record per-layer gradient statistics during training with
    gs.watch(model, run_dir=...) in Python, or with the commands below, then
    inspect, plot and diagnose the runs here.

    \b
    Examples:
      gradsight demo                      train, record and compare networks
      gradsight info runs/exp1            summarize a recorded run
      gradsight export runs/exp1 --format csv -o exp1.csv
    """


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"gradsight.cli.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"gradsight.cli.{_name}":
            raise
        continue
    cli.add_command(_mod.command, name=_name)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; user errors give one line and exit status 2, bugs a traceback
    and exit status 1."""
    try:
        code = cli.main(args=argv, prog_name="gradsight", standalone_mode=False)
        if isinstance(code, int):  # a command called ctx.exit(code)
            return code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("gradsight: aborted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.UsageError as exc:
        click.echo(f"gradsight: error: {one_line(exc.format_message())} (see 'gradsight --help')", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"gradsight: error: {one_line(exc.format_message())}", err=True)
        return exc.exit_code if exc.exit_code != 1 else 2
    except USER_ERRORS as exc:
        click.echo(f"gradsight: error: {one_line(str(exc))}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("gradsight: aborted", err=True)
        return 130
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch's, a RuntimeError: the input was too large
            click.echo(f"gradsight: error: out of memory ({one_line(str(exc))}); use a smaller input or batch",
                       err=True)
            return 2
        traceback.print_exc()
        click.echo(f"gradsight: internal error ({type(exc).__name__}): this is a bug in gradsight {__version__}; "
                   "please report it with the traceback above and the command that caused it", err=True)
        return 1
    return 0


#: Failures caused by what the user gave (files, stores, values): one line and exit status 2.
#: Anything else escaping a command is a bug in gradsight: a traceback and exit status 1.
USER_ERRORS = (GradsightError, OSError, ValueError, MemoryError, sqlite3.DatabaseError)


def one_line(text: str) -> str:
    """An error message as one line of printable text: line breaks joined, control characters
    shown (a module name may hold a terminal escape)."""
    return printable(" ".join(line.strip() for line in str(text).splitlines() if line.strip()))


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
