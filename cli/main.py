"""Entry point of the ``dualwrite`` console script.

Exit codes (the contract users script against): 0 success / clean / ready, 1 drift found or
not ready, 2 bad input or error, 3 incomplete.
"""

from __future__ import annotations

import logging
import sys
import traceback

import click

from cli._backfill import backfill_command
from cli._capture import capture_group, relay_command, tail_command
from cli._config import config_group
from cli._demo import demo_command
from cli._dev import dev_group
from cli._output import err
from cli._readiness import cutover_command, readiness_command, rollback_command, state_group
from cli._reconcile import reconcile_command, repair_command
from cli._reverse import reverse_group
from cli._worker import dlq_group, status_command, worker_command
from dualwrite import __version__
from dualwrite.errors import DualwriteError
from dualwrite.redaction import redact_text

EXIT_OK = 0
EXIT_ERROR = 2


class _Group(click.Group):
    """Maps expected library errors to one clear message and exit code 2, and anything
    unexpected (a bug, a database error no library call anticipated) to exit 2 with its
    traceback: exit 1 means drift or not ready, so a crash must never look like it."""

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
            err.print(redact_text(traceback.format_exc()), markup=False)
            err.print("[bold red]unexpected error:[/]", end=" ")
            err.print(redact_text(f"{type(exc).__name__}: {exc}".strip()), markup=False)
            sys.exit(EXIT_ERROR)


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


cli.add_command(demo_command)
cli.add_command(dev_group)
cli.add_command(config_group)
cli.add_command(capture_group)
cli.add_command(relay_command)
cli.add_command(tail_command)
cli.add_command(worker_command)
cli.add_command(dlq_group)
cli.add_command(status_command)
cli.add_command(backfill_command)
cli.add_command(reconcile_command)
cli.add_command(repair_command)
cli.add_command(readiness_command)
cli.add_command(state_group)
cli.add_command(cutover_command)
cli.add_command(rollback_command)
cli.add_command(reverse_group)


def main() -> None:
    """Console-script entry point; click turns usage errors into exit code 2."""
    cli(prog_name="dualwrite")


if __name__ == "__main__":
    main()
