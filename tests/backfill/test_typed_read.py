"""The backfill's typed read hands the transforms exactly what the envelope path would.

``snapshot.typed_chunks`` reads ``TYPED_READ`` columns as psycopg loads them and the others as
the JSON text of the value; ``snapshot.chunk_queries`` reads ``row_to_json`` images that the
envelope decoders decode (what the stream's events carry). For every row, both must give the
same Python type, value and ``tzinfo``; a value psycopg cannot load must raise
``psycopg.DataError`` (the backfill then reads that chunk as images), never load as
something else.
"""

from __future__ import annotations

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

from dualwrite.config import QualifiedName, TableConfig
from dualwrite.snapshot import chunk_queries, connect, decode_image, source_shape, typed_chunks
from tests.capture.test_type_fidelity import COLUMNS, rows

pytestmark = pytest.mark.integration

EXTRA = {  # a domain and an enum (named per table): the shape names the domain's base type
    "stamp": "stamp_{tag}",
    "mood": "mood_{tag}",
    "money_": "money",
    "span": "interval",
}


def _fingerprint(value: Any) -> tuple[str, str, Any]:
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan", None)
    if isinstance(value, dict | list):
        return (type(value).__name__, repr(value), None)
    return (type(value).__name__, repr(value), getattr(value, "tzinfo", None))


def _both_ways(engine: Engine, schema: str, table: str) -> tuple[list[dict[str, Any]], list[Any]]:
    # the backfill's own session (``snapshot.connect``): TYPED_READ holds on its settings
    with connect(engine, "dw-test-typed-read") as conn:
        shape = source_shape(
            conn, TableConfig(QualifiedName(schema, table), QualifiedName(schema, table))
        )
        first, _ = chunk_queries(shape, 1000)
        reference = [decode_image(image, shape.types) for _k, image in conn.execute(first)]
        typed = typed_chunks(shape, 1000)
        got = conn.execute(typed.first, binary=True).fetchall()
        conn.commit()
        keys = [
            json.loads(typed.last_key(row)) for row in got
        ]  # the same key, maybe not the same text
        assert keys == [json.loads(k) for k, _i in conn.execute(first)]
        return reference, [typed.record(row) for row in got]


def _create(engine: Engine, schema: str) -> str:
    tag = uuid.uuid4().hex[:8]
    kinds = {**COLUMNS, **{c: k.format(tag=tag) for c, k in EXTRA.items()}}
    cols = ", ".join(
        f'{name} "{schema}".{kind}' if tag in kind else f"{name} {kind}"
        for name, kind in kinds.items()
    )
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE DOMAIN \"{schema}\".stamp_{tag} AS timestamp CHECK (VALUE > '1000-01-01')"
            )
        )
        conn.execute(text(f"CREATE TYPE \"{schema}\".mood_{tag} AS ENUM ('ok', 'sad')"))
        conn.execute(text(f'CREATE TABLE "{schema}".typed_{tag} (id int PRIMARY KEY, {cols})'))
    return f"typed_{tag}"


@settings(max_examples=15, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(batch=st.lists(rows, min_size=1, max_size=15), zone=st.sampled_from(["UTC", "Asia/Kolkata"]))
def test_typed_read_equals_the_envelope_decoding_value_by_value(
    batch: list[dict[str, Any]], zone: str, source_engine: Engine, source_schema: str
) -> None:
    table = _create(source_engine, source_schema)
    url = source_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    names = ", ".join([*COLUMNS, *EXTRA])
    marks = ", ".join(["%s"] * (len(COLUMNS) + len(EXTRA) + 1))
    with psycopg.connect(url, options=f"-c timezone={zone}") as conn:
        for i, row in enumerate(batch):
            values = [row[c] for c in COLUMNS]
            values[list(COLUMNS).index("jb")] = None if row["jb"] is None else Jsonb(row["jb"])
            extra = [
                row["ts"] if row["ts"] and row["ts"].year > 1000 else None,
                "sad",
                "12.5",
                "1 day 02:00",
            ]
            conn.execute(
                f'INSERT INTO "{source_schema}".{table} (id, {names}) VALUES ({marks})',
                [i, *values, *extra],
            )
        conn.commit()
    reference, typed = _both_ways(source_engine, source_schema, table)
    assert len(reference) == len(typed) == len(batch)
    for want, got in zip(reference, typed, strict=True):
        assert list(got) == list(want)
        for column in want:
            assert _fingerprint(got[column]) == _fingerprint(want[column]), column


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("timestamp", "infinity"),
        ("timestamptz", "-infinity"),
        ("date", "infinity"),
        ("timestamp", "12000-01-01"),
    ],
)
def test_a_value_psycopg_cannot_load_raises_instead_of_loading_as_something_else(
    kind: str, value: str, source_engine: Engine, source_schema: str
) -> None:
    table = f"odd_{uuid.uuid4().hex[:8]}"
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".{table} (id int PRIMARY KEY, v {kind})'))
        conn.execute(text(f"INSERT INTO \"{source_schema}\".{table} VALUES (1, '{value}')"))
    with connect(source_engine, "dw-test-typed-read") as conn:
        shape = source_shape(
            conn,
            TableConfig(QualifiedName(source_schema, table), QualifiedName(source_schema, table)),
        )
        with pytest.raises(psycopg.DataError):
            conn.execute(typed_chunks(shape, 10).first, binary=True).fetchall()
