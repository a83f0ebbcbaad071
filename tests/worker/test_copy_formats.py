"""The Applier's COPY sends a batch in binary only where the text path gives the same rows.

Binary COPY (``dualwrite.apply._copy``) is chosen per batch when every value has the exact
Python type its column's binary dumper takes; anything else goes as text, where the server
parses and casts each value, as before. Each case below COPYs the same rows both ways into
twin tables and compares what the server stored.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine

from dualwrite.apply import _binary_ok, _copy

COLUMNS = {
    "i2": "smallint",
    "i4": "integer",
    "i8": "bigint",
    "b": "boolean",
    "t": "text",
    "vc": "varchar(12)",
    "n": "numeric(12,2)",
    "f8": "double precision",
    "d": "date",
    "ts": "timestamp",
    "tz": "timestamptz",
    "u": "uuid",
    "by": "bytea",
}

BERLIN = dt.timezone(dt.timedelta(hours=2))
ROWS: list[tuple[Any, ...]] = [
    (
        -(2**15),
        -(2**31),
        -(2**63),
        True,
        "ä\t\\N\n",
        "x" * 12,
        Decimal("-9999999999.99"),
        -0.0,
        dt.date(1, 1, 1),
        dt.datetime(1999, 12, 31, 23, 59, 59, 999999),
        dt.datetime(2024, 10, 27, 2, 30, tzinfo=BERLIN),
        uuid.UUID(int=0),
        b"\x00\xff",
    ),
    (
        2**15 - 1,
        2**31 - 1,
        2**63 - 1,
        False,
        "",
        "",
        Decimal("NaN"),
        1e300,
        dt.date(9999, 12, 31),
        dt.datetime(2000, 1, 1),
        dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
        uuid.UUID(int=2**128 - 1),
        b"",
    ),
    (None,) * len(COLUMNS),
    (
        0,
        7,
        8,
        None,
        None,
        "abc",
        Decimal("1.005"),  # rounded to the column's scale by the server, both ways
        float("inf"),
        None,
        None,
        dt.datetime(2024, 3, 31, 1, 0, 0, 1, tzinfo=dt.UTC),
        None,
        None,
    ),
]


def _twin_tables(conn: psycopg.Connection[Any], schema: str) -> tuple[sql.Composed, ...]:
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in COLUMNS.items()
    )
    names = []
    for table in ("via_copy", "via_text"):
        name = sql.Identifier(schema, table)
        conn.execute(sql.SQL("CREATE TABLE {} (n_ serial, {})").format(name, cols))
        names.append(name)
    return tuple(names)


def _oids(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    rows = conn.execute(
        "SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = %s::regclass "
        "AND attnum > 0 AND NOT attisdropped",
        (f'"{schema}".via_copy',),
    ).fetchall()
    by_name = dict(rows)
    return [by_name[c] for c in COLUMNS]


def _copy_both_ways(
    target_engine: Engine, schema: str, rows: list[tuple[Any, ...]]
) -> tuple[bool, list[Any], list[Any]]:
    url = target_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, options="-c timezone=UTC") as conn:
        via_copy, via_text = _twin_tables(conn, schema)
        oids = _oids(conn, schema)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
        with conn.cursor() as cur:
            _copy(cur, sql.SQL("COPY {} ({}) FROM STDIN").format(via_copy, cols), oids, rows)
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(via_text, cols)) as copy:
                for row in rows:
                    copy.write_row(row)
        conn.commit()
        # compared as the server's text of each value (NaN is not equal to itself in Python)
        as_text = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in COLUMNS)
        select = "SELECT {} FROM {} ORDER BY n_"
        got = conn.execute(sql.SQL(select).format(as_text, via_copy)).fetchall()
        want = conn.execute(sql.SQL(select).format(as_text, via_text)).fetchall()
        return _binary_ok(oids, rows), got, want


def test_binary_copy_stores_what_text_copy_stores(target_engine: Engine, target_schema: str):
    binary, got, want = _copy_both_ways(target_engine, target_schema, ROWS)
    assert binary  # every value has its column's exact type: this batch went in binary
    assert got == want
    assert got[0][6] == "-9999999999.99" and got[1][6] == "NaN" and got[3][6] == "1.01"
    assert got[0][10] == "2024-10-27 00:30:00+00" and got[0][7] == "-0"


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("i4", "42"),  # text into an integer column: the server casts it
        ("i4", True),  # a bool is an int subclass: text writes "t", which the server refuses
        ("n", 5),  # an int into numeric
        ("ts", "infinity"),  # PostgreSQL's infinity, kept as text by the transforms
        ("tz", dt.datetime(2024, 1, 1, 12)),  # naive into timestamptz: the session zone
        ("ts", dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)),  # aware into timestamp
        ("d", dt.datetime(2024, 1, 1, 12)),  # a datetime is a date subclass
        ("t", 7),  # an int into text
        ("i2", 2**15),  # out of the column's range: the server's error, not a client one
    ],
)
def test_other_values_go_as_text(
    target_engine: Engine, target_schema: str, column: str, value: Any
):
    row = list(ROWS[1])
    row[list(COLUMNS).index(column)] = value
    rows = [ROWS[0], tuple(row)]
    try:
        binary, got, want = _copy_both_ways(target_engine, target_schema, rows)
    except psycopg.DataError as exc:  # the server refused the text: out of range, bad bool
        assert not _binary_ok([23 if column == "i4" else 21], [(value,)])
        assert "out of range" in str(exc) or "invalid input syntax" in str(exc)
        return
    assert not binary
    assert got == want


class _SaysNaive(dt.tzinfo):
    """A tzinfo whose offset is None: its datetimes count as naive."""

    def utcoffset(self, _when: dt.datetime | None) -> dt.timedelta | None:
        return None


@pytest.mark.parametrize(
    ("column", "aware", "naive"),
    [
        ([dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * 2, True, False),
        ([dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2)))], True, False),
        ([dt.datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Berlin"))], True, False),
        ([dt.datetime(2024, 1, 1)] * 2, False, True),
        ([dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 1)], False, False),
        ([dt.datetime(2024, 1, 1, tzinfo=_SaysNaive())], False, True),
        ([None, dt.datetime(2024, 1, 1)], False, True),
        ([None, None], True, True),
    ],
    ids=["utc", "fixed", "zoneinfo", "naive", "mixed", "tzinfo-naive", "null-naive", "nulls"],
)
def test_binary_timestamps_only_for_the_matching_awareness(
    column: list[Any], aware: bool, naive: bool
) -> None:
    """Binary timestamptz takes aware datetimes only, binary timestamp naive ones only (by
    ``utcoffset``, as the dumpers decide), whatever the tzinfo class."""
    assert _binary_ok([1184], [(v,) for v in column]) is aware
    assert _binary_ok([1114], [(v,) for v in column]) is naive
