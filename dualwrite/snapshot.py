"""Reading source rows exactly as capture encodes them: shared by backfill and reconcile.

Rows are selected in key order in chunks (keyset pagination, one statement per chunk, hence
one consistent snapshot per chunk), encoded with the triggers' own ``row_to_json``
expression and decoded by the envelope decoders, so the stream, the backfill and reconcile
hand identical values to the transforms.
"""

from __future__ import annotations

import json
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
    "key_sample",
    "row_estimate",
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
    shape: TableShape, chunk_rows: int, *, lower: bool = False, upper: bool = False
) -> tuple[sql.Composed, sql.Composed]:
    """The first-chunk and next-chunk queries (the latter takes the last key as JSON); each
    row is (key JSON text, ``row_to_json`` image text). With ``lower`` / ``upper`` they read
    one key range: the first query takes the range's lower key (inclusive), both take its
    upper key (exclusive) as their last parameter, as JSON like the last key."""
    selected = sql.SQL("{}, {}::text").format(_key_json(shape), row_image(shape, "t"))
    return _chunk_queries(shape, chunk_rows, selected, lower=lower, upper=upper)


def _key_json(shape: TableShape) -> sql.Composable:
    return sql.SQL("json_build_object({})::text").format(
        sql.SQL(", ").join(
            sql.SQL("{}, t.{}").format(sql.Literal(c), sql.Identifier(c)) for c in shape.key
        )
    )


def _chunk_queries(
    shape: TableShape, chunk_rows: int, selected: sql.Composable, *, lower: bool, upper: bool
) -> tuple[sql.Composed, sql.Composed]:
    keys = [sql.Identifier(c) for c in shape.key]
    t_keys = sql.SQL(", ").join(sql.SQL("t.{}").format(k) for k in keys)
    r_keys = sql.SQL(", ").join(sql.SQL("r.{}").format(k) for k in keys)
    table = qualified(shape.source)

    def compared(operator: str) -> sql.Composable:  # the key against a key given as JSON
        return sql.SQL(
            "({t_keys}) {op} (SELECT {r_keys} FROM json_populate_record(NULL::{table}, %s::json) AS r)"
        ).format(t_keys=t_keys, op=sql.SQL(operator), r_keys=r_keys, table=table)

    below = [compared("<")] if upper else []
    first_where = [compared(">="), *below] if lower else below
    following_where = [compared(">"), *below]
    select = sql.SQL("SELECT {selected} FROM {table} AS t").format(selected=selected, table=table)
    tail = sql.SQL("ORDER BY {keys} LIMIT {limit}").format(
        keys=t_keys, limit=sql.Literal(chunk_rows)
    )
    first = sql.SQL("{select} WHERE {where} {tail}").format(
        select=select, where=sql.SQL(" AND ").join(first_where or [sql.SQL("TRUE")]), tail=tail
    )
    following = sql.SQL("{select} WHERE {where} {tail}").format(
        select=select, where=sql.SQL(" AND ").join(following_where), tail=tail
    )
    return first, following


def row_estimate(conn: psycopg.Connection[Any], shape: TableShape) -> int:
    """The table's row count as its statistics estimate it (``pg_class.reltuples``; 0 before
    the first ANALYZE or VACUUM)."""
    row = conn.execute(
        "SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = %s", (shape.relid,)
    ).fetchone()
    conn.commit()
    return int(row[0]) if row else 0


def key_sample(conn: psycopg.Connection[Any], shape: TableShape, rows: int = 100_000) -> list[str]:
    """About ``rows`` keys of the table (all of them when it is not much larger; else a
    ``TABLESAMPLE SYSTEM`` sample of its pages), as key JSON texts in key order: where to cut
    the table into key ranges of about equal rows."""
    total = row_estimate(conn, shape)
    sample: sql.Composable = sql.SQL("")
    if total > 2 * rows:
        sample = sql.SQL(" TABLESAMPLE SYSTEM ({})").format(sql.Literal(100.0 * rows / total))
    keys = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in shape.key)
    found = conn.execute(
        sql.SQL("SELECT {json} FROM {table} AS t{sample} ORDER BY {keys}").format(
            json=_key_json(shape), table=qualified(shape.source), sample=sample, keys=keys
        )
    ).fetchall()
    conn.commit()
    return [r[0] for r in found]


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
    each row ending with its key's JSON text (the ``last_key`` of :func:`chunk_queries`)
    unless :meth:`last_key` writes it from the row's key values.

    A value psycopg cannot load (``infinity`` dates and timestamps, years beyond 9999) raises
    ``psycopg.DataError``; the caller reads that chunk again by :func:`chunk_queries`."""

    first: sql.Composed
    following: sql.Composed
    columns: tuple[str, ...]
    json_columns: tuple[tuple[str, str], ...]  # (column, type) read as JSON text
    key: tuple[str, ...]
    key_at: tuple[int, ...] | None  # the key columns' places; None: the row ends with its JSON

    def last_key(self, row: tuple[Any, ...]) -> str:
        """The key of a fetched row as JSON text, the parameter of :attr:`following`."""
        if self.key_at is None:
            return str(row[-1])
        return json.dumps(
            {c: row[i] for c, i in zip(self.key, self.key_at, strict=True)},
            default=str,
            ensure_ascii=False,
        )

    def record(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """One fetched row as the envelope would decode it (raises EnvelopeError)."""
        # not strict (the key's JSON may come last), and not ``strict=False`` either: passing
        # the keyword costs a quarter of a microsecond per row
        record = dict(zip(self.columns, row))  # noqa: B905
        for column, type_name in self.json_columns:
            text = record[column]
            if text is not None:
                try:
                    record[column] = decode_value(type_name, parse_json(text))
                except (ValueError, KeyError, ArithmeticError, TypeError) as exc:
                    raise EnvelopeError(f"column {column!r} ({type_name}): {exc}") from None
        return record


def typed_chunks(
    shape: TableShape, chunk_rows: int, *, lower: bool = False, upper: bool = False
) -> TypedChunks:
    """:func:`chunk_queries` reading values typed instead of as one ``row_to_json`` image
    (no JSON to build, fetch and parse per row); same rows, same order, same keys, same
    parameters."""
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
    columns = tuple(shape.types)
    key_at: tuple[int, ...] | None = None
    if all(shape.types[c] in _JSON_KEY_TYPES for c in shape.key):
        key_at = tuple(columns.index(c) for c in shape.key)
        selected: sql.Composable = sql.SQL(", ").join(items)
    else:
        selected = sql.SQL("{}, {}").format(sql.SQL(", ").join(items), _key_json(shape))
    first, following = _chunk_queries(shape, chunk_rows, selected, lower=lower, upper=upper)
    return TypedChunks(first, following, columns, tuple(json_columns), shape.key, key_at)


_JSON_KEY_TYPES = frozenset({"smallint", "integer", "bigint", "text", "character varying", "uuid"})
"""Key column types whose typed values Python writes as JSON that ``json_populate_record``
reads back to the same key (numbers, strings): the chunk queries of a table keyed by them
leave out the key's JSON, which the server would build for every row (half the server's
CPU of reading a chunk of the shop's orders: bench/RESULTS.md, issue 5 sixth run)."""


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
