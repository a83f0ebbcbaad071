"""Canonical values: one unambiguous form per value, chosen by the target column's type.

Both sides of a comparison (the transform of the source, and the target as read) pass
through :func:`canonical` with the target column's type, through the :data:`NORMALISERS`
registry. The canonical values of a row are then encoded as a JSON array, so no separator
or NULL marker can collide with data: NULL is JSON ``null``, a string is always a JSON string.

Documented equivalences (what counts as equal):

- numbers compare by value: ``1.10 == 1.1``, ``-0.0 == 0.0``; ``NaN == NaN`` (as PostgreSQL
  orders it); floats use their shortest exact decimal text, so ``0.1`` (float) equals
  ``Decimal('0.1')``;
- timestamps with time zone compare as UTC instants at microsecond precision;
- ``char(n)`` ignores trailing pad spaces (PostgreSQL's own semantics); every other text is
  compared byte for byte: no Unicode normalisation, trailing spaces matter;
- json and jsonb compare as PostgreSQL's ``jsonb`` text (:func:`jsonb_text`): key order and
  whitespace do not matter, duplicate keys resolve to the last, numbers inside JSON keep their
  scale as jsonb keeps it (``1.0`` and ``1.00`` differ inside JSON; ``1`` and ``"1"`` differ);
- bytea compares bytes; arrays compare element by element with the element type's rules.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from dualwrite.envelope import parse_json

Normaliser = Callable[[Any], Any]


def _number(v: Any) -> Any:
    if isinstance(v, bool):
        return {"bool": v}
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        v = Decimal(repr(v))
    if isinstance(v, str):
        try:
            v = Decimal(v)
        except InvalidOperation:
            return {"text": v}
    if isinstance(v, int):
        v = Decimal(v)
    if isinstance(v, Decimal):
        if v.is_nan():
            return "NaN"
        if v.is_infinite():
            return "Infinity" if v > 0 else "-Infinity"
        if v == 0:
            return "0"
        return format(v.normalize(), "f")
    return {"other": str(v)}


def _timestamptz(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            return {"naive": v.isoformat(timespec="microseconds")}
        return v.astimezone(dt.UTC).isoformat(timespec="microseconds")
    return {"text": str(v)}


def _timestamp(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            return {"aware": v.astimezone(dt.UTC).isoformat(timespec="microseconds")}
        return v.isoformat(timespec="microseconds")
    return {"text": str(v)}


def _date(v: Any) -> Any:
    return v.isoformat() if isinstance(v, dt.date) else {"text": str(v)}


def _json_value(v: Any) -> Any:
    if isinstance(v, str):
        try:
            v = parse_json(v)
        except ValueError:
            return {"invalid-json": v}
    try:
        return jsonb_text(v)
    except (TypeError, ValueError):
        return {"non-json": str(v)}


def jsonb_text(v: Any) -> str:
    """PostgreSQL's ``jsonb`` output text of a parsed JSON value, reproduced exactly.

    Object keys sorted as jsonb sorts them (shorter UTF-8 first, then bytewise), duplicates
    already resolved to the last (the parser does so, as jsonb does), ``", "`` and ``": "``
    separators, strings escaped as ``to_json`` escapes them, numbers as ``numeric`` prints
    them (scale kept, no exponent, no negative zero). Raises TypeError/ValueError for values
    JSON cannot hold.
    """
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise ValueError("NaN and infinities are not JSON")
        v = Decimal(repr(v))
    if isinstance(v, Decimal):
        if not v.is_finite():
            raise ValueError("NaN and infinities are not JSON")
        return format(abs(v) if v == 0 else v, "f")
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(jsonb_text(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: (len(k.encode()), k.encode()))
        return (
            "{"
            + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {jsonb_text(v[k])}" for k in keys)
            + "}"
        )
    raise TypeError(f"not a JSON value: {type(v).__name__}")


def _bytea(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex()
    return {"text": str(v)}


def _uuid(v: Any) -> Any:
    try:
        return str(uuid.UUID(str(v)))
    except ValueError:
        return {"text": str(v)}


def _bpchar(v: Any) -> Any:
    return str(v).rstrip(" ")


def _text(v: Any) -> Any:
    return v if isinstance(v, str) else {"non-text": str(v)}


def _bool(v: Any) -> Any:
    return v if isinstance(v, bool) else {"non-bool": str(v)}


NORMALISERS: dict[str, Normaliser] = {
    "smallint": _number,
    "integer": _number,
    "bigint": _number,
    "numeric": _number,
    "real": _number,
    "double precision": _number,
    "boolean": _bool,
    "text": _text,
    "character varying": _text,
    "character": _bpchar,
    "uuid": _uuid,
    "date": _date,
    "timestamp with time zone": _timestamptz,
    "timestamp without time zone": _timestamp,
    "json": _json_value,
    "jsonb": _json_value,
    "bytea": _bytea,
}
"""Normaliser per base type name (``format_type`` without modifiers)."""


@functools.lru_cache(maxsize=4096)
def base_type(type_name: str) -> str:
    """``numeric(12,2)`` -> ``numeric``; ``character varying(10)[]`` -> ``character varying[]``."""
    array = type_name.endswith("[]")
    core = type_name[:-2] if array else type_name
    core = core.split("(", 1)[0].strip()
    return core + ("[]" if array else "")


def canonical(type_name: str, value: Any) -> Any:
    """The canonical form of ``value`` for a column of ``type_name`` (a JSON-able value)."""
    if value is None:
        return None
    base = base_type(type_name)
    if base.endswith("[]"):
        if not isinstance(value, list):
            return {"non-array": str(value)}
        element = base[:-2]
        return [
            canonical(element, v) if not isinstance(v, list) else canonical(base, v) for v in value
        ]
    normaliser = NORMALISERS.get(base)
    if normaliser is None:
        return {"text": str(value)} if not isinstance(value, str) else value
    return normaliser(value)


EQUAL_AS_IS: frozenset[type] = frozenset({str, int, bool, bytes})
"""Types whose ``==`` holds only between identical representations: two such values of one
type that are ``==`` have the same canonical form under every column type's rule."""

EQUAL_BY_RULE: dict[str, frozenset[type]] = {
    **dict.fromkeys(
        ("smallint", "integer", "bigint", "numeric", "real", "double precision"),
        frozenset({Decimal, float}),
    ),
    "timestamp with time zone": frozenset({dt.datetime}),
    "timestamp without time zone": frozenset({dt.datetime}),
}
"""Per base type, the value types whose ``==`` is exactly the rule's equality (``1.10 == 1.1``,
``-0.0 == 0.0``, one instant in two zones; ``NaN`` is never ``==``, and an aware datetime is
never ``==`` a naive one), so ``==`` may decide before the canonical forms are built."""


def same_canonical(type_name: str, a: Any, b: Any) -> bool:
    """``canonical(type_name, a) == canonical(type_name, b)``, deciding the common case of
    equal values of one Python type by ``==`` without building either form."""
    kind = type(a)
    if kind is type(b) and (
        kind in EQUAL_AS_IS or kind in EQUAL_BY_RULE.get(base_type(type_name), ())
    ):
        try:
            if a == b:
                return True
        except ArithmeticError:  # a signalling Decimal NaN: the rule decides
            pass
    return bool(canonical(type_name, a) == canonical(type_name, b))


def encode_row(values: list[Any]) -> str:
    """The unambiguous encoding of canonical values (a JSON array)."""
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
