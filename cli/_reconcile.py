"""``dualwrite reconcile`` and ``dualwrite repair``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import click
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from cli._direction import load_direction, reverse_option, transforms_of
from cli._output import err, out
from cli._signals import stop_on_signals
from dualwrite import load_migration, make_engine
from reconcile import (
    DEFAULT_WORKERS,
    RepairProgress,
    RepairResult,
    load_report,
    read_history,
    reconcile,
    record_run,
    repair,
    summary_line,
    to_html,
    to_json,
    to_markdown,
    write_artifact,
)

EXIT = {"clean": 0, "drift": 1, "incomplete": 3}
EXIT_INCOMPLETE = 3

_output_file = click.Path(dir_okay=False, path_type=Path)


def _progress(quiet: bool) -> Progress:
    """Progress on stderr (never on stdout, which may carry --json); off with --quiet."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,.0f}{task.fields[unit]}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=err.is_terminal,
    )


def _on_rows(bars: Progress) -> Callable[[str, int], None]:
    tasks: dict[str, TaskID] = {}

    def update(table: str, rows: int) -> None:
        if table not in tasks:
            tasks[table] = bars.add_task(f"reading {table}", total=None, unit=" rows")
        bars.update(tasks[table], completed=rows)

    return update


def _on_repair(bars: Progress) -> Callable[[RepairProgress], None]:
    tasks: dict[str, TaskID] = {}

    def update(p: RepairProgress) -> None:
        if p.source not in tasks:
            tasks[p.source] = bars.add_task(
                f"re-sending {p.source}", total=p.total, unit=f"/{p.total:,} keys"
            )
        bars.update(tasks[p.source], completed=p.done)

    return update


@click.command("reconcile")
@click.argument("migration_file", type=click.Path(dir_okay=False))
@click.option("--artifact", type=_output_file, help="Write every differing key here (JSONL).")
@click.option("--markdown", type=_output_file, help="Write the Markdown report here.")
@click.option(
    "--html",
    type=_output_file,
    help="Write the self-contained HTML report (with the drift history chart) here.",
)
@click.option(
    "--wait-s",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="How long to wait for the pipeline to catch up before re-checking differences.",
)
@click.option("--chunk-rows", type=click.IntRange(1, 1_000_000), default=5000, show_default=True)
@click.option(
    "--repair",
    "do_repair",
    is_flag=True,
    help="Then re-send the drifting keys from the source through the pipeline.",
)
@click.option(
    "--batch-keys",
    type=click.IntRange(1, 100_000),
    default=500,
    show_default=True,
    help="With --repair: keys per source transaction.",
)
@click.option(
    "--lock-wait-s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="With --repair: how long a batch with absent keys waits for concurrent source transactions.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=DEFAULT_WORKERS,
    show_default=True,
    help="Threads comparing tables and segments at once (each with its own connections).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress; print only the one-line summary.")
@reverse_option
def reconcile_command(
    migration_file: str,
    artifact: Path | None,
    markdown: Path | None,
    html: Path | None,
    wait_s: float,
    chunk_rows: int,
    do_repair: bool,
    batch_keys: int,
    lock_wait_s: float,
    workers: int,
    as_json: bool,
    quiet: bool,
    reverse: bool,
) -> None:
    """Compare the transform of the source with the target and report every difference.

    Exit 0 clean, 1 drift, 2 error, 3 incomplete (the pipeline did not catch up in time to
    re-check the differences). Differences that disappear once the pipeline caught up are
    reported as in flight, not drift. Every run is recorded on the target; the HTML report
    charts the drift of the recorded runs. With --repair the exit code is still the diff's.
    """
    config = load_direction(migration_file, reverse)
    transforms = transforms_of(config)
    source, target = make_engine(config.source), make_engine(config.target)
    repaired: RepairResult | None = None
    stop = stop_on_signals()
    try:
        with _progress(quiet) as bars:
            result = reconcile(
                source,
                target,
                config,
                transforms,
                chunk_rows=chunk_rows,
                wait_s=wait_s,
                workers=workers,
                progress=_on_rows(bars),
                stop=stop,
            )
        run_id = record_run(target, result)
        if html is not None:
            _write(html, to_html(result, read_history(target, config.name)))
        if do_repair and result.status == "drift":
            with _progress(quiet) as bars:
                repaired = repair(
                    source,
                    config,
                    transforms,
                    result.differences,
                    batch_keys=batch_keys,
                    lock_wait_s=lock_wait_s,
                    progress=_on_repair(bars),
                    stop=stop,
                )
    finally:
        source.dispose()
        target.dispose()
    if artifact is not None:
        write_artifact(result, artifact)
    if markdown is not None:
        _write(markdown, to_markdown(result))
    if as_json:
        report = {**to_json(result), "run_id": run_id}
        if repaired is not None:
            report["repair"] = repaired.to_json()
        sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
    else:
        if not quiet:
            for t in result.tables:
                counts = ", ".join(f"{k} {v}" for k, v in t.counts.items() if v) or "clean"
                out.print(
                    f"{t.target}: {t.expected_rows:,} expected, {t.target_rows:,} in target: {counts}",
                    markup=False,
                )
            if repaired is not None:
                out.print(_repair_line(repaired), markup=False)
        out.print(summary_line(result), markup=False)
    sys.exit(EXIT[result.status])


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _repair_line(r: RepairResult) -> str:
    verb = "would re-send" if r.dry_run else "re-sent"
    skipped = ", ".join(f"{k} {v}" for k, v in r.skipped.items() if v)
    line = (
        f"repair {r.migration}: {verb} {len(r.entries):,} source key(s): "
        f"{r.snapshots:,} snapshot(s), {r.deletes:,} delete(s)"
        + ("" if r.dry_run else f" in {r.batches:,} batch(es)")
        + (f"; not re-sent: {skipped}" if skipped else "")
    )
    if not r.complete:
        line += f"; INCOMPLETE: {r.detail}"
    return line


@click.command("repair")
@click.argument("migration_file", type=click.Path(dir_okay=False))
@click.argument("report", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--dry-run", is_flag=True, help="List what would be re-sent; write nothing.")
@click.option(
    "--batch-keys",
    type=click.IntRange(1, 100_000),
    default=500,
    show_default=True,
    help="Keys per source transaction.",
)
@click.option(
    "--lock-wait-s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="How long a batch with absent keys waits for concurrent source transactions.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress; print only the summary line.")
def repair_command(
    migration_file: str,
    report: Path,
    dry_run: bool,
    batch_keys: int,
    lock_wait_s: float,
    as_json: bool,
    quiet: bool,
) -> None:
    """Re-send the keys of a saved reconcile report from the source through the pipeline.

    REPORT is the JSONL artifact of `dualwrite reconcile --artifact` (or a --json report
    that lists every differing key). Present source rows are re-sent as snapshot events,
    absent ones as deletes, through the changelog, relay and workers, so the version guard
    applies; the target is never written directly. Exit 0 sent (or nothing to send), 2 the
    report does not belong to this migration or cannot be mapped (nothing sent), 3 stopped
    before every batch was sent.
    """
    config = load_migration(migration_file)
    saved = load_report(report)
    transforms = transforms_of(config)
    source = make_engine(config.source)
    try:
        with _progress(quiet) as bars:
            result = repair(
                source,
                config,
                transforms,
                saved.differences,
                migration=saved.migration,
                batch_keys=batch_keys,
                dry_run=dry_run,
                lock_wait_s=lock_wait_s,
                progress=_on_repair(bars),
                stop=stop_on_signals(),
            )
    finally:
        source.dispose()
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), ensure_ascii=False, default=str) + "\n")
    else:
        if dry_run and not quiet:
            for e in result.entries:
                key = json.dumps(dict(e.key), ensure_ascii=False, default=str)
                out.print(
                    f"{e.sent:<8} {e.source} {key}  (for {'; '.join(e.reasons)})", markup=False
                )
        out.print(_repair_line(result), markup=False)
    sys.exit(0 if result.complete else EXIT_INCOMPLETE)
