"""Rendering a reconcile result (JSON, Markdown, a one-line summary, the JSONL artifact) and
keeping the run history on the target. Rendering never recomputes anything."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine

from reconcile._compare import CATEGORIES, ReconcileResult

SCHEMA_VERSION = 1
SAMPLE = 10

HISTORY_DDL = """
CREATE SCHEMA IF NOT EXISTS dualwrite;
CREATE TABLE IF NOT EXISTS dualwrite.reconcile_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    migration   text NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    status      text NOT NULL,
    counts      jsonb NOT NULL
);
"""


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
    }


def _difference(d: Any) -> dict[str, Any]:
    return {
        "target": d.target,
        "key": d.key,
        "category": d.category,
        "columns": {
            c: {"expected": _jsonable(e), "actual": _jsonable(a)} for c, (e, a) in d.columns.items()
        },
        "detail": d.detail,
    }


def write_artifact(result: ReconcileResult, path: Path) -> int:
    """Every differing key, one JSON object per line; returns the number written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for d in result.differences:
            fh.write(json.dumps(_difference(d), ensure_ascii=False) + "\n")
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


def record_run(target: Engine, result: ReconcileResult) -> None:
    """Append the run to ``dualwrite.reconcile_runs`` on the target (readiness reads it)."""
    url = target.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        conn.execute(HISTORY_DDL)
        conn.execute(
            "INSERT INTO dualwrite.reconcile_runs (migration, started_at, finished_at, status, counts) "
            "VALUES (%s, %s, %s, %s, %s::jsonb)",
            (
                result.migration,
                result.started_at,
                result.finished_at,
                result.status,
                json.dumps(result.counts),
            ),
        )
