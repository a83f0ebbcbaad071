"""decode_event's fast paths decode exactly as the reference decoding, errors included.

:class:`dualwrite.envelope.RowDecoder` keeps a JSON value without calling its decoder when
the value already has the type the decoder would return (``str`` for text, ``int`` for
integers, ``Decimal`` for numeric, ...); every other value goes through the decoder, which
validates it. Hypothesis feeds both it and the reference :func:`_decode_row` arbitrary JSON
values for every column type.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dualwrite.envelope import EnvelopeError, RowDecoder, _decode_row, decode_event, parse_json

TYPES = {
    "i": "integer",
    "b": "bigint",
    "n": "numeric",
    "f": "double precision",
    "t": "text",
    "v": "character varying",
    "bo": "boolean",
    "ts": "timestamp without time zone",
    "tz": "timestamp with time zone",
    "d": "date",
    "j": "json",
    "jb": "jsonb",
    "u": "uuid",
    "by": "bytea",
    "a": "integer[]",
    "e": "mood",  # an enum: not in DECODERS, its JSON value is its value
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.text(max_size=8),
    st.sampled_from(
        ["2024-01-31T12:00:00.5", "2024-01-31T12:00:00+01:00", "2024-01-31", "infinity"]
    ),
    st.sampled_from(["NaN", "Infinity", "\\x00ff", "00000000-0000-0000-0000-000000000000"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))


def _outcome(decode: Any, image: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", decode(image)
    except EnvelopeError as exc:
        return "error", str(exc)


@given(st.dictionaries(st.sampled_from(sorted(TYPES)), values, min_size=1))
def test_row_decoder_matches_the_reference(image: dict[str, Any]):
    # the JSON round trip gives the values decode_event sees (Decimal, int, never float)
    image = parse_json(json.dumps(image, default=float))
    fast = _outcome(RowDecoder(TYPES), image)
    reference = _outcome(lambda i: _decode_row(i, TYPES), image)
    assert fast == reference
    if fast[0] == "ok":
        # same types too (Decimal("1") == 1, but a numeric column must hold a Decimal)
        assert {c: type(v) for c, v in fast[1].items()} == {
            c: type(v) for c, v in reference[1].items()
        }


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("t", 5, "column 't' (text): expected text, got 5"),
        ("i", "5", "column 'i' (integer): expected an integer, got '5'"),
        ("i", True, "column 'i' (integer): expected an integer, got True"),
        ("bo", 1, "column 'bo' (boolean): expected true or false, got 1"),
        ("j", {"a": 1}, "column 'j' (json): expected json text"),
        ("zz", 1, "column 'zz' has no entry in types"),
    ],
)
def test_a_value_of_the_wrong_json_type_is_named(column: str, value: Any, message: str):
    with pytest.raises(EnvelopeError) as caught:
        RowDecoder(TYPES)({"t": "ok", column: value})
    assert str(caught.value) == message


def _envelope(**changes: Any) -> bytes:
    doc: dict[str, Any] = {
        "schema_version": 1,
        "source": "public.t",
        "op": "update",
        "key": {"i": 1},
        "row": {"i": 1, "n": 1.50, "tz": "2024-01-31T12:00:00+01:00"},
        "types": {"i": "integer", "n": "numeric", "tz": "timestamp with time zone"},
        "version": 7,
        "txid": "12",
        "ts": "2024-01-31T11:00:00.000001+00:00",
        "origin": "trigger",
    }
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def test_decode_event_reads_every_field():
    event = decode_event(_envelope())
    assert (event.source, event.op, event.version, event.txid, event.origin) == (
        "public.t",
        "update",
        7,
        12,
        "trigger",
    )
    assert event.key == {"i": 1}
    assert event.row == {
        "i": 1,
        "n": Decimal("1.5"),
        "tz": dt.datetime(2024, 1, 31, 11, tzinfo=dt.UTC),
    }
    assert event.ts == dt.datetime(2024, 1, 31, 11, 0, 0, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": True}, "version must be an integer"),
        ({"version": 1.5}, "version must be an integer"),
        ({"origin": ...}, "missing fields: origin"),
        ({"op": "upsert"}, "unknown op 'upsert'"),
        ({"key": {}}, "types and key must be JSON objects, key non-empty"),
        ({"row": None}, "row must be an object for update and null for delete"),
        ({"ts": "yesterday"}, "ts is not an ISO timestamp: 'yesterday'"),
        ({"schema_version": 2}, "unsupported schema_version 2 (this build reads 1)"),
    ],
)
def test_decode_event_rejects_bad_envelopes(changes: dict[str, Any], message: str):
    with pytest.raises(EnvelopeError) as caught:
        decode_event(_envelope(**changes))
    assert str(caught.value) == message
