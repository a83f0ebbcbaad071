"""Golden tests of the in-database canonical text against a real server: for every value the
SQL text equals the Python encoding of the same value read either way (through the source's
row image, as the transform sees it, and through the target's driver), so equal values compare
equal in the database and in Python, and unequal values never alike."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine

from dualwrite.capture._ddl import TableShape, row_image
from dualwrite.config import QualifiedName
from dualwrite.snapshot import decode_image
from reconcile import canonical, encode_row
from reconcile._session import connect
from reconcile._sqlcanon import value_sql

pytestmark = pytest.mark.integration

# (column type, SQL literal a, SQL literal b): a and b are equal under the documented rules
EQUAL = [
    ("numeric(12,3)", "1.100", "1.1"),
    ("numeric", "-0.00", "0"),
    ("numeric", "NaN", "NaN"),
    ("numeric", "1e20", "100000000000000000000"),
    ("double precision", "-0", "0"),
    ("double precision", "NaN", "NaN"),
    ("double precision", "Infinity", "Infinity"),
    ("double precision", "0.1", "0.1"),
    ("real", "0.1", "0.1"),
    ("bigint", "9223372036854775807", "9223372036854775807"),
    ("timestamp with time zone", "2024-01-01 12:00:00+00", "2024-01-01 13:00:00+01"),
    ("timestamp with time zone", "2024-03-31 01:30:00+00", "2024-03-31 03:30:00 Europe/Berlin"),
    ("timestamp without time zone", "0999-01-02 03:04:05.000006", "0999-01-02 03:04:05.000006"),
    ("date", "2024-02-29", "2024-02-29"),
    ("character(5)", "ab", "ab   "),
    ("jsonb", '{"b": 1, "a": [1, 2]}', '{"a":[1,2],"b":1}'),
    ("json", '{"a":1,"a":2}', '{"a": 2}'),
    ("jsonb", '{"long key": 1, "z": {"é": "x\\"y"}}', '{"z":{"é":"x\\"y"},"long key":1}'),
    ("uuid", "00000000-0000-0000-0000-00000000000A", "00000000-0000-0000-0000-00000000000a"),
    ("bytea", "\\x00ff", "\\x00FF"),
    ("integer[]", "{1,NULL,3}", "{1,NULL,3}"),
    ("text[]", "{}", "{}"),
    ("numeric[]", "{1.10,2}", "{1.1,2.000}"),
    ("boolean", "true", "t"),
    ("text", "tab\there", "tab\there"),
]

UNEQUAL = [
    ("text", None, ""),
    ("text", "", "NULL"),
    ("text", None, "NULL"),
    ("text", None, "\\N"),
    ("text", "null", "NULL"),
    ("text", "a b", "a  b"),
    ("text", "x", "x "),
    ("text", "é", "e\u0301"),  # NFC vs NFD: different bytes, different text
    ("text", 'a","b', "a"),
    ("text", "a,b", "a"),
    ("text", "[", "]"),
    ("character varying(9)", "a\\b", "a\\\\b"),
    ("numeric", "1.1", "1.10001"),
    ("numeric", "NaN", "0"),
    ("double precision", "NaN", "0"),
    ("double precision", "Infinity", "-Infinity"),
    ("double precision", "0.1", "0.10000000000000002"),
    ("timestamp with time zone", "2024-01-01 12:00:00+00", "2024-01-01 12:00:00+01"),
    ("timestamp with time zone", "2024-01-01 12:00:00+00", "2024-01-01 12:00:00.000001+00"),
    ("timestamp without time zone", "2024-01-01 12:00:00", "2024-01-01 12:00:00.000001"),
    ("date", "2024-01-01", "2024-01-02"),
    ("boolean", "true", "false"),
    ("boolean", None, "false"),
    ("text[]", '{"a,b"}', "{a,b}"),
    ("text[]", "{NULL}", '{"NULL"}'),
    ("text[]", "{}", None),
    ("text[]", "{}", '{""}'),
    ("jsonb", '{"a": 1}', '{"a": "1"}'),
    ("jsonb", '{"a": 1.0}', '{"a": 1}'),
    ("jsonb", "null", None),
    ("jsonb", '"null"', "null"),
    ("bytea", "\\x00", "\\x"),
    ("bytea", None, "\\x"),
    ("integer[]", "{{1,2},{3,4}}", "{1,2,3,4}"),
]

TYPES = sorted({t for t, _, _ in EQUAL + UNEQUAL})


@pytest.fixture(scope="module")
def conn(source_engine: Engine) -> Iterator[psycopg.Connection[Any]]:
    with connect(source_engine) as c:
        yield c


def _literal(type_name: str, text: str | None) -> sql.Composable:
    return sql.SQL("{}::{}").format(sql.Literal(text), sql.SQL(type_name))


def _sql_text(conn: psycopg.Connection[Any], type_name: str, text: str | None) -> str:
    expr = value_sql(type_name, type_name, sql.SQL("x.v"))
    assert expr is not None, type_name
    row = conn.execute(
        sql.SQL("SELECT {} FROM (SELECT {} AS v) AS x").format(expr, _literal(type_name, text))
    ).fetchone()
    assert row is not None
    return str(row[0])


def _python_texts(conn: psycopg.Connection[Any], type_name: str, text: str | None) -> set[str]:
    """The Python encoding of the value as the target reads it and as the source's row image
    (what the transform receives) carries it."""
    read = conn.execute(sql.SQL("SELECT {}").format(_literal(type_name, text))).fetchone()
    assert read is not None
    regtype = conn.execute("SELECT %s::regtype::text", (type_name,)).fetchone()
    assert regtype is not None
    shape = TableShape(QualifiedName("x", "x"), 0, ("v",), {"v": str(regtype[0])})
    image = conn.execute(
        sql.SQL("SELECT {}::text FROM (SELECT {} AS v) AS x").format(
            row_image(shape, "x"), _literal(type_name, text)
        )
    ).fetchone()
    assert image is not None
    decoded = decode_image(image[0], shape.types)["v"]
    if type_name == "jsonb" and text in ("null", '"null"'):
        # Inherited from the event envelope: a jsonb JSON null arrives as SQL NULL, and a
        # top-level JSON string as a Python str, which the pipeline writes back as JSON text.
        # In SQL these differ, which only makes the row a candidate that Python decides.
        decoded = read[0]
    return {
        encode_row([canonical(type_name, read[0])])[1:-1],
        encode_row([canonical(type_name, decoded)])[1:-1],
    }


@pytest.mark.parametrize(("type_name", "a", "b"), EQUAL + UNEQUAL)
def test_sql_text_is_the_python_encoding(
    conn: psycopg.Connection[Any], type_name: str, a: str | None, b: str | None
) -> None:
    for value in (a, b):
        if type_name == "integer[]" and value and value.startswith("{{"):
            continue  # multi-dimensional arrays: SQL keeps their text (never equal to 1-D)
        assert _python_texts(conn, type_name, value) == {_sql_text(conn, type_name, value)}, value


@pytest.mark.parametrize(("type_name", "a", "b"), EQUAL)
def test_equal_values_compare_equal_in_the_database(
    conn: psycopg.Connection[Any], type_name: str, a: str, b: str
) -> None:
    assert _sql_text(conn, type_name, a) == _sql_text(conn, type_name, b)


@pytest.mark.parametrize(("type_name", "a", "b"), UNEQUAL)
def test_unequal_values_never_compare_alike(
    conn: psycopg.Connection[Any], type_name: str, a: str | None, b: str | None
) -> None:
    assert _sql_text(conn, type_name, a) != _sql_text(conn, type_name, b)


def test_rows_cannot_collide_through_separators_or_null_markers(
    conn: psycopg.Connection[Any],
) -> None:
    rows = [
        ("a", "b"),
        ("a,b", None),
        ("a", None),
        (None, "a"),
        ("", None),
        (None, ""),
        ('a","b', None),
        ('a"', '"b'),
    ]
    x = value_sql("text", "text", sql.SQL("x.a"))
    y = value_sql("text", "text", sql.SQL("x.b"))
    assert x is not None and y is not None
    texts = set()
    for a, b in rows:
        row = conn.execute(
            sql.SQL(
                "SELECT '[' || {} || ',' || {} || ']' FROM (SELECT {} AS a, {} AS b) AS x"
            ).format(x, y, _literal("text", a), _literal("text", b))
        ).fetchone()
        assert row is not None
        assert row[0] == encode_row([canonical("text", a), canonical("text", b)])
        texts.add(row[0])
    assert len(texts) == len(rows)
