"""The change event envelope: versioned JSON on Kafka, and its exact decoding into Python.

One change record becomes one Kafka message. The message key is ``<schema.table>:<key
array>`` (UTF-8), so every event of one row lands on one partition. The value is a JSON
object; see ``docs/envelope.md`` for the field list and the encoding of each PostgreSQL type.

The row image is PostgreSQL's ``row_to_json`` output (``json_each`` keeps each value's text),
so every value keeps its exact text: numeric scale, float signs and exponents, timestamps
with their offsets. :func:`decode_event` parses numbers without going through ``float`` and
turns each value into the Python type its column's ``types`` entry names, via a registry of
decoders (:data:`DECODERS`). Pure functions, thread-safe.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dualwrite.errors import DualwriteError

__all__ = [
    "DECODERS",
    "SCHEMA_VERSION",
    "ChangeEvent",
    "EnvelopeError",
    "RowDecoder",
    "decode_event",
    "decode_value",
]

SCHEMA_VERSION = 1
OPERATIONS = ("insert", "update", "delete", "read")


class EnvelopeError(DualwriteError):
    """A message is not a valid change event; ``reason`` says why (the bytes are kept by caller)."""


@dataclass(frozen=True, init=False)
class ChangeEvent:
    """One decoded change of one source row.

    ``version`` grows per key in commit order (the changelog sequence); ``row`` is ``None``
    for deletes; ``key`` and ``row`` hold typed Python values.
    """

    source: str
    op: str
    key: Mapping[str, Any]
    row: Mapping[str, Any] | None
    types: Mapping[str, str]
    version: int
    txid: int | None
    ts: dt.datetime
    origin: str
    schema_version: int = SCHEMA_VERSION

    def __init__(
        self,
        source: str,
        op: str,
        key: Mapping[str, Any],
        row: Mapping[str, Any] | None,
        types: Mapping[str, str],
        version: int,
        txid: int | None,
        ts: dt.datetime,
        origin: str,
        schema_version: int = SCHEMA_VERSION,
    ) -> None:
        # One per consumed event: the fields go straight into the instance dict (the frozen
        # dataclass __init__ calls object.__setattr__ per field, twice the cost).
        d = self.__dict__
        d["source"] = source
        d["op"] = op
        d["key"] = key
        d["row"] = row
        d["types"] = types
        d["version"] = version
        d["txid"] = txid
        d["ts"] = ts
        d["origin"] = origin
        d["schema_version"] = schema_version


def _parse_int(text: str) -> int | Decimal:
    # "-0" is a float8 negative zero written without a fraction; keep its sign.
    return Decimal(text) if text == "-0" else int(text)


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_int=_parse_int)


def parse_json(data: bytes | str) -> Any:
    """Parse JSON keeping numbers exact (``Decimal`` for non-integers, never ``float``).

    Bytes must be UTF-8 (``UnicodeDecodeError`` otherwise). One decoder is shared: building
    one per call (what ``json.loads`` with hooks does) cost a third of the decoding time.
    """
    return _DECODER.decode(data.decode("utf-8") if isinstance(data, bytes) else data)


# --- per-type decoders -------------------------------------------------------------------

Decoder = Callable[[Any], Any]

_SPECIAL_FLOATS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _float(v: Any) -> float:
    if isinstance(v, str):
        return _SPECIAL_FLOATS[v]
    return float(v)


def _numeric(v: Any) -> Decimal:
    return Decimal(v)  # numbers arrive as Decimal or int; "NaN" / "Infinity" as text


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {v!r}")
    return v


def _timestamp(v: Any) -> dt.datetime | str:
    if v in ("infinity", "-infinity"):
        return str(v)  # no Python datetime holds them; kept as PostgreSQL spells them
    return dt.datetime.fromisoformat(v)


def _date(v: Any) -> dt.date | str:
    if v in ("infinity", "-infinity"):
        return str(v)
    return dt.date.fromisoformat(v)


def _bytea(v: Any) -> bytes:
    if not isinstance(v, str) or not v.startswith("\\x"):
        raise ValueError(f"expected bytea hex text, got {v!r}")
    return bytes.fromhex(v[2:])


def _json_text(v: Any) -> str:
    # json columns travel as their exact text (a JSON string), so duplicates and order survive.
    if not isinstance(v, str):
        raise ValueError("expected json text")
    return v


def _identity(v: Any) -> Any:
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected text, got {v!r}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


DECODERS: dict[str, Decoder] = {
    "smallint": _int,
    "integer": _int,
    "bigint": _int,
    "oid": _int,
    "real": _float,
    "double precision": _float,
    "numeric": _numeric,
    "boolean": _bool,
    "text": _str,
    "character varying": _str,
    "character": _str,
    "name": _str,
    "citext": _str,
    "uuid": lambda v: uuid.UUID(str(v)),
    "date": _date,
    "timestamp without time zone": _timestamp,
    "timestamp with time zone": _timestamp,
    "time without time zone": lambda v: dt.time.fromisoformat(str(v)),
    "time with time zone": _str,
    "interval": _str,
    "bytea": _bytea,
    "json": _json_text,
    "jsonb": _identity,  # parsed structure; jsonb has no text identity to keep
    "money": _str,
}
"""Decoder per PostgreSQL type name (``regtype`` spelling). Unknown types (enums, ranges,
geometric types, ...) decode as their text form."""


def decode_value(type_name: str, value: Any) -> Any:
    """Turn one JSON value of a column of ``type_name`` into its Python value; NULL is None."""
    if value is None:
        return None
    if type_name.endswith("[]"):
        element = type_name[:-2]
        if not isinstance(value, list):
            raise ValueError(f"expected an array for {type_name}, got {value!r}")
        return [
            decode_value(type_name, item) if isinstance(item, list) else decode_value(element, item)
            for item in value
        ]
    decoder: Decoder = DECODERS.get(type_name, _identity)
    return decoder(value)


def _decode_row(image: Mapping[str, Any], types: Mapping[str, str]) -> dict[str, Any]:
    """The reference decoding of one row image (also the error path of :class:`RowDecoder`)."""
    out: dict[str, Any] = {}
    for column, value in image.items():
        type_name = types.get(column)
        if type_name is None:
            raise EnvelopeError(f"column {column!r} has no entry in types")
        try:
            out[column] = decode_value(type_name, value)
        except (ValueError, KeyError, ArithmeticError, TypeError) as exc:
            raise EnvelopeError(f"column {column!r} ({type_name}): {exc}") from None
    return out


def _plan_decoder(type_name: str) -> Decoder | None:
    """The decoder of a column of ``type_name``, or None where the JSON value is the value."""
    if type_name.endswith("[]"):
        return lambda value: decode_value(type_name, value)
    decoder = DECODERS.get(type_name, _identity)
    return None if decoder is _identity else decoder


_PASS_THROUGH: dict[Decoder, type] = {
    _str: str,
    _json_text: str,
    _int: int,
    _bool: bool,
    _numeric: Decimal,
}
"""Decoders that return a value of this exact type unchanged (``Decimal(d)`` is ``d``'s
value): :class:`RowDecoder` keeps such values without calling the decoder."""


class RowDecoder:
    """Decodes row images of one ``types`` map with a plan resolved once per column: the
    decoder, and the JSON value type it would return unchanged (``str`` for text, ``int``
    for integers, ...), so most values cost one type test instead of a decoder call.

    Decodes exactly as :func:`_decode_row` (which also produces its error messages); the
    plan is built from :data:`DECODERS` when the decoder is created. Thread-safe (read-only).
    """

    __slots__ = ("_plan", "types")

    def __init__(self, types: Mapping[str, str]) -> None:
        self.types = dict(types)
        plan: dict[str, tuple[type | None, Decoder | None]] = {}
        for column, type_name in self.types.items():
            decoder = _plan_decoder(type_name)
            plan[column] = (None if decoder is None else _PASS_THROUGH.get(decoder), decoder)
        self._plan = plan

    def __call__(self, image: Mapping[str, Any]) -> dict[str, Any]:
        """One row image as typed values; raises :class:`EnvelopeError` naming the column."""
        plan = self._plan
        out = dict(image)
        try:
            for column, value in image.items():
                kind, decoder = plan[column]
                if decoder is not None and value is not None and type(value) is not kind:
                    out[column] = decoder(value)
        except (ValueError, KeyError, ArithmeticError, TypeError):
            return _decode_row(image, self.types)  # raises with the reference message
        return out


_ROW_DECODERS: dict[str, RowDecoder] = {}
_ROW_DECODERS_MAX = 256


def _row_decoder(source: Any, types: Mapping[str, str]) -> RowDecoder:
    """The cached :class:`RowDecoder` of a source table while its ``types`` stay the same."""
    key = source if isinstance(source, str) else repr(source)
    decoder = _ROW_DECODERS.get(key)
    if decoder is None or decoder.types != types:
        if len(_ROW_DECODERS) >= _ROW_DECODERS_MAX:
            _ROW_DECODERS.clear()
        decoder = _ROW_DECODERS[key] = RowDecoder(types)
    return decoder


_FIELDS = ("source", "op", "key", "row", "types", "version", "ts", "origin")
_REQUIRED = frozenset(_FIELDS)
_OPERATION_SET = frozenset(OPERATIONS)


def decode_event(value: bytes) -> ChangeEvent:
    """Parse and validate one message value; raises :class:`EnvelopeError` naming the problem."""
    try:
        doc = parse_json(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EnvelopeError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise EnvelopeError("not a JSON object")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EnvelopeError(
            f"unsupported schema_version {version!r} (this build reads {SCHEMA_VERSION})"
        )
    if not doc.keys() >= _REQUIRED:
        missing = [f for f in _FIELDS if f not in doc]
        raise EnvelopeError(f"missing fields: {', '.join(missing)}")
    op = doc["op"]
    if op not in _OPERATION_SET:
        raise EnvelopeError(f"unknown op {op!r}")
    types, key, row = doc["types"], doc["key"], doc["row"]
    if type(types) is not dict or type(key) is not dict or not key:
        raise EnvelopeError("types and key must be JSON objects, key non-empty")
    if (row is None) != (op == "delete") or (row is not None and type(row) is not dict):
        raise EnvelopeError(f"row must be an object for {op} and null for delete")
    if type(doc["version"]) is not int:
        raise EnvelopeError("version must be an integer")
    try:
        ts = dt.datetime.fromisoformat(doc["ts"])
    except (TypeError, ValueError):
        raise EnvelopeError(f"ts is not an ISO timestamp: {doc['ts']!r}") from None
    txid = doc.get("txid")
    decode_row = _row_decoder(doc["source"], types)
    return ChangeEvent(
        str(doc["source"]),
        op,
        decode_row(key),
        None if row is None else decode_row(row),
        types,
        doc["version"],
        None if txid is None else int(txid),
        ts,
        str(doc["origin"]),
    )
