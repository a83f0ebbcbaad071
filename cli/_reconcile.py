"""``dualwrite reconcile``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cli._output import err, out
from cli._worker import _transforms
from dualwrite import load_migration, make_engine
from reconcile import (
    DEFAULT_WORKERS,
    reconcile,
    record_run,
    summary_line,
    to_json,
    to_markdown,
    write_artifact,
)

EXIT = {"clean": 0, "drift": 1, "incomplete": 3}


@click.command("reconcile")
@click.argument("migration_file", type=click.Path(dir_okay=False))
@click.option(
    "--artifact",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write every differing key here (JSONL).",
)
@click.option(
    "--markdown",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the Markdown report here.",
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
    "--workers",
    type=click.IntRange(1, 64),
    default=DEFAULT_WORKERS,
    show_default=True,
    help="Threads comparing tables and segments at once (each with its own connections).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
def reconcile_command(
    migration_file: str,
    artifact: Path | None,
    markdown: Path | None,
    wait_s: float,
    chunk_rows: int,
    workers: int,
    as_json: bool,
) -> None:
    """Compare the transform of the source with the target and report every difference.

    Exit 0 clean, 1 drift, 2 error, 3 incomplete (the pipeline did not catch up in time to
    re-check the differences). Differences that disappear once the pipeline caught up are
    reported as in flight, not drift.
    """
    config = load_migration(migration_file)
    transforms = _transforms(config)
    source, target = make_engine(config.source), make_engine(config.target)
    try:
        result = reconcile(
            source,
            target,
            config,
            transforms,
            chunk_rows=chunk_rows,
            wait_s=wait_s,
            workers=workers,
            progress=None
            if as_json
            else lambda table, rows: err.print(f"[dim]{table}: {rows:,} rows read[/]"),
        )
        record_run(target, result)
    finally:
        source.dispose()
        target.dispose()
    if artifact is not None:
        write_artifact(result, artifact)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(to_markdown(result), encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps(to_json(result), ensure_ascii=False) + "\n")
    else:
        for t in result.tables:
            counts = ", ".join(f"{k} {v}" for k, v in t.counts.items() if v) or "clean"
            out.print(
                f"{t.target}: {t.expected_rows:,} expected, {t.target_rows:,} in target: {counts}",
                markup=False,
            )
        out.print(summary_line(result), markup=False)
    sys.exit(EXIT[result.status])
