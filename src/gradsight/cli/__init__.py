"""The ``gradsight`` command line.

Each command lives in its own module of this package and defines a click command
named ``command``; :data:`COMMAND_MODULES` lists them in ``--help`` order. Every
command turns bad input into a one-line ``gradsight: error: ...`` on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from gradsight._version import __version__
from gradsight._errors import GradsightError

#: Command modules, in the order ``gradsight --help`` lists them; a module that is
#: not present (an optional part not installed) is skipped.
COMMAND_MODULES = (
    "demo",
    "compare",
    "info",
    "plot",
    "report",
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
    """Entry point: run the CLI, mapping user errors to exit status 2."""
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
        click.echo(f"gradsight: error: {exc.format_message()} (see 'gradsight --help')", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"gradsight: error: {exc.format_message()}", err=True)
        return exc.exit_code if exc.exit_code != 1 else 2
    except (GradsightError, OSError, ValueError) as exc:
        click.echo(f"gradsight: error: {exc}", err=True)
        return 2
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
