"""``dualwrite worker``, ``dualwrite dlq`` and ``dualwrite status``."""

from __future__ import annotations

import dataclasses
import sys

import click

from cli._direction import load_direction, reverse_option, transforms_of
from cli._output import emit_json, out
from cli._signals import stop_on_signals
from dualwrite import make_engine
from dualwrite.dlq import dead_letters, migration_quarantine, redrive
from dualwrite.lag import pipeline_status
from dualwrite.metrics import MetricsServer
from dualwrite.state import current_state
from dualwrite.worker import WorkerSettings, run_worker, worker_metrics
from reconcile import evaluate_readiness

migration_arg = click.argument("migration_file", type=click.Path(dir_okay=False))


@click.command("worker")
@migration_arg
@click.option("--until-idle", is_flag=True, help="Exit once every partition is caught up.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True)
@click.option("--linger-ms", type=click.IntRange(0, 60_000), default=100, show_default=True)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Serve Prometheus metrics; 0 = off.",
)
@reverse_option
def worker_command(
    migration_file: str,
    until_idle: bool,
    batch_size: int,
    linger_ms: int,
    metrics_port: int,
    reverse: bool,
) -> None:
    """Consume change events, transform them and apply them to the target.

    A consumer-group member: run several processes to scale. SIGTERM or Ctrl-C finishes the
    batch in hand, commits and leaves the group.
    """
    config = load_direction(migration_file, reverse)
    transforms = transforms_of(config)
    engine = make_engine(config.target)
    stop = stop_on_signals()
    metrics = worker_metrics()
    server = MetricsServer(metrics, metrics_port) if metrics_port else None
    try:
        result = run_worker(
            engine,
            config,
            transforms,
            settings=WorkerSettings(batch_size=batch_size, linger_ms=linger_ms),
            until_idle=until_idle,
            stop=stop,
            metrics=metrics,
        )
    finally:
        if server:
            server.close()
        engine.dispose()
    out.print(
        f"consumed {result.consumed} event(s) in {result.batches} batch(es), applied {result.applied} row "
        f"operation(s), {result.dead_lettered} dead-lettered, {result.parked} parked, {result.elapsed_s:.1f}s"
    )


@click.group("dlq")
def dlq_group() -> None:
    """Inspect dead letters and quarantined keys; re-drive them after a fix."""


@dlq_group.command("list")
@migration_arg
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reverse_option
def dlq_list(migration_file: str, as_json: bool, reverse: bool) -> None:
    """List this migration's quarantined keys (exit 1 when there are any)."""
    config = load_direction(migration_file, reverse)
    engine = make_engine(config.target)
    try:
        keys = migration_quarantine(engine, config)
    finally:
        engine.dispose()
    if as_json:
        emit_json({"quarantined": keys})
    else:
        for q in keys:
            out.print(
                f"{q.msg_key}  {q.reason}  parked {q.parked}  since {q.since:%Y-%m-%d %H:%M:%S}  ",
                end="",
                markup=False,
            )
            out.print(q.error[:200], markup=False)
        out.print(f"{len(keys)} quarantined key(s)")
    sys.exit(1 if keys else 0)


@dlq_group.command("show")
@migration_arg
@click.argument("key")
@reverse_option
def dlq_show(migration_file: str, key: str, reverse: bool) -> None:
    """Show the dead letters of one message KEY (e.g. 'public.orders:[42]')."""
    config = load_direction(migration_file, reverse)
    letters = dead_letters(config, key)
    for d in letters:
        out.print(
            f"{d.topic} p{d.partition}@{d.offset}  {d.reason}  worker {d.worker_version}  {d.failed_at}",
            markup=False,
        )
        out.print(f"  error: {d.error}", markup=False)
        out.print(f"  value: {d.value.decode('utf-8', 'replace')[:2000]}", markup=False)
    if not letters:
        out.print(f"no dead letters for {key}", markup=False)


@dlq_group.command("redrive")
@migration_arg
@click.argument("keys", nargs=-1)
@reverse_option
def dlq_redrive(migration_file: str, keys: tuple[str, ...], reverse: bool) -> None:
    """Re-process quarantined KEYS (default: all of this migration's) through the version guard."""
    config = load_direction(migration_file, reverse)
    transforms = transforms_of(config)
    engine = make_engine(config.target)
    try:
        result = redrive(engine, config, transforms, list(keys) or None)
    finally:
        engine.dispose()
    out.print(
        f"re-drove {len(result.keys)} key(s): {result.replayed} event(s), {result.applied} row operation(s) applied",
    )
    if result.still_quarantined:
        out.print(
            f"still failing, quarantined again: {', '.join(result.still_quarantined)}", markup=False
        )
        sys.exit(1)


@click.command("status")
@migration_arg
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reverse_option
def status_command(migration_file: str, as_json: bool, reverse: bool) -> None:
    """The migration at a glance: its state, pipeline lag (per partition and end to end),
    backfill progress and the last reconcile (with --reverse: of the rollback direction)."""
    config = load_direction(migration_file, reverse)
    forward = config.reverse_of or config
    source, engine = make_engine(config.source), make_engine(config.target)
    try:
        # the state belongs to the forward migration, kept on its target
        state = current_state(source if config.reverse_of else engine, forward.name)
        st = pipeline_status(engine, config)
        backfill, last_reconcile = evaluate_readiness(
            config, source, engine, ("backfill", "reconcile")
        ).gates
    finally:
        source.dispose()
        engine.dispose()
    if as_json:
        emit_json(
            {
                **dataclasses.asdict(st),
                "state": state,
                "backfill": backfill.evidence.get("tables", {}),
                "last_reconcile": {"summary": last_reconcile.summary, **last_reconcile.evidence},
            }
        )
        return
    since = f" since {state.since:%Y-%m-%d %H:%M:%S} UTC" if state.since else ""
    out.print(f"migration {config.name}: state {state.state}{since}", markup=False)
    for p in st.partitions:
        committed = "-" if p.committed is None else str(p.committed)
        out.print(
            f"partition {p.partition:<3} end {p.end_offset:<10} committed {committed:<10} lag {p.lag}"
        )
    out.print(f"total consumer lag {st.total_lag} event(s)")
    for s in st.sources:
        age = "-" if s.lag_s is None else f"{s.lag_s:.1f}s"
        # with nothing pending a quiet source is caught up, however old its last change;
        # with events pending, their lag is at most the age of the last applied change
        lag = (
            f"caught up (its last change was made {age} ago)"
            if st.total_lag == 0
            else f"end-to-end lag at most {age}"
        )
        out.print(f"{s.source}: applied up to version {s.version}, {lag}", markup=False)
    out.print(f"quarantined keys: {st.quarantined}")
    for table, t in backfill.evidence.get("tables", {}).items():
        done = f"finished {t['finished_at']}" if t["finished_at"] else "not finished"
        out.print(f"backfill {table}: {t['rows_done']:,} rows, {done}", markup=False)
    out.print(f"last reconcile: {last_reconcile.summary}", markup=False)
