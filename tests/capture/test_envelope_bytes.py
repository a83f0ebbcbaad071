"""The relay builds each envelope in Python from the changelog's columns; the bytes must be
exactly what PostgreSQL's ``json_build_object`` wrote when the envelope was built in SQL
(the format docs/envelope.md documents, which workers and stored topics rely on)."""

from __future__ import annotations

import pytest
from psycopg import sql
from sqlalchemy import Engine, text

from dualwrite import capture
from dualwrite.capture import Outbox
from dualwrite.capture._ddl import CHANGELOG, REGISTRY, in_schema
from tests.capture.helpers import drain, messages

pytestmark = pytest.mark.integration

# The relay's batch statement before the envelope moved to Python, as the reference.
REFERENCE_SQL = """
SELECT c.seq, c.msg_key, json_build_object(
    'schema_version', 1,
    'source', c.source_table,
    'op', CASE c.op WHEN 'I' THEN 'insert' WHEN 'U' THEN 'update' WHEN 'D' THEN 'delete' ELSE 'read' END,
    'key', c.key,
    'row', c.row_image,
    'types', (SELECT r.types FROM {registry} AS r WHERE r.source_table = c.source_table),
    'version', c.seq,
    'txid', c.txid::text,
    'ts', c.captured_at,
    'origin', CASE c.origin WHEN 't' THEN 'trigger' WHEN 'o' THEN 'outbox' ELSE 'snapshot' END
)::text
FROM {changelog} AS c ORDER BY c.seq
"""

ODD_TABLE = 'Odd "name" \\ with ünïcode ✓'


def test_relayed_bytes_equal_the_sql_built_envelope(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    odd = sql.Identifier(source_schema, ODD_TABLE).as_string(None)
    with source_engine.begin() as conn:
        conn.execute(
            text(
                f'CREATE TABLE "{source_schema}".plain (id bigint PRIMARY KEY, s text, '
                "n numeric(12, 3), j json, jb jsonb, at timestamptz, d date, u uuid, b bytea, "
                "arr int[], f float8, ok boolean)"
            )
        )
        conn.execute(text(f"CREATE TABLE {odd} (k text PRIMARY KEY, v int)"))
        conn.execute(text(f'CREATE TABLE "{source_schema}".outboxed (id int PRIMARY KEY, v int)'))
        conn.execute(text(f'CREATE TABLE "{source_schema}".gone (id int PRIMARY KEY)'))
    config = make_config(
        [
            f"{source_schema}.plain",
            odd,
            {"source": f"{source_schema}.outboxed", "capture": "outbox"},
            f"{source_schema}.gone",
        ]
    )
    capture.install(source_engine, config)
    with source_engine.begin() as conn:
        conn.execute(text("SET LOCAL timezone = 'Asia/Kolkata'"))
        conn.execute(
            text(
                f'INSERT INTO "{source_schema}".plain VALUES '
                "(1, 'a \"quoted\" \\ line\nbreak', 1.500, '{\"x\" : [1,  2]}', '{\"y\": 1.10}', "
                "'2024-02-29 23:59:59.5+00', 'infinity', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
                "'\\x00ff', '{1,NULL,3}', -0.0, true), "
                "(2, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
            )
        )
        conn.execute(text(f"UPDATE \"{source_schema}\".plain SET s = '' WHERE id = 1"))
        conn.execute(text(f'UPDATE "{source_schema}".plain SET id = 3 WHERE id = 2'))
        conn.execute(text(f'DELETE FROM "{source_schema}".plain WHERE id = 1'))
        conn.execute(text(f"INSERT INTO {odd} VALUES ('k\"1', 1)"))
        conn.execute(text(f'INSERT INTO "{source_schema}".outboxed VALUES (1, 1)'))
        Outbox(config).record(conn, f"{source_schema}.outboxed", {"id": 1}, "insert")
        conn.execute(text(f'INSERT INTO "{source_schema}".gone VALUES (1)'))
    registry = in_schema(config.capture.schema, REGISTRY)
    changelog = in_schema(config.capture.schema, CHANGELOG)
    with source_engine.begin() as conn:
        # a record whose table left the registry: "types" is null
        conn.execute(
            text(
                sql.SQL("DELETE FROM {} WHERE source_table = :t").format(registry).as_string(None)
            ),
            {"t": f"{source_schema}.gone"},
        )
    raw = source_engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute("SET timezone = 'UTC'")  # the relay's session time zone
            cur.execute(sql.SQL(REFERENCE_SQL).format(registry=registry, changelog=changelog))
            expected = [(key.encode(), value.encode()) for _seq, key, value in cur.fetchall()]
        raw.rollback()
    finally:
        raw.close()
    assert len(expected) == 9 and b'"types" : null' in expected[-1][1]

    drain(source_engine, config)
    capture.install(source_engine, config)  # registers "gone" again, so cleanup finds it
    got = [(m.key, m.value) for m in messages(config)]
    assert sorted(got) == sorted(expected)
