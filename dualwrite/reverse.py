"""The rollback path: the same machinery in reverse, new tables -> old tables.

:func:`reverse_config` turns a migration around: its source is the new database and tables,
its target the old ones, its transforms the inverse transforms, and it has its own topics,
consumer group and capture schema, so both directions run side by side. Capture, relay,
worker, backfill and reconcile take the reversed config unchanged (``load_transforms``
builds the inverse registry for it). Changes applied by the toolkit are never captured again
(:mod:`dualwrite.origin`), so the two directions cannot feed each other.

:func:`round_trip_check` validates the inverses before cutover on a sample of old rows;
:func:`record_round_trip` keeps the outcome in ``dualwrite.roundtrip_checks`` on the target,
where the readiness gate reads it back with :func:`last_round_trip`. The order cutover does
things in, and why no change is lost or looped, is argued in ``docs/rollback.md``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from dualwrite import capture
from dualwrite.capture import CaptureStatus, TableShape
from dualwrite.capture._ddl import qualified, row_image
from dualwrite.config import CaptureConfig, KafkaConfig, MigrationConfig, QualifiedName, TableConfig
from dualwrite.db import make_engine
from dualwrite.envelope import EnvelopeError
from dualwrite.errors import DualwriteError
from dualwrite.snapshot import connect, decode_image, source_shape
from dualwrite.transform import (
    TargetOp,
    TargetSpec,
    TransformError,
    Transforms,
    inverse_transforms,
    key_text,
    load_transforms,
)
from reconcile import canonical

__all__ = [
    "REVERSE_SUFFIX",
    "ReverseError",
    "RoundTripFailure",
    "RoundTripRecord",
    "RoundTripReport",
    "TableRoundTrip",
    "install_reverse",
    "last_round_trip",
    "record_round_trip",
    "reverse_config",
    "reverse_status",
    "round_trip_check",
    "uninstall_reverse",
]

log = logging.getLogger(__name__)

REVERSE_SUFFIX = "reverse"
"""Appended to the topic prefix (``<prefix>.reverse``), the capture schema
(``<schema>_reverse``) and the migration name (``<name>-reverse``) of the rollback direction."""

ROUNDTRIP_DDL = """
CREATE SCHEMA IF NOT EXISTS dualwrite;
CREATE TABLE IF NOT EXISTS dualwrite.roundtrip_checks (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    checked_at   timestamptz NOT NULL DEFAULT now(),
    migration    text        NOT NULL,
    rows_checked int         NOT NULL,
    failures     int         NOT NULL,
    ok           boolean     NOT NULL,
    detail       jsonb       NOT NULL
);
"""

_MAX_EXAMPLES = 50  # failures (and normalised rows) kept per table in the recorded detail


class ReverseError(DualwriteError):
    """The rollback direction cannot be set up or checked as asked (the message says why)."""


# --- the reversed migration ------------------------------------------------------------------


def reverse_config(
    config: MigrationConfig, transforms: Transforms | None = None
) -> MigrationConfig:
    """The migration of the rollback direction: new tables -> old tables by the inverses.

    One table entry per target table of ``config``, keyed as the forward registry declares;
    topics under ``<prefix>.reverse`` (hence its own consumer group and dead-letter topic),
    capture schema ``<schema>_reverse``, name ``<name>-reverse``. ``transforms`` is the forward
    registry (loaded from ``config`` when omitted). Reversing a reversed config gives the
    forward one back. Raises :class:`~dualwrite.transform.TransformError` (or
    ``DeclaredTransformError``) naming the table or column whose inverse is missing.
    """
    if config.reverse_of is not None:
        return config.reverse_of
    forward = transforms if transforms is not None else load_transforms(config)
    inverse = inverse_transforms(forward, config)  # validates every inverse up front
    tables = []
    for label in sorted(inverse.sources):
        spec = forward.targets[label]
        rebuilds = sorted(inverse.sources[label].targets)
        tables.append(
            TableConfig(
                source=spec.table,
                target=_qualified(inverse, rebuilds[0]),
                key=spec.key,
                capture="trigger",
            )
        )
    return dataclasses.replace(
        config,
        name=f"{config.name}-{REVERSE_SUFFIX}",
        source=config.target,
        target=config.source,
        kafka=KafkaConfig(
            config.kafka.bootstrap_servers,
            f"{config.kafka.topic_prefix}.{REVERSE_SUFFIX}",
            config.kafka.client_id,
        ),
        tables=tuple(tables),
        capture=CaptureConfig(f"{config.capture.schema}_{REVERSE_SUFFIX}"),
        reverse_of=config,
    )


def _qualified(transforms: Transforms, label: str) -> QualifiedName:
    return transforms.targets[label].table


def _reversed(config: MigrationConfig) -> MigrationConfig:
    return config if config.is_reverse else reverse_config(config)


@contextmanager
def _engine(db: Any, given: Engine | None) -> Iterator[Engine]:
    if given is not None:
        yield given
        return
    engine = make_engine(db)
    try:
        yield engine
    finally:
        engine.dispose()


def install_reverse(
    config: MigrationConfig, engine: Engine | None = None
) -> tuple[TableShape, ...]:
    """Install reverse capture on the new tables (in the target database); idempotent.

    ``config`` is the forward migration (or its reversal); ``engine`` connects to the target
    database (built from the config when omitted). Rows the forward worker applies are not
    captured (they carry the toolkit's origin); application writes are. Raises
    :class:`~dualwrite.capture.CaptureError` as ``capture.install`` does.
    """
    reverse = _reversed(config)
    with _engine(reverse.source, engine) as e:
        return capture.install(e, reverse)


def uninstall_reverse(
    config: MigrationConfig, engine: Engine | None = None, *, force: bool = False
) -> tuple[str, ...]:
    """Remove reverse capture from the new tables; refuses while changes are unrelayed unless
    ``force`` (as ``capture.uninstall``). Idempotent."""
    reverse = _reversed(config)
    with _engine(reverse.source, engine) as e:
        return capture.uninstall(e, reverse, force=force)


def reverse_status(config: MigrationConfig, engine: Engine | None = None) -> CaptureStatus:
    """What reverse capture has installed on the new tables, and its relay backlog."""
    reverse = _reversed(config)
    with _engine(reverse.source, engine) as e:
        return capture.status(e, reverse)


# --- the round-trip check --------------------------------------------------------------------


@dataclass(frozen=True)
class RoundTripFailure:
    """One sampled old row whose round trip failed (or, in ``normalised``, changed it).

    ``columns``: old-table columns where the rebuilt row differs, as (old value, rebuilt
    value). ``target_columns``: new-table columns (``table.column``) where the forward
    transform of the rebuilt row differs from that of the old row, as (new value from the old
    row, new value from the rebuilt row). ``detail`` says what went wrong in words.
    """

    table: str
    key: str
    columns: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    target_columns: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    detail: str = ""


@dataclass(frozen=True)
class TableRoundTrip:
    """Counts for one old table: sampled rows, failures, rows rebuilt in normalised form
    (they map to the same new rows), rows the transform filters out (nothing to invert)."""

    table: str
    rows_checked: int
    failures: int
    normalised: int
    filtered: int


@dataclass(frozen=True)
class RoundTripReport:
    """The outcome of :func:`round_trip_check`.

    A row fails when its round trip (old row -> transform -> inverse -> rebuilt old row)
    loses or corrupts information the new schema holds: the transform of the rebuilt row
    differs from the transform of the old row, the inverse rebuilds no row, or a transform
    raises. With ``strict``, a rebuilt row that differs from the old row at all fails too;
    otherwise such rows are ``normalised`` (e.g. an e-mail written back lower-cased).
    """

    migration: str
    checked_at: dt.datetime
    sample: int
    strict: bool
    tables: tuple[TableRoundTrip, ...]
    failures: tuple[RoundTripFailure, ...]
    normalised: tuple[RoundTripFailure, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def rows_checked(self) -> int:
        return sum(t.rows_checked for t in self.tables)

    def evidence(self) -> dict[str, Any]:
        """A JSON-able summary: counts per table and up to 50 examples per table of failures
        and normalised rows (the ``detail`` column of ``dualwrite.roundtrip_checks``)."""
        return {
            "schema_version": 1,
            "migration": self.migration,
            "checked_at": self.checked_at.isoformat(),
            "sample": self.sample,
            "strict": self.strict,
            "ok": self.ok,
            "rows_checked": self.rows_checked,
            "tables": [dataclasses.asdict(t) for t in self.tables],
            "failures": _examples(self.failures),
            "normalised": _examples(self.normalised),
        }


@dataclass(frozen=True)
class RoundTripRecord:
    """One row of ``dualwrite.roundtrip_checks``."""

    id: int
    checked_at: dt.datetime
    migration: str
    rows_checked: int
    failures: int
    ok: bool
    detail: Mapping[str, Any]


def round_trip_check(
    config: MigrationConfig,
    sample: int = 1000,
    *,
    source: Engine | None = None,
    target: Engine | None = None,
    transforms: Transforms | None = None,
    strict: bool = False,
) -> RoundTripReport:
    """Check the inverse transforms on up to ``sample`` random rows of each old table.

    ``config`` is the forward migration; ``source``/``target`` connect to its databases (built
    from the config when omitted; the target is read for the new tables' column types only);
    ``transforms`` is the forward registry (loaded when omitted). Values are compared in
    reconcile's canonical form. Reads only; raises :class:`ReverseError` for a reversed
    config or a negative sample, ``TransformError`` when an inverse is missing.
    """
    if config.is_reverse:
        raise ReverseError("round_trip_check takes the forward migration, not its reversal")
    if sample < 0:
        raise ReverseError(f"sample must be 0 or more, got {sample}")
    forward = transforms if transforms is not None else load_transforms(config)
    inverse = inverse_transforms(forward, config)
    checked_at = dt.datetime.now(dt.UTC)
    tables: list[TableRoundTrip] = []
    failures: list[RoundTripFailure] = []
    normalised: list[RoundTripFailure] = []
    with _engine(config.source, source) as s, _engine(config.target, target) as t:
        src, dst = connect(s, "dualwrite-roundtrip"), connect(t, "dualwrite-roundtrip")
        try:
            checker = _Checker(forward, inverse, dst, strict)
            for table in config.tables:
                shape = source_shape(src, table)
                counts = dict.fromkeys(("rows", "failures", "normalised", "filtered"), 0)
                for key_json, image in _sample_rows(src, shape, sample):
                    counts["rows"] += 1
                    outcome, found = checker.check(shape, key_json, image)
                    if outcome != "ok":
                        counts[outcome] += 1
                    if outcome == "failures" and found is not None:
                        failures.append(found)
                    elif outcome == "normalised" and found is not None:
                        normalised.append(found)
                tables.append(
                    TableRoundTrip(
                        str(table.source),
                        counts["rows"],
                        counts["failures"],
                        counts["normalised"],
                        counts["filtered"],
                    )
                )
        finally:
            src.close()
            dst.close()
    report = RoundTripReport(
        config.name, checked_at, sample, strict, tuple(tables), tuple(failures), tuple(normalised)
    )
    log.info(
        "round trip of %d row(s): %d failure(s), %d normalised",
        report.rows_checked,
        len(report.failures),
        len(report.normalised),
    )
    return report


def _sample_rows(
    conn: psycopg.Connection[Any], shape: TableShape, sample: int
) -> list[tuple[str, str]]:
    """Up to ``sample`` random rows as ``(key json, row image)``, encoded as capture encodes
    them. Large tables are block-sampled first (``TABLESAMPLE SYSTEM``) so the sort stays
    small; the sample is then random blocks' rows, not uniformly random rows."""
    if sample == 0:
        return []
    estimate = conn.execute(
        "SELECT reltuples FROM pg_class WHERE oid = %s", (shape.relid,)
    ).fetchone()
    rows = float(estimate[0]) if estimate else -1.0
    tablesample: sql.Composable = sql.SQL("")
    if rows > 20 * sample:
        percent = min(100.0, 400.0 * sample / rows)
        tablesample = sql.SQL("TABLESAMPLE SYSTEM ({})").format(sql.Literal(percent))
    key_json = sql.SQL("json_build_object({})::text").format(
        sql.SQL(", ").join(
            sql.SQL("{}, t.{}").format(sql.Literal(c), sql.Identifier(c)) for c in shape.key
        )
    )
    query = sql.SQL(
        "SELECT {kj}, {img}::text FROM {t} AS t {ts} ORDER BY random() LIMIT {n}"
    ).format(
        kj=key_json,
        img=row_image(shape, "t"),
        t=qualified(shape.source),
        ts=tablesample,
        n=sql.Literal(sample),
    )
    found = conn.execute(query).fetchall()
    conn.commit()
    return [(r[0], r[1]) for r in found]


class _Checker:
    """Round-trips single rows; caches the new tables' column types."""

    def __init__(
        self, forward: Transforms, inverse: Transforms, dst: psycopg.Connection[Any], strict: bool
    ) -> None:
        self.forward = forward
        self.inverse = inverse
        self.dst = dst
        self.strict = strict
        self._types: dict[str, dict[str, str]] = {}

    def check(
        self, shape: TableShape, key_json: str, image: str
    ) -> tuple[str, RoundTripFailure | None]:
        """("ok" | "failures" | "normalised" | "filtered", the failure or normalised row)."""
        label = str(shape.source)
        shown = json.dumps(json.loads(key_json), separators=(",", ":"), ensure_ascii=False)
        try:
            row = decode_image(image, shape.types)
            ops = self._forward(label, shape, row)
        except (EnvelopeError, TransformError) as exc:
            return "failures", RoundTripFailure(label, shown, detail=f"transform failed: {exc}")
        if not any(op.values is not None for op in ops):
            return "filtered", None
        try:
            rebuilt = self._rebuild(label, row, ops)
        except TransformError as exc:
            return "failures", RoundTripFailure(label, shown, detail=f"inverse failed: {exc}")
        if rebuilt is None:
            return "failures", RoundTripFailure(
                label, shown, detail=f"the inverse rebuilds no {label} row for this key"
            )
        columns = {
            c: (row.get(c), v)
            for c, v in rebuilt.items()
            if canonical(shape.types.get(c, ""), row.get(c)) != canonical(shape.types.get(c, ""), v)
        }
        again = {**row, **rebuilt}
        try:
            ops_again = self._forward(label, shape, again)
        except TransformError as exc:
            return "failures", RoundTripFailure(
                label, shown, columns, detail=f"transform of the rebuilt row failed: {exc}"
            )
        target_columns = self._target_diff(ops, ops_again)
        if target_columns:
            return "failures", RoundTripFailure(
                label,
                shown,
                columns,
                target_columns,
                "the rebuilt row maps to different new rows: the inverse loses or alters data",
            )
        if columns:
            found = RoundTripFailure(
                label, shown, columns, detail="rebuilt in normalised form (same new rows)"
            )
            return ("failures" if self.strict else "normalised"), found
        return "ok", None

    def _forward(self, label: str, shape: TableShape, row: Mapping[str, Any]) -> list[TargetOp]:
        return self.forward.apply(label, "read", {c: row[c] for c in shape.key}, row, 0)

    def _rebuild(
        self, label: str, row: Mapping[str, Any], ops: list[TargetOp]
    ) -> dict[str, Any] | None:
        """The old row as the inverses of its new rows rebuild it (merged over all of them)."""
        spec = self.inverse.targets[label]
        want = key_text(tuple(row[c] for c in spec.key))
        rebuilt: dict[str, Any] | None = None
        for op in ops:
            if op.values is None:
                continue
            target = str(op.target)
            values = {**_blank(self.forward.targets[target]), **op.values}
            key = {c: values[c] for c in self.forward.targets[target].key}
            for back in self.inverse.apply(target, "read", key, values, 0):
                if str(back.target) == label and back.values is not None and back.key_text == want:
                    rebuilt = {**(rebuilt or {}), **back.values}
        return rebuilt

    def _target_diff(
        self, before: list[TargetOp], after: list[TargetOp]
    ) -> dict[str, tuple[Any, Any]]:
        one = {(str(op.target), op.key_text): op.values for op in before}
        two = {(str(op.target), op.key_text): op.values for op in after}
        diff: dict[str, tuple[Any, Any]] = {}
        for ident in sorted(one.keys() | two.keys()):
            target, key = ident
            a, b = one.get(ident), two.get(ident)
            if a is None or b is None:
                if a is not b:
                    diff[f"{target} {key}"] = (a is not None, b is not None)
                continue
            types = self._target_types(target)
            for c in sorted(a.keys() | b.keys()):
                t = types.get(c, "")
                if canonical(t, a.get(c)) != canonical(t, b.get(c)):
                    diff[f"{target}.{c}"] = (a.get(c), b.get(c))
        return diff

    def _target_types(self, target: str) -> dict[str, str]:
        types = self._types.get(target)
        if types is None:
            name = self.forward.targets[target].table
            rows = self.dst.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
                (qualified(name).as_string(None),),
            ).fetchall()
            self.dst.commit()
            types = {r[0]: r[1] for r in rows}
            self._types[target] = types
        return types


def _blank(spec: TargetSpec) -> dict[str, Any]:
    """A merged new row starts with every owned column NULL, as the applier leaves it."""
    if not spec.owners:
        return {}
    return {c: None for cols in spec.owners.values() for c in cols}


def _examples(found: tuple[RoundTripFailure, ...]) -> list[dict[str, Any]]:
    per_table: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for f in found:
        per_table[f.table] = per_table.get(f.table, 0) + 1
        if per_table[f.table] > _MAX_EXAMPLES:
            continue
        out.append(
            {
                "table": f.table,
                "key": f.key,
                "columns": {c: [_jsonable(a), _jsonable(b)] for c, (a, b) in f.columns.items()},
                "target_columns": {
                    c: [_jsonable(a), _jsonable(b)] for c, (a, b) in f.target_columns.items()
                },
                "detail": f.detail,
            }
        )
    return out


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


# --- the record the readiness gate reads ---------------------------------------------------


def record_round_trip(
    config: MigrationConfig, report: RoundTripReport, *, target: Engine | None = None
) -> RoundTripRecord:
    """Append ``report`` to ``dualwrite.roundtrip_checks`` on the target database (created
    when missing) and return the stored row."""
    forward = config.reverse_of or config
    detail = report.evidence()
    with _engine(forward.target, target) as t, _psycopg(t) as conn:
        conn.execute(ROUNDTRIP_DDL)
        row = conn.execute(
            "INSERT INTO dualwrite.roundtrip_checks "
            "(checked_at, migration, rows_checked, failures, ok, detail) "
            "VALUES (%s, %s, %s, %s, %s, %s::jsonb) "
            "RETURNING id, checked_at, migration, rows_checked, failures, ok, detail",
            (
                report.checked_at,
                report.migration,
                report.rows_checked,
                len(report.failures),
                report.ok,
                json.dumps(detail),
            ),
        ).fetchone()
    assert row is not None
    return RoundTripRecord(*row)


def last_round_trip(
    config: MigrationConfig, *, target: Engine | None = None
) -> RoundTripRecord | None:
    """The newest recorded round-trip check of this migration, or None if there is none."""
    forward = config.reverse_of or config
    with _engine(forward.target, target) as t, _psycopg(t) as conn:
        exists = conn.execute("SELECT to_regclass('dualwrite.roundtrip_checks')").fetchone()
        if exists is None or exists[0] is None:
            return None
        row = conn.execute(
            "SELECT id, checked_at, migration, rows_checked, failures, ok, detail "
            "FROM dualwrite.roundtrip_checks WHERE migration = %s "
            "ORDER BY checked_at DESC, id DESC LIMIT 1",
            (forward.name,),
        ).fetchone()
    return None if row is None else RoundTripRecord(*row)


@contextmanager
def _psycopg(engine: Engine) -> Iterator[psycopg.Connection[Any]]:
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, options="-c timezone=UTC", connect_timeout=10) as conn:
        yield conn
