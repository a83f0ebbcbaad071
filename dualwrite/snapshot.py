"""Reading source rows exactly as capture encodes them: shared by backfill and reconcile.

Rows are selected in key order in chunks (keyset pagination, one statement per chunk, hence
one consistent snapshot per chunk), encoded with the triggers' own ``row_to_json``
expression and decoded by the envelope decoders, so the stream, the backfill and reconcile
hand identical values to the transforms.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from dualwrite.capture._ddl import TableShape, qualified, row_image
from dualwrite.config import TableConfig
from dualwrite.envelope import EnvelopeError, _decode_row, decode_value, parse_json
from dualwrite.errors import DualwriteError

__all__ = [
    "TYPED_READ",
    "SnapshotError",
    "TypedChunks",
    "chunk_queries",
    "connect",
    "decode_image",
    "iter_rows",
    "source_shape",
    "typed_chunks",
]


class SnapshotError(DualwriteError):
    """A source table cannot be read (missing, no key)."""


def decode_image(image: str, types: dict[str, str]) -> dict[str, Any]:
    """A ``row_to_json`` text decoded to typed values (raises EnvelopeError)."""
    return _decode_row(parse_json(image), types)


def iter_rows(
    conn: psycopg.Connection[Any],
    shape: TableShape,
    chunk_rows: int = 5000,
    after: str | None = None,
) -> Iterator[list[tuple[str, str]]]:
    """Yield chunks of ``(key json, row image json)`` in key order, after key ``after``."""
    first, following = chunk_queries(shape, chunk_rows)
    last = after
    while True:
        rows = (
            conn.execute(first).fetchall()
            if last is None
            else conn.execute(following, (last,)).fetchall()
        )
        conn.commit()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def chunk_queries(
    shape: TableShape, chunk_rows: int, shard: int = 0, shards: int = 1
) -> tuple[sql.Composed, sql.Composed]:
    """The first-chunk and next-chunk queries (the latter takes the last key as JSON); each
    row is (key JSON text, ``row_to_json`` image text)."""
    selected = sql.SQL("{}, {}::text").format(_key_json(shape), row_image(shape, "t"))
    return _chunk_queries(shape, chunk_rows, shard, shards, selected)


def _key_json(shape: TableShape) -> sql.Composable:
    return sql.SQL("json_build_object({})::text").format(
        sql.SQL(", ").join(
            sql.SQL("{}, t.{}").format(sql.Literal(c), sql.Identifier(c)) for c in shape.key
        )
    )


def _chunk_queries(
    shape: TableShape, chunk_rows: int, shard: int, shards: int, selected: sql.Composable
) -> tuple[sql.Composed, sql.Composed]:
    keys = [sql.Identifier(c) for c in shape.key]
    t_keys = sql.SQL(", ").join(sql.SQL("t.{}").format(k) for k in keys)
    r_keys = sql.SQL(", ").join(sql.SQL("r.{}").format(k) for k in keys)
    only: sql.Composable = sql.SQL("TRUE")
    if shards > 1:
        only = sql.SQL("mod(abs(hashtextextended(json_build_array({})::text, 0)), {}) = {}").format(
            t_keys, sql.Literal(shards), sql.Literal(shard)
        )
    table = qualified(shape.source)
    select = sql.SQL("SELECT {selected} FROM {table} AS t").format(selected=selected, table=table)
    limit = sql.Literal(chunk_rows)
    first = sql.SQL("{select} WHERE {shard} ORDER BY {keys} LIMIT {limit}").format(
        select=select, shard=only, keys=t_keys, limit=limit
    )
    following = sql.SQL(
        "{select} WHERE ({t_keys}) > (SELECT {r_keys} FROM json_populate_record(NULL::{table}, %s::json) AS r) "
        "AND {shard} ORDER BY {keys} LIMIT {limit}"
    ).format(
        select=select,
        t_keys=t_keys,
        r_keys=r_keys,
        table=table,
        shard=only,
        keys=t_keys,
        limit=limit,
    )
    return first, following


TYPED_READ: dict[str, str] = {
    "smallint": "int2",
    "integer": "int4",
    "bigint": "int8",
    "numeric": "numeric",
    "double precision": "float8",
    "boolean": "bool",
    "text": "text",
    "character varying": "varchar",
    "character": "bpchar",
    "uuid": "uuid",
    "bytea": "bytea",
    "date": "date",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
}
"""Column types (regtype spelling -> the ``pg_catalog`` type the column is cast to, so a
domain over one loads as its base type) whose value psycopg loads in binary, on a
connection whose TimeZone is UTC, exactly as the envelope decoders decode the same column of
the same session's ``row_to_json``: same Python type, same value, same ``tzinfo`` (``tests/backfill/test_typed_read.py`` proves it
value by value). Left out on purpose: ``real`` (binary float4 widens to a different double than
its text), ``json`` / ``jsonb`` (exact text, ``Decimal`` numbers), ``time`` (``24:00``),
``interval`` and ``money`` (text in the envelope), arrays, enums and everything else."""


@dataclass(frozen=True)
class TypedChunks:
    """The chunk queries of one table reading its values typed (:data:`TYPED_READ` columns
    as themselves, the others as the JSON text of the value, decoded by the envelope decoders),
    each row ending with its key's JSON text (the ``last_key`` of :func:`chunk_queries`).

    A value psycopg cannot load (``infinity`` dates and timestamps, years beyond 9999) raises
    ``psycopg.DataError``; the caller reads that chunk again by :func:`chunk_queries`."""

    first: sql.Composed
    following: sql.Composed
    columns: tuple[str, ...]
    json_columns: tuple[tuple[str, str], ...]  # (column, type) read as JSON text

    def record(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """One fetched row as the envelope would decode it (raises EnvelopeError)."""
        record = dict(zip(self.columns, row, strict=False))  # the key text comes last
        for column, type_name in self.json_columns:
            text = record[column]
            if text is not None:
                try:
                    record[column] = decode_value(type_name, parse_json(text))
                except (ValueError, KeyError, ArithmeticError, TypeError) as exc:
                    raise EnvelopeError(f"column {column!r} ({type_name}): {exc}") from None
        return record


def typed_chunks(
    shape: TableShape, chunk_rows: int, shard: int = 0, shards: int = 1
) -> TypedChunks:
    """:func:`chunk_queries` reading values typed instead of as one ``row_to_json`` image
    (no JSON to build, fetch and parse per row); same rows, same order, same keys."""
    items: list[sql.Composable] = []
    json_columns: list[tuple[str, str]] = []
    for column, type_name in shape.types.items():
        ref = sql.SQL("t.{}").format(sql.Identifier(column))
        cast = TYPED_READ.get(type_name)
        if cast is not None:  # cast: a domain's column loads as its base type, not as bytes
            items.append(sql.SQL("{}::pg_catalog.{}").format(ref, sql.Identifier(cast)))
        else:
            items.append(
                sql.SQL("pg_catalog.to_json({})::pg_catalog.text").format(
                    sql.SQL("{}::pg_catalog.text").format(ref) if type_name == "json" else ref
                )
            )
            json_columns.append((column, type_name))
    selected = sql.SQL("{}, {}").format(sql.SQL(", ").join(items), _key_json(shape))
    first, following = _chunk_queries(shape, chunk_rows, shard, shards, selected)
    return TypedChunks(first, following, tuple(shape.types), tuple(json_columns))


def source_shape(src: psycopg.Connection[Any], table: TableConfig) -> TableShape:
    """The table's key and column types, read as capture install reads them."""
    relid = src.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (table.source.schema, table.source.name),
    ).fetchone()
    if relid is None:
        raise SnapshotError(f"source table {table.source} does not exist")
    columns = src.execute(
        "SELECT a.attname, COALESCE(NULLIF(t.typbasetype, 0), a.atttypid)::regtype::text "
        "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (relid[0],),
    ).fetchall()
    key = table.key
    if not key:
        pk = src.execute(
            "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = %s AND i.indisprimary",
            (relid[0],),
        ).fetchone()
        if pk is None or pk[0] is None:
            raise SnapshotError(f"{table.source} has no primary key and no declared key")
        key = tuple(pk[0])
    src.commit()
    return TableShape(table.source, int(relid[0]), tuple(key), {c: t for c, t in columns})


def connect(engine: Engine, name: str) -> psycopg.Connection[Any]:
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(
        url, options="-c timezone=UTC", application_name=name, connect_timeout=10
    )
