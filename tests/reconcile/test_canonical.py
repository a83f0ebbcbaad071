"""Golden tests of the canonical form: equal values compare equal, unequal never alike."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile import canonical, encode_row
from reconcile._canonical import same_canonical

EQUAL = [
    ("numeric(12,2)", Decimal("1.10"), Decimal("1.1")),
    ("numeric", Decimal("-0.00"), Decimal("0")),
    ("double precision", -0.0, 0.0),
    ("double precision", float("nan"), float("nan")),
    ("double precision", 0.1, Decimal("0.1")),
    ("numeric", Decimal("NaN"), float("nan")),
    ("bigint", 10**18, Decimal(10**18)),
    (
        "timestamp with time zone",
        dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 1, 13, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    ),
    ("character(5)", "ab   ", "ab"),
    ("jsonb", {"b": 1, "a": [1, 2]}, '{"a": [1, 2], "b": 1}'),
    ("json", '{"a":1,"a":2}', {"a": 2}),
    ("uuid", uuid.UUID(int=5), str(uuid.UUID(int=5)).upper()),
    ("bytea", b"\x00\xff", memoryview(b"\x00\xff")),
    ("integer[]", [1, None, 3], [1, None, 3]),
]

UNEQUAL = [
    ("text", None, ""),
    ("text", "", "NULL"),
    ("text", None, "\\N"),
    ("text", "a b", "a  b"),
    ("text", "x", "x "),
    ("text", "é", "e\u0301"),  # NFC vs NFD: different bytes, different text
    ("text", 'a","b', "a"),
    ("numeric", Decimal("1.1"), Decimal("1.10001")),
    ("double precision", float("nan"), 0.0),
    ("double precision", float("inf"), float("-inf")),
    (
        "timestamp with time zone",
        dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    ),
    (
        "timestamp without time zone",
        dt.datetime(2024, 1, 1, 12),
        dt.datetime(2024, 1, 1, 12, 0, 0, 1),
    ),
    ("date", dt.date(2024, 1, 1), dt.date(2024, 1, 2)),
    ("boolean", True, False),
    ("text[]", ["a,b"], ["a", "b"]),
    ("text[]", [None], ["NULL"]),
    ("jsonb", {"a": 1}, {"a": "1"}),
    ("bytea", b"\x00", b""),
]


@pytest.mark.parametrize(("type_name", "a", "b"), EQUAL)
def test_equal_values_have_equal_canonical_forms(type_name: str, a: Any, b: Any) -> None:
    assert encode_row([canonical(type_name, a)]) == encode_row([canonical(type_name, b)])


@pytest.mark.parametrize(("type_name", "a", "b"), UNEQUAL)
def test_unequal_values_never_encode_alike(type_name: str, a: Any, b: Any) -> None:
    assert encode_row([canonical(type_name, a)]) != encode_row([canonical(type_name, b)])


def test_rows_cannot_collide_through_separators_or_null_markers() -> None:
    rows = [["a", "b"], ["a,b", None], ["a", None], [None, "a"], ["", None], [None, ""], ['a","b']]
    encoded = [encode_row([canonical("text", v) for v in row]) for row in rows]
    assert len(set(encoded)) == len(rows)


@given(
    st.lists(st.one_of(st.none(), st.text(max_size=5)), min_size=1, max_size=4),
    st.lists(st.one_of(st.none(), st.text(max_size=5)), min_size=1, max_size=4),
)
def test_text_rows_encode_alike_only_when_equal(a: list[str | None], b: list[str | None]) -> None:
    ea = encode_row([canonical("text", v) for v in a])
    eb = encode_row([canonical("text", v) for v in b])
    assert (ea == eb) == (a == b)


@given(
    st.decimals(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False),
)
def test_numbers_encode_alike_exactly_when_equal_in_value(a: Decimal, b: Decimal) -> None:
    assert (canonical("numeric", a) == canonical("numeric", b)) == (a == b)


SAME_TYPE_EQUAL_BUT_NOT_CANONICAL = [
    ("text", Decimal("1.10"), Decimal("1.1")),  # a Decimal in a text column keeps its scale
    ("jsonb", {"a": 1.0}, {"a": 1}),  # numbers inside JSON keep their scale
    ("text", 0.0, -0.0),
    (
        "text",
        dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 1, 13, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    ),
    ("integer[]", [1], [1.0]),
]


@pytest.mark.parametrize(
    ("type_name", "a", "b"), [*EQUAL, *UNEQUAL, *SAME_TYPE_EQUAL_BUT_NOT_CANONICAL]
)
def test_the_equality_shortcut_agrees_with_the_canonical_forms(
    type_name: str, a: Any, b: Any
) -> None:
    assert same_canonical(type_name, a, b) == (canonical(type_name, a) == canonical(type_name, b))
    assert same_canonical(type_name, a, a)


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True, places=None),
    st.text(max_size=5),
    st.datetimes(
        timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-3))]) | st.none()
    ),
    st.dates(),
    st.binary(max_size=4),
)
TYPES = st.sampled_from(
    [
        "text",
        "numeric(12,2)",
        "integer",
        "double precision",
        "timestamp with time zone",
        "timestamp without time zone",
        "date",
        "boolean",
        "jsonb",
        "bytea",
        "character(3)",
    ]
)


@given(TYPES, VALUES, VALUES)
def test_the_equality_shortcut_never_disagrees_with_the_rule(
    type_name: str, a: Any, b: Any
) -> None:
    assert same_canonical(type_name, a, b) == (canonical(type_name, a) == canonical(type_name, b))
