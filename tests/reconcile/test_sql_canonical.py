"""Golden tests of the in-database comparison against a real server: two values have equal
row hashes exactly when Python's canonical comparison calls them equal, for adversarial
values, for equal types and across the type pairs a transform may map between."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine

from reconcile import canonical, encode_row
from reconcile._session import connect
from reconcile._sqlcanon import items, row_hash

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
    ("bigint", None, "0"),
    ("numeric", None, "0"),
    ("double precision", None, "0"),
    ("uuid", None, "00000000-0000-0000-0000-000000000000"),
    ("date", None, "2000-01-01"),
    ("timestamp with time zone", None, "2000-01-01 00:00:00+00"),
    ("character(3)", None, ""),
    ("json", None, "null"),
]

# (source type, target type, SQL literal): the same value written into both types
ACROSS = [
    ("integer", "bigint", "7"),
    ("integer", "numeric(12,2)", "7"),
    ("bigint", "numeric", "-12"),
    ("numeric(12,3)", "numeric(12,2)", "1.5"),
    ("real", "double precision", "0.1"),
    ("double precision", "numeric", "1e20"),
    ("double precision", "numeric", "NaN"),
    ("text", "character varying(20)", "x "),
    ("character varying(20)", "text", ""),
    ("text", "character(4)", "ab"),
    ("json", "jsonb", '{"b": [1, 2.50], "a": null}'),
]


@pytest.fixture(scope="module")
def conn(source_engine: Engine) -> Iterator[psycopg.Connection[Any]]:
    with connect(source_engine) as c:
        yield c


def _literal(type_name: str, text: str | None) -> sql.Composable:
    return sql.SQL("{}::{}").format(sql.Literal(text), sql.SQL(type_name))


def _hash(
    conn: psycopg.Connection[Any], type_name: str, text: str | None, side: int = 1, pair: str = ""
) -> str:
    source_type, target_type = (
        (pair or type_name, type_name) if side else (type_name, pair or type_name)
    )
    built = items(source_type, target_type, sql.SQL("x.v"), sql.SQL("x.v"))
    assert built is not None, (source_type, target_type)
    row = conn.execute(
        sql.SQL("SELECT {} FROM (SELECT {} AS v) AS x").format(
            row_hash(built[side]), _literal(type_name, text)
        )
    ).fetchone()
    assert row is not None
    return str(row[0])


def _python(conn: psycopg.Connection[Any], type_name: str, text: str | None) -> str:
    read = conn.execute(sql.SQL("SELECT {}").format(_literal(type_name, text))).fetchone()
    assert read is not None
    return encode_row([canonical(type_name, read[0])])


@pytest.mark.parametrize(("type_name", "a", "b"), EQUAL + UNEQUAL)
def test_hashes_are_equal_exactly_when_python_says_equal(
    conn: psycopg.Connection[Any], type_name: str, a: str | None, b: str | None
) -> None:
    same_in_python = _python(conn, type_name, a) == _python(conn, type_name, b)
    for side in (0, 1):
        assert (
            _hash(conn, type_name, a, side) == _hash(conn, type_name, b, side)
        ) == same_in_python


@pytest.mark.parametrize(("type_name", "a", "b"), EQUAL)
def test_equal_values_compare_equal_in_the_database(
    conn: psycopg.Connection[Any], type_name: str, a: str, b: str
) -> None:
    assert _hash(conn, type_name, a) == _hash(conn, type_name, b)


@pytest.mark.parametrize(("type_name", "a", "b"), UNEQUAL)
def test_unequal_values_never_compare_alike(
    conn: psycopg.Connection[Any], type_name: str, a: str | None, b: str | None
) -> None:
    assert _hash(conn, type_name, a) != _hash(conn, type_name, b)


@pytest.mark.parametrize(("source_type", "target_type", "value"), ACROSS)
def test_a_value_compares_equal_across_the_type_pairs_a_transform_maps(
    conn: psycopg.Connection[Any], source_type: str, target_type: str, value: str
) -> None:
    assert _python(conn, source_type, value) == _python(conn, target_type, value)
    built = items(source_type, target_type, sql.SQL("x.s"), sql.SQL("x.t"))
    assert built is not None
    row = conn.execute(
        sql.SQL("SELECT {}, {} FROM (SELECT {} AS s, {} AS t) AS x").format(
            row_hash(built[0]),
            row_hash(built[1]),
            _literal(source_type, value),
            _literal(target_type, value),
        )
    ).fetchone()
    assert row is not None and row[0] == row[1]


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
        ("1:a", None),
        (None, "1:a"),
        ("a1:", "b"),
        (":", ":"),
    ]
    built = items("text", "text", sql.SQL("x.a"), sql.SQL("x.a"))
    second = items("text", "text", sql.SQL("x.b"), sql.SQL("x.b"))
    assert built is not None and second is not None
    hashes = set()
    for a, b in rows:
        row = conn.execute(
            sql.SQL("SELECT {} FROM (SELECT {} AS a, {} AS b) AS x").format(
                row_hash([*built[1], *second[1]]),
                _literal("text", a),
                _literal("text", b),
            )
        ).fetchone()
        assert row is not None
        hashes.add(row[0])
    assert len(hashes) == len(rows)
