"""Installing, removing and inspecting trigger capture on the source database."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from sqlalchemy import Connection, Engine, text

from dualwrite.capture._ddl import (
    CHANGELOG,
    REGISTRY,
    RELAY_STATE,
    TableShape,
    create_schema_sql,
    create_triggers_sql,
    function_name,
    in_schema,
    qualified,
    source_label,
    trigger_function_sql,
    trigger_name,
    truncate_trigger_name,
)
from dualwrite.config import MigrationConfig, TableConfig
from dualwrite.errors import DualwriteError

log = logging.getLogger(__name__)

_SCHEMA_MARKER = "dualwrite capture schema (created by dualwrite capture install)"


class CaptureError(DualwriteError):
    """Capture cannot be installed, removed or used as asked; the message says which table and why."""


@dataclass(frozen=True)
class TableCaptureStatus:
    source: str
    mode: str
    installed: bool
    key: tuple[str, ...]
    trigger_enabled: bool
    schema_drift: tuple[str, ...]  # columns added, removed or retyped since install


@dataclass(frozen=True)
class CaptureStatus:
    schema: str
    installed: bool
    tables: tuple[TableCaptureStatus, ...]
    backlog: int
    oldest_unrelayed_age_s: float | None
    relayed_total: int
    last_relayed_at: str | None


def _exec(conn: Connection, statement: sql.Composable) -> None:
    """Run composed SQL on the connection's own psycopg connection (same transaction).

    No parameters are passed, so '%' inside quoted names or literals is never a placeholder.
    """
    raw: Any = conn.connection.dbapi_connection
    with raw.cursor() as cur:
        cur.execute(statement)


def _rows(conn: Connection, statement: sql.Composable) -> list[tuple[Any, ...]]:
    raw: Any = conn.connection.dbapi_connection
    with raw.cursor() as cur:
        cur.execute(statement)
        return list(cur.fetchall())


def _in(schema: str, name: str) -> sql.Composed:
    return in_schema(schema, name)


def inspect_table(conn: Connection, table: TableConfig) -> TableShape:
    """Read a source table's columns and key from the catalog; raise :class:`CaptureError`."""
    relid = conn.execute(
        text(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND c.relname = :t AND c.relkind IN ('r', 'p')"
        ),
        {"s": table.source.schema, "t": table.source.name},
    ).scalar()
    if relid is None:
        raise CaptureError(f"source table {table.source} does not exist (or is not a table)")
    columns = conn.execute(
        text(
            "SELECT a.attname, COALESCE(NULLIF(t.typbasetype, 0), a.atttypid)::regtype::text, a.attnotnull "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = :r AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
        ),
        {"r": relid},
    ).all()
    types = {name: type_name for name, type_name, _ in columns}
    not_null = {name for name, _, nn in columns if nn}
    unique_keys = [
        tuple(row[0])
        for row in conn.execute(
            text(
                "SELECT array_agg(a.attname ORDER BY k.ord), bool_or(i.indisprimary) "
                "FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                "WHERE i.indrelid = :r AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL "
                "GROUP BY i.indexrelid ORDER BY bool_or(i.indisprimary) DESC"
            ),
            {"r": relid},
        ).all()
    ]
    primary = conn.execute(
        text(
            "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = :r AND i.indisprimary"
        ),
        {"r": relid},
    ).scalar()
    if table.key:
        missing = [c for c in table.key if c not in types]
        if missing:
            raise CaptureError(f"{table.source}: key column(s) {', '.join(missing)} do not exist")
        nullable = [c for c in table.key if c not in not_null]
        if nullable:
            raise CaptureError(
                f"{table.source}: key column(s) {', '.join(nullable)} allow NULL; declare them NOT NULL"
            )
        if not any(set(u) == set(table.key) for u in unique_keys):
            raise CaptureError(
                f"{table.source}: no unique index covers exactly the key ({', '.join(table.key)}); "
                "without one, two writers could change the same key at once and per-key order "
                "could not be guaranteed"
            )
        key = table.key
    elif primary:
        key = tuple(primary)
    else:
        raise CaptureError(
            f"{table.source} has no primary key and the migration file declares no key columns; "
            "add a primary key or set `key = [...]` (columns of a unique index) for this table"
        )
    return TableShape(table.source, int(relid), key, types)


def install(engine: Engine, config: MigrationConfig) -> tuple[TableShape, ...]:
    """Create the capture schema, changelog and triggers for every table; idempotent.

    Everything happens in one transaction: either all tables are captured or none. Tables
    with ``capture = "outbox"`` are registered (so the relay knows their column types) but get
    no row trigger; TRUNCATE is refused on every captured table. Waits at most 10 s for table
    locks (raises :class:`CaptureError` naming the blocker otherwise).
    """
    schema = config.capture.schema
    shapes: list[TableShape] = []
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL lock_timeout = '10s'"))
        existed = conn.execute(
            text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}
        ).scalar()
        _exec(conn, create_schema_sql(schema))
        if not existed:
            _exec(
                conn,
                sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                    sql.Identifier(schema), sql.Literal(_SCHEMA_MARKER)
                ),
            )
        for table in config.tables:
            shape = inspect_table(conn, table)
            shapes.append(shape)
            if table.capture == "trigger":
                _exec(conn, trigger_function_sql(schema, shape))
            _exec(
                conn,
                create_triggers_sql(schema, shape)
                if table.capture == "trigger"
                else _truncate_only(schema, shape),
            )
            _exec(
                conn,
                sql.SQL(
                    "INSERT INTO {reg} (source_table, relid, mode, key_columns, types) "
                    "VALUES ({t}, {r}, {m}, {k}, {ty}::json) ON CONFLICT (source_table) DO UPDATE SET "
                    "relid = EXCLUDED.relid, mode = EXCLUDED.mode, key_columns = EXCLUDED.key_columns, "
                    "types = EXCLUDED.types, installed_at = now()"
                ).format(
                    reg=_in(schema, REGISTRY),
                    t=sql.Literal(source_label(shape.source)),
                    r=sql.Literal(shape.relid),
                    m=sql.Literal(table.capture),
                    k=sql.Literal(list(shape.key)),
                    ty=sql.Literal(json.dumps(shape.types)),
                ),
            )
            log.info(
                "capture installed on %s (%s, key %s)",
                shape.source,
                table.capture,
                ",".join(shape.key),
            )
    return tuple(shapes)


def _truncate_only(schema: str, shape: TableShape) -> sql.Composed:
    table = qualified(shape.source)
    return sql.SQL(
        "DROP TRIGGER IF EXISTS {trg} ON {table}; DROP TRIGGER IF EXISTS {trunc} ON {table}; "
        "CREATE TRIGGER {trunc} BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {refuse}();"
    ).format(
        trg=sql.Identifier(trigger_name(schema)),
        trunc=sql.Identifier(truncate_trigger_name(schema)),
        table=table,
        refuse=in_schema(schema, "refuse_truncate"),
    )


def uninstall(engine: Engine, config: MigrationConfig, force: bool = False) -> tuple[str, ...]:
    """Remove exactly what :func:`install` created; return the tables released.

    Refuses (:class:`CaptureError`) while the changelog still holds changes the relay has not
    published, unless ``force``: those changes would otherwise be lost. The schema itself is
    dropped only if install created it and nothing else lives in it. Idempotent.
    """
    schema = config.capture.schema
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL lock_timeout = '10s'"))
        registered = _rows(
            conn,
            sql.SQL("SELECT to_regclass({})").format(
                sql.Literal(_in(schema, REGISTRY).as_string(None))
            ),
        )[0][0]
        if registered is None:
            return ()
        backlog = _rows(conn, sql.SQL("SELECT count(*) FROM {}").format(_in(schema, CHANGELOG)))[0][
            0
        ]
        if backlog and not force:
            raise CaptureError(
                f"the changelog in schema {schema!r} still holds {backlog} change(s) not yet relayed "
                "to Kafka; run `dualwrite relay --until-idle` first, or pass --force to discard them"
            )
        rows = _rows(
            conn, sql.SQL("SELECT source_table, relid FROM {}").format(_in(schema, REGISTRY))
        )
        released: list[str] = []
        for label, relid in rows:
            exists = conn.execute(
                text("SELECT 1 FROM pg_class WHERE oid = :r"), {"r": relid}
            ).scalar()
            if exists:
                table_sql = sql.SQL("{}").format(
                    sql.SQL(
                        conn.execute(
                            text("SELECT CAST(:r AS regclass)::text"), {"r": relid}
                        ).scalar_one()
                    )
                )
                _exec(
                    conn,
                    sql.SQL(
                        "DROP TRIGGER IF EXISTS {} ON {}; DROP TRIGGER IF EXISTS {} ON {};"
                    ).format(
                        sql.Identifier(trigger_name(schema)),
                        table_sql,
                        sql.Identifier(truncate_trigger_name(schema)),
                        table_sql,
                    ),
                )
            _exec(
                conn,
                sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
                    in_schema(schema, function_name(int(relid)))
                ),
            )
            released.append(label)
        for name in (CHANGELOG, REGISTRY, RELAY_STATE):
            _exec(conn, sql.SQL("DROP TABLE IF EXISTS {}").format(in_schema(schema, name)))
        _exec(
            conn,
            sql.SQL("DROP FUNCTION IF EXISTS {}()").format(in_schema(schema, "refuse_truncate")),
        )
        marker = conn.execute(
            text(
                "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = :s"
            ),
            {"s": schema},
        ).scalar()
        if marker == _SCHEMA_MARKER:
            _exec(conn, sql.SQL("DROP SCHEMA {} RESTRICT").format(sql.Identifier(schema)))
        if backlog:
            log.warning(
                "capture uninstalled with --force: %d unrelayed change(s) discarded", backlog
            )
    return tuple(released)


def status(engine: Engine, config: MigrationConfig) -> CaptureStatus:
    """Report what is installed, schema drift per table, and the relay backlog."""
    schema = config.capture.schema
    with engine.connect() as conn:
        registered = _rows(
            conn,
            sql.SQL("SELECT to_regclass({})").format(
                sql.Literal(_in(schema, REGISTRY).as_string(None))
            ),
        )[0][0]
        if registered is None:
            tables = tuple(
                TableCaptureStatus(str(t.source), t.capture, False, t.key, False, ())
                for t in config.tables
            )
            return CaptureStatus(schema, False, tables, 0, None, 0, None)
        registry = {
            row[0]: row
            for row in _rows(
                conn,
                sql.SQL("SELECT source_table, relid, mode, key_columns, types FROM {}").format(
                    _in(schema, REGISTRY)
                ),
            )
        }
        out: list[TableCaptureStatus] = []
        for table in config.tables:
            label = source_label(table.source)
            row = registry.get(label)
            if row is None:
                out.append(TableCaptureStatus(label, table.capture, False, table.key, False, ()))
                continue
            enabled = bool(
                conn.execute(
                    text(
                        "SELECT tgenabled <> 'D' FROM pg_trigger WHERE tgrelid = :r AND tgname = :n"
                    ),
                    {"r": row[1], "n": trigger_name(schema)},
                ).scalar()
            )
            try:
                current = inspect_table(conn, table).types
            except CaptureError:
                current = {}
            registered_types: dict[str, str] = row[4]
            drift = tuple(
                sorted(
                    c
                    for c in set(current) | set(registered_types)
                    if current.get(c) != registered_types.get(c)
                )
            )
            out.append(TableCaptureStatus(label, row[2], True, tuple(row[3]), enabled, drift))
        backlog, oldest = _rows(
            conn,
            sql.SQL(
                "SELECT count(*), extract(epoch FROM clock_timestamp() - min(captured_at)) FROM {}"
            ).format(_in(schema, CHANGELOG)),
        )[0]
        relayed_total, last_at = _rows(
            conn,
            sql.SQL("SELECT relayed_total, last_relayed_at FROM {} WHERE id = 1").format(
                _in(schema, RELAY_STATE)
            ),
        )[0]
    return CaptureStatus(
        schema,
        True,
        tuple(out),
        int(backlog),
        float(oldest) if oldest is not None else None,
        int(relayed_total),
        last_at.isoformat() if last_at else None,
    )
