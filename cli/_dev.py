"""``dualwrite dev``: the local PostgreSQL and Kafka, without Docker."""

from __future__ import annotations

import shlex
import sys

import click

from cli._output import emit_json, err, out
from dualwrite import devstack, load_migration, make_engine
from dualwrite.devstack import DevStackSettings, StackStatus


@click.group("dev")
def dev_group() -> None:
    """Run a local PostgreSQL 15 and Apache Kafka (KRaft) for development and tests.

    Folders and ports come from DUALWRITE_DEV_DIR, DUALWRITE_CACHE_DIR, DUALWRITE_PG_PORT
    (55432), DUALWRITE_KAFKA_PORT (59092), DUALWRITE_KAFKA_CONTROLLER_PORT (59093) and
    DUALWRITE_PG_BIN.
    """


def _render(status: StackStatus) -> None:
    for s in status.services:
        mark = "[green]ok  [/]" if s.healthy else "[red]down[/]"
        pid = f"pid {s.pid}" if s.pid else "-"
        out.print(f"{s.name:<9} {mark} {s.endpoint:<16} {pid:<10} ", end="")
        out.print(s.detail, markup=False)


@dev_group.command("up")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
def dev_up(as_json: bool) -> None:
    """Start PostgreSQL and Kafka (harmless when already running)."""
    settings = DevStackSettings.from_env()
    result = devstack.up(settings, progress=lambda msg: err.print(f"[dim]{msg}[/]"))
    if as_json:
        emit_json(
            {"started": result.started, "elapsed_s": result.elapsed_s, "services": result.services}
        )
    else:
        _render(result)
        err.print(
            f"[dim]ready in {result.elapsed_s:.1f}s; `eval $(dualwrite dev env)` exports the URLs[/]"
        )
    if not result.healthy:
        sys.exit(2)


@dev_group.command("down")
@click.option("--wipe", is_flag=True, help="Also delete the services' data (keeps the jar cache).")
def dev_down(wipe: bool) -> None:
    """Stop the services that `dev up` started."""
    settings = DevStackSettings.from_env()
    stopped = devstack.down(settings, wipe=wipe, progress=lambda msg: err.print(f"[dim]{msg}[/]"))
    if not stopped:
        err.print("nothing was running")


@dev_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dev_status(as_json: bool) -> None:
    """Show both services; exit 1 when one is not running and healthy."""
    status = devstack.status(DevStackSettings.from_env())
    if as_json:
        emit_json({"healthy": status.healthy, "services": status.services})
    else:
        _render(status)
    sys.exit(0 if status.healthy else 1)


@dev_group.command("env")
def dev_env() -> None:
    """Print `export` lines pointing tests and examples at the local stack."""
    for key, value in DevStackSettings.from_env().service_env().items():
        out.print(f"export {key}={shlex.quote(value)}", markup=False)


@dev_group.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def dev_run(command: tuple[str, ...]) -> None:
    """Start the stack, run COMMAND with its URLs exported, stop what was started.

    Example: dualwrite dev run -- pytest
    """
    code = devstack.run_with_stack(
        DevStackSettings.from_env(), command, progress=lambda msg: err.print(f"[dim]{msg}[/]")
    )
    sys.exit(code)


@dev_group.command("smoke")
@click.argument("migration_file", type=click.Path(dir_okay=False))
def dev_smoke(migration_file: str) -> None:
    """Carry one row source -> Kafka -> target using MIGRATION_FILE's services."""
    config = load_migration(migration_file)
    source, target = make_engine(config.source), make_engine(config.target)
    try:
        result = devstack.smoke(source, target, config.kafka)
    finally:
        source.dispose()
        target.dispose()
    for name, ms in result.steps:
        out.print(f"[green]ok[/] {name:<32} {ms:8.1f} ms")
    out.print(f"smoke run passed: a row went source -> {result.topic} -> target and back")
