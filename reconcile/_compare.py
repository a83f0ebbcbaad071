"""The transform-aware diff: what the target should hold (the transform of the source)
against what it holds, classified, with in-flight differences re-checked.

Memory: the expected side of one target table is held in memory (keyed by target key) while
the target is streamed in chunks; segment checksums inside the database are future work
(``docs/reconcile.md``).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from dualwrite.config import MigrationConfig, QualifiedName
from dualwrite.envelope import EnvelopeError
from dualwrite.kafka_io import group_lag
from dualwrite.snapshot import connect, decode_image, iter_rows, source_shape
from dualwrite.transform import TargetSpec, TransformError, Transforms, key_text
from dualwrite.worker import consumer_group
from reconcile._canonical import canonical

CATEGORIES = ("missing", "extra", "mismatch", "transform_error", "in_flight", "unverified")
DRIFT = ("missing", "extra", "mismatch", "transform_error")


@dataclass(frozen=True)
class Difference:
    target: str
    key: str
    category: str
    columns: Mapping[str, tuple[Any, Any]] = field(
        default_factory=dict
    )  # col -> (expected, actual)
    detail: str = ""


@dataclass(frozen=True)
class TableSummary:
    target: str
    expected_rows: int
    target_rows: int
    counts: Mapping[str, int]


@dataclass(frozen=True)
class ReconcileResult:
    """The outcome of one run. ``status``: clean, drift or incomplete."""

    migration: str
    started_at: dt.datetime
    finished_at: dt.datetime
    tables: tuple[TableSummary, ...]
    differences: tuple[Difference, ...]
    caught_up: bool

    @property
    def counts(self) -> dict[str, int]:
        total: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
        for d in self.differences:
            total[d.category] += 1
        return total

    @property
    def status(self) -> str:
        counts = self.counts
        if any(counts[c] for c in DRIFT):
            return "drift"
        if counts["unverified"]:
            return "incomplete"
        return "clean"


Expected = dict[str, dict[str, Any]]  # key text -> {column: python value}


def reconcile(
    source: Engine,
    target: Engine,
    config: MigrationConfig,
    transforms: Transforms,
    *,
    chunk_rows: int = 5000,
    wait_s: float = 60.0,
    progress: Callable[[str, int], None] | None = None,
    stop: threading.Event | None = None,
) -> ReconcileResult:
    """Compare the transform of every source table with the target; classify every difference.

    A difference is re-checked once the pipeline has caught up with the source position seen
    when the read began (waiting at most ``wait_s``): if it is gone it was in flight; if the
    pipeline did not catch up in time it is reported as unverified (status incomplete).
    """
    started = dt.datetime.now(dt.UTC)
    src, dst = connect(source, "dualwrite-reconcile"), connect(target, "dualwrite-reconcile")
    try:
        position = _source_position(src, config)
        expected, errors = _expected(src, config, transforms, chunk_rows, progress)
        summaries: list[TableSummary] = []
        candidates: list[Difference] = list(errors)
        for target_name in sorted(expected):
            spec = transforms.targets[target_name]
            diffs, target_rows = _diff_table(dst, spec, expected[target_name], chunk_rows)
            candidates.extend(diffs)
            summaries.append(TableSummary(target_name, len(expected[target_name]), target_rows, {}))
        if config.reverse_of is not None:
            from reconcile._unmigrated import drop_unmigrated  # here: it imports this module

            candidates = drop_unmigrated(dst, config, transforms, candidates)
        final: list[Difference] = [d for d in candidates if d.category == "transform_error"]
        recheck = [d for d in candidates if d.category != "transform_error"]
        caught_up = True
        if recheck:
            caught_up = _wait_for_pipeline(src, config, position, wait_s, stop or threading.Event())
            final.extend(_recheck(src, dst, config, transforms, recheck, caught_up))
    finally:
        src.close()
        dst.close()
    by_target: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(CATEGORIES, 0))
    for d in final:
        by_target[d.target][d.category] += 1
    tables = tuple(
        TableSummary(
            s.target,
            s.expected_rows,
            s.target_rows,
            by_target.get(s.target, dict.fromkeys(CATEGORIES, 0)),
        )
        for s in summaries
    )
    return ReconcileResult(
        config.name, started, dt.datetime.now(dt.UTC), tables, tuple(final), caught_up
    )


def _expected(
    src: psycopg.Connection[Any],
    config: MigrationConfig,
    transforms: Transforms,
    chunk_rows: int,
    progress: Callable[[str, int], None] | None,
) -> tuple[dict[str, Expected], list[Difference]]:
    expected: dict[str, Expected] = defaultdict(dict)
    errors: list[Difference] = []
    for table in config.tables:
        shape = source_shape(src, table)
        label = str(table.source)
        for st in [transforms.sources[label]] if label in transforms.sources else []:
            for target in st.targets:
                expected.setdefault(target, {})
        done = 0
        for chunk in iter_rows(src, shape, chunk_rows):
            for key_json, image in chunk:
                _add(expected, errors, transforms, label, shape.key, key_json, image, shape.types)
            done += len(chunk)
            if progress is not None:
                progress(label, done)
    return expected, errors


def _add(
    expected: dict[str, Expected],
    errors: list[Difference],
    transforms: Transforms,
    label: str,
    key_cols: tuple[str, ...],
    key_json: str,
    image: str,
    types: dict[str, str],
) -> None:
    try:
        row = decode_image(image, types)
        ops = transforms.apply(label, "read", {c: row[c] for c in key_cols}, row, 0)
    except (EnvelopeError, TransformError) as exc:
        source_key = json.dumps(json.loads(key_json), separators=(",", ":"), ensure_ascii=False)
        errors.append(Difference(label, source_key, "transform_error", detail=str(exc)))
        return
    for op in ops:
        if op.values is None:
            continue  # filtered out of this target
        target = str(op.target)
        spec = transforms.targets[target]
        row_values = expected[target].setdefault(op.key_text, _blank(spec))
        row_values.update(op.values)


def _blank(spec: TargetSpec) -> dict[str, Any]:
    """A merged row starts with every owned column NULL (an absent owner contributes NULLs)."""
    if not spec.owners:
        return {}
    return {c: None for cols in spec.owners.values() for c in cols}


def _target_types(dst: psycopg.Connection[Any], table: QualifiedName) -> dict[str, str]:
    rows = dst.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        (
            sql.SQL("{}.{}")
            .format(sql.Identifier(table.schema), sql.Identifier(table.name))
            .as_string(None),
        ),
    ).fetchall()
    dst.commit()
    return {r[0]: r[1] for r in rows}


def _columns(spec: TargetSpec, expected: Expected) -> list[str]:
    cols: list[str] = list(spec.key)
    seen = set(cols)
    for values in expected.values():
        for c in values:
            if c not in seen:
                seen.add(c)
                cols.append(c)
    if spec.owners:
        for owned in spec.owners.values():
            for c in owned:
                if c not in seen:
                    seen.add(c)
                    cols.append(c)
    return cols


def _compare(
    types: Mapping[str, str],
    columns: Iterable[str],
    want: Mapping[str, Any],
    got: Mapping[str, Any],
) -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    for c in columns:
        t = types.get(c, "text")
        if canonical(t, want.get(c)) != canonical(t, got.get(c)):
            out[c] = (want.get(c), got.get(c))
    return out


def _diff_table(
    dst: psycopg.Connection[Any], spec: TargetSpec, expected: Expected, chunk_rows: int
) -> tuple[list[Difference], int]:
    types = _target_types(dst, spec.table)
    columns = [c for c in _columns(spec, expected) if c in types]
    target_name = str(spec.table)
    seen: set[str] = set()
    diffs: list[Difference] = []
    rows = 0
    query = sql.SQL("SELECT {} FROM {}.{}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.Identifier(spec.table.schema),
        sql.Identifier(spec.table.name),
    )
    with dst.transaction(), dst.cursor(name="dualwrite_reconcile") as cur:
        cur.itersize = chunk_rows
        cur.execute(query)
        for record in cur:
            rows += 1
            got = dict(zip(columns, record, strict=True))
            key = key_text(tuple(got[c] for c in spec.key))
            seen.add(key)
            want = expected.get(key)
            if want is None:
                diffs.append(Difference(target_name, key, "extra"))
                continue
            changed = _compare(types, [c for c in columns if c in want], want, got)
            if changed:
                diffs.append(Difference(target_name, key, "mismatch", changed))
    for key in expected.keys() - seen:
        diffs.append(Difference(target_name, key, "missing"))
    return diffs, rows


def _source_position(src: psycopg.Connection[Any], config: MigrationConfig) -> int | None:
    """The changelog sequence's last value: every change committed before now is <= it."""
    row = src.execute(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence(%s, 'seq'))",
        (sql.SQL("{}.changelog").format(sql.Identifier(config.capture.schema)).as_string(None),),
    ).fetchone()
    src.commit()
    return None if row is None or row[0] is None else int(row[0])


def _wait_for_pipeline(
    src: psycopg.Connection[Any],
    config: MigrationConfig,
    position: int | None,
    wait_s: float,
    stop: threading.Event,
) -> bool:
    """Wait until the relay has published every change up to ``position`` and the workers have
    consumed everything published; False if ``wait_s`` ran out."""
    deadline = time.monotonic() + wait_s
    backlog = sql.SQL("SELECT count(*) FROM {}.changelog WHERE seq <= %s").format(
        sql.Identifier(config.capture.schema)
    )
    relayed = position is None
    while time.monotonic() < deadline and not stop.is_set():
        if not relayed:
            row = src.execute(backlog, (position,)).fetchone()
            src.commit()
            relayed = row is not None and row[0] == 0
        if relayed:
            offsets = group_lag(
                config.kafka.bootstrap_servers, consumer_group(config), config.changes_topic
            )
            if all(
                end == 0 or (committed is not None and committed >= end)
                for end, committed in offsets.values()
            ):
                return True
        stop.wait(0.5)
    return False


def _recheck(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    config: MigrationConfig,
    transforms: Transforms,
    candidates: list[Difference],
    caught_up: bool,
) -> list[Difference]:
    """Recompute both sides for each candidate key; persistent differences are drift."""
    if not caught_up:
        return [
            Difference(d.target, d.key, "unverified", d.columns, f"was {d.category}")
            for d in candidates
        ]
    out: list[Difference] = []
    shapes = {str(t.source): source_shape(src, t) for t in config.tables}
    for d in candidates:
        spec = transforms.targets[d.target]
        key_values = dict(zip(spec.key, json.loads(d.key), strict=True))
        expected: dict[str, Expected] = defaultdict(dict)
        errors: list[Difference] = []
        for label, st in transforms.sources.items():
            mapping = st.targets.get(d.target)
            if mapping is None or label not in shapes:
                continue
            shape = shapes[label]
            source_key = {mapping[c]: v for c, v in key_values.items()}
            if set(source_key) != set(shape.key):
                continue
            for key_json, image in _source_row(src, shape, source_key):
                _add(expected, errors, transforms, label, shape.key, key_json, image, shape.types)
        want = expected.get(d.target, {}).get(d.key)
        got = _target_row(dst, spec, key_values)
        types = _target_types(dst, spec.table)
        changed: dict[str, tuple[Any, Any]] = {}
        if want is None and got is None:
            category = "in_flight"
        elif want is None:
            category = "extra"
        elif got is None:
            category = "missing"
        else:
            changed = _compare(types, [c for c in want if c in types], want, got)
            category = "mismatch" if changed else "in_flight"
        if category == "in_flight":
            out.append(
                Difference(
                    d.target,
                    d.key,
                    "in_flight",
                    d.columns,
                    f"was {d.category}; gone after catching up",
                )
            )
        else:
            out.append(Difference(d.target, d.key, category, changed))
    return out


def _source_row(
    src: psycopg.Connection[Any], shape: Any, key: Mapping[str, Any]
) -> list[tuple[str, str]]:
    from dualwrite.capture._ddl import qualified, row_image

    keys = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in shape.key)
    r_keys = sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in shape.key)
    key_json = sql.SQL("json_build_object({})::text").format(
        sql.SQL(", ").join(
            sql.SQL("{}, t.{}").format(sql.Literal(c), sql.Identifier(c)) for c in shape.key
        )
    )
    table = qualified(shape.source)
    query = sql.SQL(
        "SELECT {kj}, {img}::text FROM {t} AS t WHERE ({k}) = (SELECT {rk} FROM json_populate_record(NULL::{t}, %s::json) AS r)"
    ).format(kj=key_json, img=row_image(shape, "t"), t=table, k=keys, rk=r_keys)
    rows = src.execute(query, (json.dumps(dict(key), default=str),)).fetchall()
    src.commit()
    return [(r[0], r[1]) for r in rows]


def _target_row(
    dst: psycopg.Connection[Any], spec: TargetSpec, key: Mapping[str, Any]
) -> dict[str, Any] | None:
    match = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in spec.key)
    query = sql.SQL("SELECT * FROM {}.{} WHERE {}").format(
        sql.Identifier(spec.table.schema), sql.Identifier(spec.table.name), match
    )
    with dst.cursor() as cur:
        cur.execute(query, [key[c] for c in spec.key])
        row = cur.fetchone()
        names = [d.name for d in cur.description or []]
    dst.commit()
    return None if row is None else dict(zip(names, row, strict=True))
