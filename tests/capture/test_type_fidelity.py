"""Every supported type survives source row -> trigger -> relay -> Kafka -> decode exactly."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb
from sqlalchemy import Engine, text

from dualwrite import capture
from tests.capture.helpers import drain, events

pytestmark = pytest.mark.integration

COLUMNS = {
    "n": "numeric",
    "n2": "numeric(12,4)",
    "f8": "double precision",
    "f4": "real",
    "i8": "bigint",
    "i2": "smallint",
    "ts": "timestamp",
    "tstz": "timestamptz",
    "d": "date",
    "u": "uuid",
    "j": "json",
    "jb": "jsonb",
    "b": "bytea",
    "arr": "int[]",
    "tarr": "text[]",
    "flag": "boolean",
    "t": "text",
    "c": "char(4)",
    "tm": "time",
}

texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
finite_or_special = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e300, -1e-300, 5e-324]),
)
decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: d.adjusted() < 100 and d.as_tuple().exponent >= -50  # type: ignore[operator]
) | st.sampled_from([decimal.Decimal("NaN"), decimal.Decimal("1.10"), decimal.Decimal("-0.000")])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
timestamps = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31))
zones = st.sampled_from(["UTC", "Asia/Kolkata", "America/St_Johns", "Europe/Paris"])


def _nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


rows = st.fixed_dictionaries(
    {
        "n": _nullable(decimals),
        "n2": _nullable(
            st.decimals(min_value=-(10**7), max_value=10**7, places=4, allow_nan=False)
        ),
        "f8": _nullable(finite_or_special),
        "f4": _nullable(st.floats(width=32, allow_nan=True)),
        "i8": _nullable(st.integers(-(2**63), 2**63 - 1)),
        "i2": _nullable(st.integers(-(2**15), 2**15 - 1)),
        "ts": _nullable(timestamps),
        "tstz": _nullable(st.builds(lambda t: t.replace(tzinfo=dt.UTC), timestamps)),
        "d": _nullable(st.dates()),
        "u": _nullable(st.uuids()),
        "j": _nullable(
            st.sampled_from(
                ['{"a":1,"a":2}', "[1, 2 ,3]", ' "x" ', "null", '{"z": {}, "b": [true]}']
            )
        ),
        "jb": _nullable(json_values),
        "b": _nullable(st.binary(max_size=16)),
        "arr": _nullable(st.lists(_nullable(st.integers(-(2**31), 2**31 - 1)), max_size=4)),
        "tarr": _nullable(
            st.lists(
                _nullable(st.sampled_from(["", "NULL", "a,b", '"q"', "\\", "{x}"]) | texts),
                max_size=4,
            )
        ),
        "flag": _nullable(st.booleans()),
        "t": _nullable(st.sampled_from(["", " ", "NULL", "\\N", "a\tb", "é", "e\u0301"]) | texts),
        "c": _nullable(st.sampled_from(["", "ab", "abcd"])),
        "tm": _nullable(st.times()),
    }
)


def _same(column: str, sent: Any, got: Any) -> bool:
    if sent is None or got is None:
        return sent is None and got is None
    if isinstance(sent, float):
        if math.isnan(sent):
            return isinstance(got, float) and math.isnan(got)
        return (
            isinstance(got, float)
            and got == sent
            and math.copysign(1, got) == math.copysign(1, sent)
        )
    if isinstance(sent, decimal.Decimal):
        return isinstance(got, decimal.Decimal) and (str(got) == str(sent))
    return bool(got == sent) and type(got) is type(sent)


@settings(max_examples=12, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(batch=st.lists(rows, min_size=1, max_size=12), zone=zones)
def test_round_trip_of_every_type_is_exact(
    batch: list[dict[str, Any]], zone: str, source_engine: Engine, source_schema: str, make_config
) -> None:
    table = f"types_{uuid.uuid4().hex[:8]}"
    cols = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".{table} (id int PRIMARY KEY, {cols})'))
    config = make_config([f"{source_schema}.{table}"])
    capture.install(source_engine, config)
    url = source_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    names = ", ".join(COLUMNS)
    marks = ", ".join(["%s"] * (len(COLUMNS) + 1))
    with psycopg.connect(url, options=f"-c timezone={zone}") as conn:
        for i, row in enumerate(batch):
            values = [row[c] for c in COLUMNS]
            values[list(COLUMNS).index("jb")] = None if row["jb"] is None else Jsonb(row["jb"])
            conn.execute(
                f'INSERT INTO "{source_schema}".{table} (id, {names}) VALUES ({marks})',
                [i, *values],
            )
        conn.commit()
        # what PostgreSQL actually stored (float4 rounding, numeric(12,4) scale, char padding)
        stored = {
            r[0]: dict(zip(COLUMNS, r[1:], strict=True))
            for r in conn.execute(
                f'SELECT id, {", ".join(c if c != "j" else "j::text" for c in COLUMNS)} FROM "{source_schema}".{table}'
            )
        }
    drain(source_engine, config)
    got = {e.key["id"]: e for e in events(config) if e.op == "insert"}
    assert set(got) == set(stored)
    for key, expected in stored.items():
        image = got[key].row
        assert image is not None
        for column, value in expected.items():
            if column == "jb" and value is not None:
                assert json.dumps(image[column], sort_keys=True, default=str) == json.dumps(
                    json.loads(json.dumps(value), parse_float=decimal.Decimal),
                    sort_keys=True,
                    default=str,
                ), column
                continue
            assert _same(column, value, image[column]), (column, value, image[column])
    capture.uninstall(source_engine, config)


def test_null_empty_string_and_null_lookalikes_stay_distinct(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".t (id int PRIMARY KEY, v text)'))
    config = make_config([f"{source_schema}.t"])
    capture.install(source_engine, config)
    values = [None, "", "NULL", "null", "\\N", " "]
    with source_engine.begin() as conn:
        for i, v in enumerate(values):
            conn.execute(text(f'INSERT INTO "{source_schema}".t VALUES (:i, :v)'), {"i": i, "v": v})
    drain(source_engine, config)
    assert [e.row["v"] for e in events(config) if e.row is not None] == values


def test_json_column_text_is_kept_verbatim(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(
            text(f'CREATE TABLE "{source_schema}".t (id int PRIMARY KEY, j json, jb jsonb)')
        )
    config = make_config([f"{source_schema}.t"])
    capture.install(source_engine, config)
    raw = '{"b": 1,  "a": [1.50, 2e3], "a": null}'
    with source_engine.begin() as conn:
        conn.execute(
            text(f'INSERT INTO "{source_schema}".t VALUES (1, :j, :jb)'), {"j": raw, "jb": raw}
        )
    drain(source_engine, config)
    (event,) = events(config)
    assert event.row is not None
    assert event.row["j"] == raw
    assert event.row["jb"] == {"a": None, "b": 1}
