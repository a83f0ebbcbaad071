"""The outbox: applications that write the old schema record their changes themselves.

A service that prefers explicit dual-write calls :meth:`Outbox.record` after writing a row,
in the same transaction, on the same connection or session. The change record is built by
PostgreSQL from the row as it now stands, with the very expressions the triggers use, so the
envelope is identical to trigger capture and the relay publishes it the same way. The write
and the record commit or roll back together: nothing is lost between them.

Order: call ``record`` after the write. The write holds the row's lock until commit, so two
transactions recording the same key are serialised exactly as with triggers.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from psycopg import sql
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from dualwrite.capture._ddl import (
    CHANGELOG,
    REGISTRY,
    TableShape,
    in_schema,
    key_object,
    message_key,
    qualified,
    row_image,
    source_label,
)
from dualwrite.capture._install import CaptureError
from dualwrite.config import MigrationConfig, QualifiedName
from dualwrite.config import parse_qualified_name as _parse_name

__all__ = ["Outbox"]

_OPS = {"insert": "I", "update": "U", "delete": "D"}


class Outbox:
    """Records change events for tables registered by ``dualwrite capture install``.

    Thread-safe: the per-table shapes are cached behind a lock; each call uses the caller's
    connection and transaction.
    """

    def __init__(self, config: MigrationConfig) -> None:
        self._schema = config.capture.schema
        self._shapes: dict[QualifiedName, TableShape] = {}
        self._lock = threading.Lock()

    def record(
        self,
        conn: Connection | Session,
        table: str | QualifiedName,
        key: Mapping[str, Any],
        op: str,
    ) -> None:
        """Record that row ``key`` of ``table`` was inserted, updated or deleted.

        For insert and update the row must exist (it is read back inside the transaction);
        for delete it must not. Raises :class:`CaptureError` on a table not registered for
        capture, a wrong key, or a row in the wrong state; the caller's transaction should
        then roll back.
        """
        if op not in _OPS:
            raise CaptureError(f"op must be one of {', '.join(_OPS)}, got {op!r}")
        name = _parse_name(table) if isinstance(table, str) else table
        raw = _dbapi(conn)
        shape = self._shape(raw, name)
        if set(key) != set(shape.key):
            raise CaptureError(
                f"{name}: key must name exactly {', '.join(shape.key)}, got {', '.join(key)}"
            )
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{} = {}::{}").format(
                sql.Identifier(c), sql.Literal(key[c]), sql.SQL(_type_sql(shape.types[c]))
            )
            for c in shape.key
        )
        changelog = in_schema(self._schema, CHANGELOG)
        if op == "delete":
            values = sql.SQL(", ").join(
                sql.SQL("{}::{} AS {}").format(
                    sql.Literal(key[c]), sql.SQL(_type_sql(shape.types[c])), sql.Identifier(c)
                )
                for c in shape.key
            )
            statement = sql.SQL(
                "INSERT INTO {changelog} (source_table, op, key, msg_key, row_image, origin) "
                "SELECT {label}, 'D', {key}, {msg_key}, NULL, 'o' FROM (SELECT {values}) AS t "
                "WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {match})"
            ).format(
                changelog=changelog,
                label=sql.Literal(source_label(name)),
                key=key_object(shape, "t"),
                msg_key=message_key(shape, "t"),
                values=values,
                table=qualified(name),
                match=match,
            )
        else:
            statement = sql.SQL(
                "INSERT INTO {changelog} (source_table, op, key, msg_key, row_image, origin) "
                "SELECT {label}, {op}, {key}, {msg_key}, {row}, 'o' FROM {table} AS t WHERE {match}"
            ).format(
                changelog=changelog,
                label=sql.Literal(source_label(name)),
                op=sql.Literal(_OPS[op]),
                key=key_object(shape, "t"),
                msg_key=message_key(shape, "t"),
                row=row_image(shape, "t"),
                table=qualified(name),
                match=match,
            )
        with raw.cursor() as cur:
            cur.execute(statement)
            if cur.rowcount != 1:
                state = "still exists" if op == "delete" else "does not exist"
                raise CaptureError(f"{name}: cannot record {op} of {dict(key)}: the row {state}")

    def _shape(self, raw: Any, name: QualifiedName) -> TableShape:
        with self._lock:
            cached = self._shapes.get(name)
        if cached is not None:
            return cached
        with raw.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT relid, key_columns, types FROM {} WHERE source_table = {}").format(
                    in_schema(self._schema, REGISTRY), sql.Literal(source_label(name))
                )
            )
            row = cur.fetchone()
        if row is None:
            raise CaptureError(
                f"{name} is not registered for capture; run `dualwrite capture install`"
            )
        shape = TableShape(name, int(row[0]), tuple(row[1]), dict(row[2]))
        with self._lock:
            self._shapes[name] = shape
        return shape


def _type_sql(type_name: str) -> str:
    # regtype spellings come from the catalog, never from user input; they are valid SQL types.
    return type_name


def _dbapi(conn: Connection | Session) -> Any:
    connection = conn.connection() if isinstance(conn, Session) else conn
    raw = connection.connection.dbapi_connection
    if raw is None:
        raise CaptureError("the connection is closed")
    return raw
