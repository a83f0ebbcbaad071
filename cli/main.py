"""Entry point of the ``dualwrite`` console script.

Exit codes (the contract users script against): 0 success / clean / ready, 1 drift found or
not ready, 2 bad input or error, 3 incomplete.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import traceback
from typing import Any

import click

from cli._output import err
from dualwrite import __version__
from dualwrite.errors import DualwriteError
from dualwrite.redaction import redact_text

EXIT_OK = 0
EXIT_ERROR = 2

COMMANDS = {
    "demo": ("cli._demo", "demo_command"),
    "dev": ("cli._dev", "dev_group"),
    "config": ("cli._config", "config_group"),
    "capture": ("cli._capture", "capture_group"),
    "relay": ("cli._capture", "relay_command"),
    "tail": ("cli._capture", "tail_command"),
    "worker": ("cli._worker", "worker_command"),
    "dlq": ("cli._worker", "dlq_group"),
    "status": ("cli._worker", "status_command"),
    "backfill": ("cli._backfill", "backfill_command"),
    "reconcile": ("cli._reconcile", "reconcile_command"),
    "repair": ("cli._reconcile", "repair_command"),
    "readiness": ("cli._readiness", "readiness_command"),
    "state": ("cli._readiness", "state_group"),
    "cutover": ("cli._readiness", "cutover_command"),
    "rollback": ("cli._readiness", "rollback_command"),
    "reverse": ("cli._reverse", "reverse_group"),
}
"""Subcommand -> (module, attribute). A command's module (and what it imports: Kafka for the
worker, pandas for the backfill) is imported only when that command runs or its help is
shown, so ``dualwrite reconcile`` does not start by importing the whole toolkit."""


class _Group(click.Group):
    """Maps expected library errors to one clear message and exit code 2, and anything
    unexpected (a bug, a database error no library call anticipated) to exit 2 with its
    traceback: exit 1 means drift or not ready, so a crash must never look like it.

    Subcommands are loaded from :data:`COMMANDS` on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command) and command.name == cmd_name
            self.add_command(command)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except DualwriteError as exc:
            err.print("[bold red]error:[/]", end=" ")
            err.print(str(exc), markup=False)
            sys.exit(EXIT_ERROR)
        except Exception as exc:
            unreachable = _unreachable_database(exc)
            if unreachable is not None:
                err.print("[bold red]error:[/]", end=" ")
                err.print(unreachable, markup=False)
                sys.exit(EXIT_ERROR)
            err.print(redact_text(traceback.format_exc()), markup=False)
            err.print("[bold red]unexpected error:[/]", end=" ")
            err.print(redact_text(f"{type(exc).__name__}: {exc}".strip()), markup=False)
            sys.exit(EXIT_ERROR)


def _unreachable_database(exc: BaseException) -> str | None:
    """The message for a database that could not be connected to, or None for anything else.

    psycopg raises its bare ``OperationalError`` (no SQLSTATE: the server never answered)
    when a connection cannot be made or is lost; SQLAlchemy wraps it. Errors the server did
    answer (a deadlock, a bad query) have a SQLSTATE and stay unexpected, with traceback.
    psycopg is looked up, not imported: if it is not loaded, this error is not its.
    """
    psycopg = sys.modules.get("psycopg")
    cause: Any = getattr(exc, "orig", None) or exc
    if psycopg is None or type(cause) is not psycopg.OperationalError or cause.sqlstate:
        return None
    detail = " ".join(str(cause).split())
    return redact_text(
        f"cannot reach PostgreSQL: {detail} (`dualwrite config check FILE` checks each service)"
    )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dualwrite")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Migrate live data from an old PostgreSQL schema to a new one through Kafka."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python's own chatter (reconnect attempts, slow-task warnings) only with -vv;
    # our modules log the failures that matter, with what we do about them.
    logging.getLogger("kafka").setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)
    # long-running services report progress by default
    for service in ("dualwrite.relay", "dualwrite.worker"):
        logging.getLogger(service).setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)


def main() -> None:
    """Console-script entry point; click turns usage errors into exit code 2."""
    try:
        cli(prog_name="dualwrite")
    finally:
        # The process ends here. Frozen objects are left to the OS instead of being torn
        # down one by one by the interpreter's final collections (0.2-0.4 s of exit after
        # a reconcile, with SQLAlchemy, psycopg and kafka-python loaded); atexit handlers
        # and the flushing of stdout/stderr still run.
        gc.freeze()


if __name__ == "__main__":
    main()
