"""Rendering a reconcile result (JSON, Markdown, HTML, a one-line summary, the JSONL artifact)
and keeping the run history on the target. Rendering never recomputes anything."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine

from reconcile._compare import CATEGORIES, Difference, ReconcileResult
from reconcile._html import (
    ChartPoint,
    Html,
    badge,
    escape,
    render_page,
    svg_history_chart,
    table_html,
)

SCHEMA_VERSION = 1
DRIFT_CATEGORIES = ("missing", "extra", "mismatch", "transform_error")
SAMPLE = 10

HISTORY_RUNS = 60  # runs shown in the HTML chart

HISTORY_DDL = """
CREATE SCHEMA IF NOT EXISTS dualwrite;
CREATE TABLE IF NOT EXISTS dualwrite.reconcile_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    migration   text NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    status      text NOT NULL,
    counts      jsonb NOT NULL,
    tables      jsonb NOT NULL DEFAULT '[]',
    caught_up   boolean
);
CREATE INDEX IF NOT EXISTS reconcile_runs_by_migration
    ON dualwrite.reconcile_runs (migration, finished_at);
"""

# Columns added after the first release, with the statement that adds each to an existing
# table. A constant default is catalog-only in PostgreSQL 11+, so no rewrite happens; older
# rows read as an empty table list and an unknown (NULL) caught_up.
HISTORY_MIGRATIONS = {
    "tables": "ALTER TABLE dualwrite.reconcile_runs ADD COLUMN IF NOT EXISTS tables jsonb NOT NULL DEFAULT '[]'",
    "caught_up": "ALTER TABLE dualwrite.reconcile_runs ADD COLUMN IF NOT EXISTS caught_up boolean",
}


@dataclass(frozen=True)
class TableRun:
    """One target table of a recorded run."""

    target: str
    expected_rows: int
    target_rows: int
    counts: Mapping[str, int]


@dataclass(frozen=True)
class RunRecord:
    """One row of ``dualwrite.reconcile_runs``. ``tables`` is empty and ``caught_up`` None
    for runs recorded before those columns existed."""

    id: int
    migration: str
    started_at: dt.datetime
    finished_at: dt.datetime
    status: str
    counts: Mapping[str, int]
    tables: tuple[TableRun, ...]
    caught_up: bool | None

    @property
    def drift(self) -> int:
        """Keys found drifting (missing, extra, mismatch, transform error)."""
        return sum(int(self.counts.get(c, 0)) for c in DRIFT_CATEGORIES)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def to_json(result: ReconcileResult) -> dict[str, Any]:
    """The versioned JSON report: counts per table and category, and a sample per category."""
    samples: dict[str, list[dict[str, Any]]] = {c: [] for c in CATEGORIES}
    for d in result.differences:
        if len(samples[d.category]) < SAMPLE:
            samples[d.category].append(_difference(d))
    return {
        "schema_version": SCHEMA_VERSION,
        "migration": result.migration,
        "status": result.status,
        "started_at": result.started_at.isoformat(),
        "finished_at": result.finished_at.isoformat(),
        "pipeline_caught_up": result.caught_up,
        "counts": result.counts,
        "tables": [
            {
                "target": t.target,
                "expected_rows": t.expected_rows,
                "target_rows": t.target_rows,
                "counts": dict(t.counts),
            }
            for t in result.tables
        ],
        "samples": samples,
        "summary": summary_line(result),
    }


def _difference(d: Difference, migration: str | None = None) -> dict[str, Any]:
    head = {} if migration is None else {"migration": migration}
    return {
        **head,
        "target": d.target,
        "key": d.key,
        "category": d.category,
        "columns": {
            c: {"expected": _jsonable(e), "actual": _jsonable(a)} for c, (e, a) in d.columns.items()
        },
        "detail": d.detail,
    }


def write_artifact(result: ReconcileResult, path: Path) -> int:
    """Every differing key, one JSON object per line (each naming its migration, so a repair
    can refuse another migration's artifact); returns the number written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for d in result.differences:
            fh.write(json.dumps(_difference(d, result.migration), ensure_ascii=False) + "\n")
    return len(result.differences)


def summary_line(result: ReconcileResult) -> str:
    """One line for alerting: status and non-zero counts."""
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items() if v) or "no differences"
    rows = sum(t.expected_rows for t in result.tables)
    return f"reconcile {result.migration}: {result.status.upper()} ({counts}; {rows} expected rows in {len(result.tables)} table(s))"


def to_markdown(result: ReconcileResult) -> str:
    lines = [
        f"# Reconcile report: {result.migration}",
        "",
        f"**Status: {result.status}** (finished {result.finished_at:%Y-%m-%d %H:%M:%S} UTC; "
        f"pipeline caught up: {'yes' if result.caught_up else 'no'})",
        "",
        "| target | expected rows | target rows | " + " | ".join(CATEGORIES) + " |",
        "|---|---:|---:|" + "---:|" * len(CATEGORIES),
    ]
    for t in result.tables:
        lines.append(
            f"| {t.target} | {t.expected_rows} | {t.target_rows} | "
            + " | ".join(str(t.counts.get(c, 0)) for c in CATEGORIES)
            + " |"
        )
    shown = [d for d in result.differences][: SAMPLE * 2]
    if shown:
        lines += [
            "",
            "## Sample differences",
            "",
            "| target | key | category | columns (expected -> actual) |",
            "|---|---|---|---|",
        ]
        for d in shown:
            cols = (
                "; ".join(
                    f"{c}: {_jsonable(e)!r} -> {_jsonable(a)!r}" for c, (e, a) in d.columns.items()
                )
                or d.detail
            )
            cell = cols.replace("|", "\\|")
            lines.append(f"| {d.target} | `{d.key}` | {d.category} | {cell} |")
    return "\n".join(lines) + "\n"


def _connect(target: Engine) -> psycopg.Connection[Any]:
    url = target.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(url, options="-c timezone=UTC", connect_timeout=10)


def ensure_history(conn: psycopg.Connection[Any]) -> None:
    """Create ``dualwrite.reconcile_runs``, or bring an older one up to date (idempotent).

    Serialised by an advisory lock; a column is added only when the catalog says it is
    missing, so the usual case takes no table lock, and an ``ALTER`` waits at most 5 s for
    its lock instead of queueing readers behind it.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('dualwrite.reconcile_runs'))")
        found = conn.execute(
            "SELECT to_regclass('dualwrite.reconcile_runs'), "
            "to_regclass('dualwrite.reconcile_runs_by_migration')"
        ).fetchone()
        if found is None or found[0] is None or found[1] is None:
            conn.execute(
                HISTORY_DDL
            )  # CREATE INDEX IF NOT EXISTS locks the table: only when needed
        present = {
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'dualwrite.reconcile_runs'::regclass "
                "AND attnum > 0 AND NOT attisdropped"
            )
        }
        missing = [ddl for column, ddl in HISTORY_MIGRATIONS.items() if column not in present]
        if missing:
            conn.execute("SET LOCAL lock_timeout = '5s'")
            for ddl in missing:
                conn.execute(ddl)


def record_run(target: Engine, result: ReconcileResult) -> int:
    """Append the run to ``dualwrite.reconcile_runs`` on the target (readiness reads it);
    returns its id. Creates or upgrades the table first (:func:`ensure_history`)."""
    tables = [
        {
            "target": t.target,
            "expected_rows": t.expected_rows,
            "target_rows": t.target_rows,
            "counts": dict(t.counts),
        }
        for t in result.tables
    ]
    with _connect(target) as conn:
        ensure_history(conn)
        row = conn.execute(
            "INSERT INTO dualwrite.reconcile_runs "
            "(migration, started_at, finished_at, status, counts, tables, caught_up) "
            "VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s) RETURNING id",
            (
                result.migration,
                result.started_at,
                result.finished_at,
                result.status,
                json.dumps(result.counts),
                json.dumps(tables),
                result.caught_up,
            ),
        ).fetchone()
    assert row is not None
    return int(row[0])


def read_history(
    target: Engine, migration: str, limit: int = HISTORY_RUNS
) -> tuple[RunRecord, ...]:
    """The last ``limit`` recorded runs of ``migration``, oldest first (empty when none or
    when the table does not exist yet). Thread-safe (its own connection)."""
    with _connect(target) as conn:
        exists = conn.execute("SELECT to_regclass('dualwrite.reconcile_runs')").fetchone()
        if exists is None or exists[0] is None:
            return ()
        present = {
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'dualwrite.reconcile_runs'::regclass "
                "AND attnum > 0 AND NOT attisdropped"
            )
        }
        # A reader never alters the table: columns an older install lacks read as defaults.
        tables = "tables" if "tables" in present else "'[]'::jsonb"
        caught_up = "caught_up" if "caught_up" in present else "NULL::boolean"
        rows = conn.execute(
            f"SELECT id, migration, started_at, finished_at, status, counts, {tables}, {caught_up} "
            "FROM (SELECT * FROM dualwrite.reconcile_runs WHERE migration = %s "
            "ORDER BY finished_at DESC, id DESC LIMIT %s) AS r ORDER BY finished_at, id",
            (migration, limit),
        ).fetchall()
    return tuple(
        RunRecord(
            id=int(r[0]),
            migration=r[1],
            started_at=r[2],
            finished_at=r[3],
            status=r[4],
            counts={str(k): int(v) for k, v in (r[5] or {}).items()},
            tables=tuple(
                TableRun(
                    str(t.get("target", "")),
                    int(t.get("expected_rows", 0)),
                    int(t.get("target_rows", 0)),
                    {str(k): int(v) for k, v in (t.get("counts") or {}).items()},
                )
                for t in (r[6] or [])
            ),
            caught_up=r[7],
        )
        for r in rows
    )


def to_html(result: ReconcileResult, history: Sequence[RunRecord] = ()) -> str:
    """A self-contained HTML page: status, the one-line summary, a per-table summary, the
    drift across ``history`` (one chart point per recorded run, oldest first; pass the
    history read after recording this run to include it), and a sample per category.

    Every value from the databases is escaped."""
    parts: list[str] = [
        f"<p>{badge(result.status)} &nbsp;finished {escape(f'{result.finished_at:%Y-%m-%d %H:%M:%S} UTC')}"
        f" in {escape(f'{(result.finished_at - result.started_at).total_seconds():.1f}')} s;"
        f" pipeline caught up: {'yes' if result.caught_up else 'no'}</p>",
        f'<p class="summary">{escape(summary_line(result))}</p>',
        "<h2>Tables</h2>",
        table_html(
            ["target", "expected rows", "target rows", *CATEGORIES],
            (
                [
                    Html(f"<code>{escape(t.target)}</code>"),
                    f"{t.expected_rows:,}",
                    f"{t.target_rows:,}",
                    *(f"{t.counts.get(c, 0):,}" for c in CATEGORIES),
                ]
                for t in result.tables
            ),
            numeric=range(1, 3 + len(CATEGORIES)),
            empty="no target tables",
        ),
        "<h2>Drift across runs</h2>",
        svg_history_chart(
            [
                ChartPoint(
                    label=f"{run.finished_at:%m-%d %H:%M}",
                    value=float(run.drift),
                    status=run.status,
                    tooltip=f"run {run.id}, {run.finished_at:%Y-%m-%d %H:%M:%S} UTC: {run.status}, "
                    + (
                        ", ".join(f"{k} {v}" for k, v in run.counts.items() if v)
                        or "no differences"
                    ),
                )
                for run in history
            ],
            title=f"drifting keys per run (last {len(history)} run(s))",
            y_label="drifting keys",
        ),
        "<h2>Samples per category</h2>",
    ]
    by_category: dict[str, list[Difference]] = {c: [] for c in CATEGORIES}
    for d in result.differences:
        if len(by_category[d.category]) < SAMPLE:
            by_category[d.category].append(d)
    counts = result.counts
    for category in CATEGORIES:
        if not counts[category]:
            continue
        shown = by_category[category]
        parts.append(f"<h3>{escape(category)} ({len(shown)} of {counts[category]:,})</h3>")
        parts.append(
            table_html(
                ["target", "key", "column", "expected", "actual", "detail"],
                (row for d in shown for row in _sample_rows(d)),
            )
        )
    if not any(counts.values()):
        parts.append("<p>No differences.</p>")
    parts.append(
        f"<footer>dualwrite reconcile report, schema_version {SCHEMA_VERSION}; "
        "every differing key is in the JSONL artifact (<code>--artifact</code>).</footer>"
    )
    return render_page(f"Reconcile report: {result.migration}", "\n".join(parts))


def _sample_rows(d: Difference) -> list[list[object]]:
    key = Html(f"<code>{escape(d.key)}</code>")
    if not d.columns:
        return [[d.target, key, "", "", "", d.detail]]
    return [
        [
            d.target,
            key,
            column,
            Html(f"<code>{escape(json.dumps(_jsonable(e), ensure_ascii=False))}</code>"),
            Html(f"<code>{escape(json.dumps(_jsonable(a), ensure_ascii=False))}</code>"),
            d.detail,
        ]
        for column, (e, a) in d.columns.items()
    ]
