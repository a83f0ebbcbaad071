"""``dualwrite demo``: the README's main command."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cli._output import out
from dualwrite.demo import DemoSettings, run_demo


@click.command("demo")
@click.option(
    "--customers",
    type=click.IntRange(1, 10_000_000),
    default=DemoSettings.customers,
    show_default=True,
    help="Customers to seed (about 4.9 rows each across the three old tables).",
)
@click.option(
    "--workload-s",
    type=click.FloatRange(0, 3600),
    default=DemoSettings.workload_s,
    show_default=True,
    help="Seconds of live writes during the backfill.",
)
@click.option(
    "--writers", type=click.IntRange(1, 16), default=DemoSettings.writers, show_default=True
)
@click.option(
    "--workers", type=click.IntRange(1, 16), default=DemoSettings.workers, show_default=True
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=DemoSettings.output,
    show_default=True,
    help="Where the reports and the migration files go.",
)
def demo_command(
    customers: int, workload_s: float, writers: int, workers: int, output: Path
) -> None:
    """Run the demo migration end to end on the local stack (started if needed, and stopped
    again): seed, live writes, capture, relay, workers and backfill at once, reconcile to
    zero drift, readiness report, cutover and a rollback rehearsal. Exit 0 on success."""
    t0 = time.monotonic()
    result = run_demo(
        DemoSettings(customers, workload_s, writers, workers, output),
        lambda line: out.print(line, markup=False, highlight=False),
    )
    out.print(
        f"demo {result.migration}: {result.source_rows:,} rows migrated live with "
        f"{result.live_transactions:,} concurrent transactions, reconcile {result.reconcile_status}, "
        f"{'ready' if result.ready else 'NOT ready'}, reverse reconcile {result.reverse_status}, "
        f"final state {result.final_state}, "
        f"{time.monotonic() - t0:.0f}s; reports in {output}/",
        style="bold green",
        markup=False,
    )
