"""``dualwrite capture``, ``dualwrite relay`` and ``dualwrite tail``."""

from __future__ import annotations

import datetime as dt
import json
import sys

import click

from cli._direction import load_direction, reverse_option
from cli._output import emit_json, err, out
from cli._signals import stop_on_signals
from dualwrite import capture, load_migration, make_engine
from dualwrite.envelope import EnvelopeError, decode_event
from dualwrite.kafka_io import read_topic
from dualwrite.metrics import MetricsServer
from dualwrite.relay import relay_metrics, run_relay

migration_arg = click.argument("migration_file", type=click.Path(dir_okay=False))


@click.group("capture")
def capture_group() -> None:
    """Install, remove and inspect change capture on the source database."""


@capture_group.command("install")
@migration_arg
def capture_install(migration_file: str) -> None:
    """Create the changelog and the row triggers for every table (idempotent)."""
    config = load_migration(migration_file)
    engine = make_engine(config.source)
    try:
        shapes = capture.install(engine, config)
    finally:
        engine.dispose()
    for shape, table in zip(shapes, config.tables, strict=True):
        out.print(f"[green]ok[/] {table.capture:<7} ", end="")
        out.print(
            f"{shape.source}  key ({', '.join(shape.key)})  {len(shape.types)} columns",
            markup=False,
        )
    out.print(f"capture installed in schema {config.capture.schema!r}", markup=False)


@capture_group.command("uninstall")
@migration_arg
@click.option("--force", is_flag=True, help="Also discard changes the relay has not published.")
def capture_uninstall(migration_file: str, force: bool) -> None:
    """Remove exactly what install created; refuses while changes are unrelayed."""
    config = load_migration(migration_file)
    engine = make_engine(config.source)
    try:
        released = capture.uninstall(engine, config, force=force)
    finally:
        engine.dispose()
    if released:
        out.print(
            f"capture removed from {len(released)} table(s): {', '.join(released)}", markup=False
        )
    else:
        out.print("capture was not installed; nothing to do")


@capture_group.command("status")
@migration_arg
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def capture_status(migration_file: str, as_json: bool) -> None:
    """Show captured tables, schema drift and the relay backlog; exit 1 if something is off."""
    config = load_migration(migration_file)
    engine = make_engine(config.source)
    try:
        st = capture.status(engine, config)
    finally:
        engine.dispose()
    healthy = st.installed and all(
        t.installed and (t.trigger_enabled or t.mode == "outbox") and not t.schema_drift
        for t in st.tables
    )
    if as_json:
        emit_json({"healthy": healthy, **st.__dict__})
    else:
        for t in st.tables:
            state = "[green]captured[/]" if t.installed else "[red]not installed[/]"
            if t.installed and t.mode == "trigger" and not t.trigger_enabled:
                state = "[red]trigger disabled[/]"
            out.print(f"{state} {t.mode:<7} ", end="")
            drift = (
                f"  schema changed since install: {', '.join(t.schema_drift)}"
                if t.schema_drift
                else ""
            )
            out.print(f"{t.source}  key ({', '.join(t.key)}){drift}", markup=False)
        age = "-" if st.oldest_unrelayed_age_s is None else f"{st.oldest_unrelayed_age_s:.1f}s"
        out.print(
            f"backlog {st.backlog} change(s), oldest {age}; relayed {st.relayed_total} in total, "
            f"last at {st.last_relayed_at or '-'}"
        )
    sys.exit(0 if healthy else 1)


@click.command("relay")
@migration_arg
@click.option("--until-idle", is_flag=True, help="Exit once the changelog is drained.")
@click.option(
    "--metrics-port", type=int, default=None, help="Serve Prometheus metrics (overrides the file)."
)
@reverse_option
def relay_command(
    migration_file: str, until_idle: bool, metrics_port: int | None, reverse: bool
) -> None:
    """Publish the changelog to Kafka, at least once and in per-row commit order.

    Runs until SIGTERM or Ctrl-C (finishing the batch in hand), or with --until-idle until the
    changelog is empty. Unavailable services are retried with backoff.
    """
    config = load_direction(migration_file, reverse)
    engine = make_engine(config.source)
    stop = stop_on_signals()
    metrics = relay_metrics()
    port = config.relay.metrics_port if metrics_port is None else metrics_port
    server = MetricsServer(metrics, port) if port else None
    if server:
        err.print(f"[dim]metrics on http://127.0.0.1:{server.port}/metrics[/]")
    try:
        result = run_relay(engine, config, until_idle=until_idle, stop=stop, metrics=metrics)
    finally:
        if server:
            server.close()
        engine.dispose()
    rate = result.relayed / result.elapsed_s if result.elapsed_s > 0 else 0.0
    out.print(
        f"relayed {result.relayed} change(s) in {result.batches} batch(es), {result.elapsed_s:.1f}s "
        f"({rate:,.0f}/s), {result.retries} retr{'y' if result.retries == 1 else 'ies'}"
    )


@click.command("tail")
@migration_arg
@click.option("-n", "--max-messages", type=int, default=None, help="Stop after this many events.")
@click.option(
    "--idle-timeout",
    "idle_s",
    type=float,
    default=2.0,
    show_default=True,
    help="Stop after this many idle seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print each event's raw JSON.")
def tail_command(
    migration_file: str, max_messages: int | None, idle_s: float, as_json: bool
) -> None:
    """Print the change events on the migration's topic, oldest first, in readable form."""
    config = load_migration(migration_file)
    for message in read_topic(
        config.kafka.bootstrap_servers,
        config.changes_topic,
        idle_timeout_ms=int(idle_s * 1000),
        max_messages=max_messages,
    ):
        where = f"p{message.partition}@{message.offset}"
        if as_json:
            sys.stdout.write((message.value or b"").decode("utf-8", "replace") + "\n")
            continue
        try:
            event = decode_event(message.value or b"")
        except EnvelopeError as exc:
            out.print(f"[red]{where} undecodable:[/] ", end="")
            out.print(str(exc), markup=False)
            continue
        stamp = event.ts.astimezone(dt.UTC).strftime("%H:%M:%S.%f")[:-3]
        body = json.dumps(
            event.row if event.row is not None else None, default=str, ensure_ascii=False
        )
        out.print(f"{where:<10} {stamp} v{event.version:<8} {event.op:<6} ", end="")
        out.print(f"{event.source} {json.dumps(dict(event.key), default=str)} {body}", markup=False)
