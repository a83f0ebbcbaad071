"""``dualwrite config``: validate a migration file and reach its services."""

from __future__ import annotations

import sys

import click

from cli._output import emit_json, out
from dualwrite import check_database, check_kafka, load_migration, make_engine


@click.group("config")
def config_group() -> None:
    """Work with migration files."""


@config_group.command("check")
@click.argument("migration_file", type=click.Path(dir_okay=False))
@click.option("--offline", is_flag=True, help="Validate the file only; contact no service.")
@click.option("--timeout", "timeout_s", default=10, show_default=True, help="Seconds per service.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def config_check(migration_file: str, offline: bool, timeout_s: int, as_json: bool) -> None:
    """Validate MIGRATION_FILE, then connect to each service it names.

    Exit 0 when the file is valid and every service answers, 2 otherwise.
    """
    config = load_migration(migration_file)
    checks = []
    if not offline:
        for name, db in (("source", config.source), ("target", config.target)):
            engine = make_engine(db, connect_timeout_s=timeout_s)
            try:
                checks.append(check_database(name, engine))
            finally:
                engine.dispose()
        checks.append(check_kafka(config.kafka, timeout_s=timeout_s))
    ok = all(c.ok for c in checks)
    if as_json:
        emit_json({"file": migration_file, "valid": True, "ok": ok, "services": checks})
    else:
        out.print(
            f"[green]ok[/]   {migration_file}: valid, {len(config.tables)} table(s)", markup=True
        )
        for c in checks:
            mark = "[green]ok[/]  " if c.ok else "[red]FAIL[/]"
            out.print(f"{mark} {c.service:<7} ", end="")
            out.print(f"{c.endpoint}  {c.detail}  ({c.elapsed_ms:.0f} ms)", markup=False)
    sys.exit(0 if ok else 2)
