"""``dualwrite reverse``: the rollback path's capture and the round-trip check of the inverses."""

from __future__ import annotations

import json
import sys

import click

from cli._direction import load_direction
from cli._output import emit_json, out
from dualwrite.reverse import (
    install_reverse,
    record_round_trip,
    reverse_status,
    round_trip_check,
    uninstall_reverse,
)

migration_arg = click.argument("migration_file", type=click.Path(dir_okay=False))


@click.group("reverse")
def reverse_group() -> None:
    """The rollback direction: capture on the new tables, the inverse transforms back to the
    old ones. Run relay, worker, backfill and reconcile with --reverse for the rest."""


@reverse_group.command("check")
@migration_arg
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Rows checked per old table.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Also fail rows the inverse rebuilds in normalised form (e.g. an e-mail lower-cased).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def reverse_check(migration_file: str, sample: int, strict: bool, fmt: str) -> None:
    """Round-trip sampled old rows (transform, inverse, compare) and record the result.

    Exit 0 when every row survives the round trip, 1 when some do not (each shown with its
    key and the differing columns), 2 on error. The readiness gate reads the recorded result.
    """
    config = load_direction(migration_file, reverse=False)
    report = round_trip_check(config, sample, strict=strict)
    record = record_round_trip(config, report)
    if fmt == "json":
        sys.stdout.write(json.dumps({"id": record.id, **report.evidence()}) + "\n")
    else:
        for t in report.tables:
            out.print(
                f"{t.table}: {t.rows_checked} row(s), {t.failures} failure(s), "
                f"{t.normalised} normalised, {t.filtered} filtered out",
                markup=False,
            )
        for f in report.failures:
            out.print(f"[red]FAIL[/] {f.table} {f.key}: {f.detail}", highlight=False)
            for column, (was, now) in {**f.columns, **f.target_columns}.items():
                out.print(f"    {column}: {was!r} -> {now!r}", markup=False)
        verdict = "[green]ok[/]" if report.ok else "[red]failed[/]"
        out.print(
            f"round trip {verdict}: {report.rows_checked} row(s) checked, "
            f"{len(report.failures)} failure(s), {len(report.normalised)} normalised "
            f"(recorded as check {record.id})"
        )
    sys.exit(0 if report.ok else 1)


@reverse_group.command("install")
@migration_arg
def reverse_install(migration_file: str) -> None:
    """Install capture on the new tables (idempotent; rows the workers apply are skipped)."""
    config = load_direction(migration_file, reverse=True)
    shapes = install_reverse(config)
    for shape in shapes:
        out.print(
            f"[green]ok[/] {shape.source}  key ({', '.join(shape.key)})  {len(shape.types)} columns",
            highlight=False,
        )
    out.print(f"reverse capture installed in schema {config.capture.schema!r}", markup=False)


@reverse_group.command("uninstall")
@migration_arg
@click.option("--force", is_flag=True, help="Also discard changes the relay has not published.")
def reverse_uninstall(migration_file: str, force: bool) -> None:
    """Remove reverse capture from the new tables; refuses while changes are unrelayed."""
    config = load_direction(migration_file, reverse=True)
    released = uninstall_reverse(config, force=force)
    if released:
        out.print(
            f"reverse capture removed from {len(released)} table(s): {', '.join(released)}",
            markup=False,
        )
    else:
        out.print("reverse capture was not installed; nothing to do")


@reverse_group.command("status")
@migration_arg
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def reverse_status_command(migration_file: str, as_json: bool) -> None:
    """Show reverse capture on the new tables and its backlog; exit 1 unless fully installed."""
    config = load_direction(migration_file, reverse=True)
    st = reverse_status(config)
    healthy = st.installed and all(
        t.installed and t.trigger_enabled and not t.schema_drift for t in st.tables
    )
    if as_json:
        emit_json({"healthy": healthy, **st.__dict__})
    else:
        for t in st.tables:
            state = "[green]captured[/]" if t.installed else "[red]not installed[/]"
            if t.installed and not t.trigger_enabled:
                state = "[red]trigger disabled[/]"
            drift = f"  schema changed since install: {', '.join(t.schema_drift)}"
            out.print(f"{state} ", end="")
            out.print(f"{t.source}{drift if t.schema_drift else ''}", markup=False)
        out.print(f"backlog {st.backlog} change(s); relayed {st.relayed_total} in total")
    sys.exit(0 if healthy else 1)
