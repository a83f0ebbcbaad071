"""Reading source rows exactly as capture encodes them: shared by backfill and reconcile.

Rows are selected in key order in chunks (keyset pagination, one statement per chunk, hence
one consistent snapshot per chunk), encoded with the triggers' own ``row_to_json``
expression and decoded by the envelope decoders, so the stream, the backfill and reconcile
hand identical values to the transforms.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from dualwrite.capture._ddl import TableShape, qualified, row_image
from dualwrite.config import TableConfig
from dualwrite.envelope import _decode_row, parse_json
from dualwrite.errors import DualwriteError

__all__ = ["SnapshotError", "chunk_queries", "connect", "decode_image", "iter_rows", "source_shape"]


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
    keys = [sql.Identifier(c) for c in shape.key]
    t_keys = sql.SQL(", ").join(sql.SQL("t.{}").format(k) for k in keys)
    r_keys = sql.SQL(", ").join(sql.SQL("r.{}").format(k) for k in keys)
    key_json = sql.SQL("json_build_object({})::text").format(
        sql.SQL(", ").join(
            sql.SQL("{}, t.{}").format(sql.Literal(c), sql.Identifier(c)) for c in shape.key
        )
    )
    """The first-chunk and next-chunk queries (the latter takes the last key as JSON)."""
    only: sql.Composable = sql.SQL("TRUE")
    if shards > 1:
        only = sql.SQL("mod(abs(hashtextextended(json_build_array({})::text, 0)), {}) = {}").format(
            t_keys, sql.Literal(shards), sql.Literal(shard)
        )
    table = qualified(shape.source)
    select = sql.SQL("SELECT {key_json}, {image}::text FROM {table} AS t").format(
        key_json=key_json, image=row_image(shape, "t"), table=table
    )
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
