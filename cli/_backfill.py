"""``dualwrite backfill``."""

from __future__ import annotations

import json
import sys

import click
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cli._direction import load_direction, reverse_option, transforms_of
from cli._output import emit_json, err, out
from cli._signals import stop_on_signals
from dualwrite import make_engine
from dualwrite.backfill import BackfillProgress, BackfillSettings, run_backfill


def _shard(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N such as 0/4, got {value!r}") from None
    if n < 1 or not 0 <= i < n:
        raise click.BadParameter(f"shard {i} is outside 0..{n - 1}")
    return i, n


@click.command("backfill")
@click.argument("migration_file", type=click.Path(dir_okay=False))
@click.option("--table", "tables", multiple=True, help="Only this source table (repeatable).")
@click.option(
    "--chunk-rows",
    type=click.IntRange(1, 1_000_000),
    default=20_000,
    show_default=True,
    help="Source rows per chunk: one read, one target transaction, one progress mark. "
    "Memory grows with it (two chunks in hand); smaller chunks hold target locks for less time.",
)
@click.option(
    "--max-rows-per-s",
    type=click.FloatRange(min=1),
    default=None,
    help="Throttle the source reads.",
)
@click.option(
    "--busy-latency-ms",
    type=click.FloatRange(min=1),
    default=250.0,
    show_default=True,
    help="Back off while SELECT 1 on the source is slower.",
)
@click.option(
    "--shard",
    default="0/1",
    callback=_shard,
    show_default=True,
    help="I/N: this process takes key range I of N of each table (run N of them, on one "
    "host or several).",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Run N processes at once, each one key range of every table (shards 0/N to N-1/N); "
    "about one core each. Resume with the same N.",
)
@click.option("--restart", is_flag=True, help="Forget saved progress and start over.")
@click.option("--json", "as_json", is_flag=True, help="JSON progress lines and summary.")
@reverse_option
def backfill_command(
    migration_file: str,
    tables: tuple[str, ...],
    chunk_rows: int,
    max_rows_per_s: float | None,
    busy_latency_ms: float,
    shard: tuple[int, int],
    processes: int,
    restart: bool,
    as_json: bool,
    reverse: bool,
) -> None:
    """Copy every existing source row, transformed, to the target; resumable.

    Safe while the stream runs: a snapshot row never overwrites streamed data and never
    brings back a deleted row. Capture must be installed first. SIGTERM or Ctrl-C stops after
    the chunk in hand; run the same command again to resume. Exit 3 when stopped early.
    """
    config = load_direction(migration_file, reverse)
    transforms = transforms_of(config)
    source, target = make_engine(config.source), make_engine(config.target)
    settings = BackfillSettings(
        chunk_rows=chunk_rows,
        max_rows_per_s=max_rows_per_s,
        busy_latency_ms=busy_latency_ms,
        restart=restart,
        tables=tables,
        shard=shard[0],
        shards=shard[1],
        processes=processes,
    )
    stop = stop_on_signals()
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
        TextColumn("{task.fields[rate]:,.0f} rows/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=as_json,
    )
    tasks: dict[str, TaskID] = {}

    def on_progress(p: BackfillProgress) -> None:
        if as_json:
            sys.stdout.write(json.dumps({"event": "progress", **p.__dict__}) + "\n")
            sys.stdout.flush()
            return
        if p.source not in tasks:
            tasks[p.source] = bars.add_task(
                p.source, total=max(p.rows_estimate, p.rows_done), rate=0.0
            )
        task = tasks[p.source]
        total = max(p.rows_estimate, p.rows_done)
        bars.update(
            task, completed=p.rows_done, total=p.rows_done if p.done else total, rate=p.rows_per_s
        )

    try:
        with bars:
            results = run_backfill(
                source, target, config, transforms, settings, stop=stop, progress=on_progress
            )
    finally:
        source.dispose()
        target.dispose()
    if as_json:
        emit_json({"event": "summary", "tables": results})
    else:
        for r in results:
            state = "done" if r.done else "stopped (resumable)"
            rate = r.rows / r.elapsed_s if r.elapsed_s else 0.0
            resumed = ", resumed" if r.resumed else ""
            out.print(
                f"{r.source}: {state}, {r.rows:,} rows in {r.elapsed_s:.1f}s ({rate:,.0f}/s){resumed}, {r.rows_total:,} in total",
                markup=False,
            )
    sys.exit(0 if all(r.done for r in results) and not stop.is_set() else 3)
