"""Seeded drift of every category is found exactly, no more and no less, by the segment
checksums inside both databases AND by the streaming comparison in Python, including values
that are equal though written differently (numeric scale, -0.0, NaN, time zones, jsonb key
order, char padding, non-ASCII text through a SQL form that cannot decide it)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg.types.json import Jsonb
from sqlalchemy import Engine, text

from dualwrite import capture
from dualwrite.transform import Transforms, load_transforms
from reconcile import reconcile
from reconcile._segments import Tuning, _array_text, differing_keys
from reconcile._session import connect

pytestmark = pytest.mark.integration

ROWS = 3000
SOURCE_DDL = """CREATE TABLE {s}.items (id bigint PRIMARY KEY, name text, email text, cents bigint,
 price numeric(12,3), ratio double precision, seen timestamptz, local_ts timestamp, doc jsonb,
 blob bytea, tags text[], code char(4), note text)"""
TARGET_DDL = """CREATE TABLE {s}.items (id bigint PRIMARY KEY, title varchar(60), email text,
 cents numeric(14,2), price numeric, ratio double precision, seen timestamptz, local_ts timestamptz,
 doc jsonb, blob bytea, tags text[], code char(4), origin text)"""
SOURCE_COLUMNS = (
    "id",
    "name",
    "email",
    "cents",
    "price",
    "ratio",
    "seen",
    "local_ts",
    "doc",
    "blob",
    "tags",
    "code",
    "note",
)

EXPECTED = {
    ("[10]", "missing"),
    ("[20]", "missing"),
    ("[100001]", "extra"),
    *{(f"[{i}]", "mismatch") for i in (30, 40, 41, 50, 60, 70, 72, 80, 90, 95, 96, 98, 99)},
}


def _source_row(i: int) -> tuple[Any, ...]:
    name = {41: "NULL", 96: "Ame\u0301lie"}.get(i, f'name {i}, "quoted"')
    email = None if i == 40 else (f"ÉMILE{i}@X" if i % 7 == 0 else f"User{i}@X")
    ratio = {60: float("nan"), 61: 0.0, 62: float("nan")}.get(i, i / 8)
    seen = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i * 7919, microseconds=i)
    local = dt.datetime(2024, 3, 31, 0, 0) + dt.timedelta(minutes=i)  # crosses the DST jump
    doc = {"b": i, "a": [1, {"x": "y,z"}], "n": None}
    tags = ["a,b"] if i == 95 else ["t", str(i), ""]
    return (
        i,
        name,
        email,
        i * 137,
        Decimal(i) / 10 + Decimal("0.100"),
        ratio,
        seen,
        local,
        Jsonb(doc),
        bytes([i % 256, 0, 255]),
        tags,
        "ab",
        "dropped",
    )


def _drift(conn: psycopg.Connection[Any], s: str) -> None:
    t = f'"{s}".items'
    for statement in (
        f"DELETE FROM {t} WHERE id IN (10, 20)",
        f"INSERT INTO {t} (id, title) VALUES (100001, 'ghost')",
        f"UPDATE {t} SET title = title || ' ' WHERE id = 30",
        f"UPDATE {t} SET email = '' WHERE id = 40",
        f"UPDATE {t} SET title = NULL WHERE id = 41",
        f"UPDATE {t} SET cents = cents + 0.01 WHERE id = 50",
        f"UPDATE {t} SET ratio = 0 WHERE id = 60",
        f"UPDATE {t} SET ratio = '-0' WHERE id = 61",  # equal: -0.0 == 0.0
        f"UPDATE {t} SET seen = seen + interval '1 microsecond' WHERE id = 70",
        f"UPDATE {t} SET local_ts = local_ts + interval '1 hour' WHERE id = 72",
        f"""UPDATE {t} SET doc = jsonb_set(doc, '{{b}}', '"80"') WHERE id = 80""",
        f"UPDATE {t} SET blob = '\\x00' WHERE id = 90",
        f"UPDATE {t} SET tags = ARRAY['a', 'b'] WHERE id = 95",
        f"UPDATE {t} SET title = 'Am\u00e9lie' WHERE id = 96",
        f"UPDATE {t} SET email = upper(email) WHERE id = 98",
        f"UPDATE {t} SET code = 'ac' WHERE id = 99",
        f"UPDATE {t} SET price = price::numeric(20,6) WHERE id < 500",  # scale only: equal
    ):
        conn.execute(statement)
    conn.commit()


@pytest.fixture
def declared(
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
    make_config: Any,
) -> tuple[Any, Transforms]:
    with source_engine.begin() as c:
        c.execute(text(SOURCE_DDL.format(s=f'"{source_schema}"')))
    with target_engine.begin() as c:
        c.execute(text(TARGET_DDL.format(s=f'"{target_schema}"')))
    config = make_config([f"{source_schema}.items"])
    table = dataclasses.replace(
        config.tables[0],
        target=dataclasses.replace(config.tables[0].target, schema=target_schema),
        rename={"name": "title"},
        drop=("note",),
        constants={"origin": "legacy"},
        convert={"email": "lower", "cents": "cents_to_numeric", "local_ts": "zone:Europe/Berlin"},
    )
    config = dataclasses.replace(config, tables=(table,))
    transforms = load_transforms(config)
    rows = [_source_row(i) for i in range(1, ROWS + 1)]
    with connect(source_engine) as src, src.cursor() as cur:
        with cur.copy(f'COPY "{source_schema}".items FROM STDIN') as copy:
            for r in rows:
                copy.write_row(r)
        src.commit()
    capture.install(source_engine, config)
    label = str(table.source)
    with connect(target_engine) as dst, dst.cursor() as cur:
        columns = None
        with connect(source_engine) as src:
            images = src.execute(
                f'SELECT row_to_json(t)::text FROM "{source_schema}".items t ORDER BY id'
            ).fetchall()
        from dualwrite.snapshot import decode_image, source_shape

        shape = source_shape(src := connect(source_engine), table)
        src.close()
        for (image,) in images:
            row = decode_image(image, shape.types)
            (op,) = transforms.apply(label, "read", {"id": row["id"]}, row, 0)
            assert op.values is not None
            values = dict(op.values)
            values["doc"] = (
                Jsonb(json.loads(values["doc"]))
                if isinstance(values["doc"], str)
                else Jsonb(values["doc"])
            )
            if columns is None:
                columns = list(values)
                copy_sql = f'COPY "{target_schema}".items ({", ".join(columns)}) FROM STDIN'
                copier = cur.copy(copy_sql)
                copy = copier.__enter__()
            copy.write_row([values[c] for c in columns])
        copier.__exit__(None, None, None)
        dst.commit()
        _drift(dst, target_schema)
    return config, transforms


def _found(result: Any) -> set[tuple[str, str]]:
    return {(d.key, d.category) for d in result.differences}


@pytest.mark.parametrize(
    "tuning",
    [
        Tuning(leaf_rows=40, fanout=4, max_segments=16),  # descends several levels
        Tuning(leaf_rows=40, max_segments=64, many=0.0),  # falls back to the merge of hashes
        Tuning(),  # one leaf per differing segment
        Tuning(leaf_rows=40, probes=4, many=-1.0),  # the probe says "most differ": merge all
        # leaf pairs packed into one bytea per leaf and compared by numpy (integer keys)
        Tuning(leaf_rows=40, probes=4, many=-1.0, packed_rows=0),
        Tuning(leaf_rows=40, fanout=4, max_segments=16, packed_rows=0),
        # the first level read in 3 ranges of heap blocks per side, their checksums combined
        Tuning(leaf_rows=40, probes=0, parts=3, part_blocks=1),
    ],
)
def test_segment_checksums_find_seeded_drift_exactly(
    declared: tuple[Any, Transforms], source_engine: Engine, target_engine: Engine, tuning: Tuning
) -> None:
    config, transforms = declared
    result = reconcile(
        source_engine, target_engine, config, transforms, wait_s=5, tuning=tuning, workers=3
    )
    assert [t.method for t in result.tables] == ["segments"]
    assert _found(result) == EXPECTED
    by_key = {d.key: d for d in result.differences}
    assert by_key["[40]"].columns == {"email": (None, "")}
    assert by_key["[41]"].columns == {"title": ("NULL", None)}
    assert set(by_key["[72]"].columns) == {"local_ts"}
    assert (result.tables[0].expected_rows, result.tables[0].target_rows) == (ROWS, ROWS - 1)


def test_packed_pairs_yield_the_keys_whose_hash_differs_or_that_one_side_lacks() -> None:
    src = np.array([[5, 50], [1, 10], [3, 30], [7, 70]], dtype=np.int64)
    dst = np.array([[3, 31], [1, 10], [9, 90], [7, 70]], dtype=np.int64)
    assert sorted(differing_keys(src, dst).tolist()) == [3, 5, 9]
    assert differing_keys(src, src).size == 0
    empty = np.empty((0, 2), dtype=np.int64)
    assert sorted(differing_keys(src, empty).tolist()) == [1, 3, 5, 7]


def test_boundaries_travel_as_one_array_literal_whatever_their_text(
    source_engine: Engine,
) -> None:
    keys = ['a"b', "c\\d", "x,y", "{}", " ", "", "NULL", "é", "'"]
    with connect(source_engine) as conn:
        row = conn.execute("SELECT %s::text[]", (_array_text(keys),)).fetchone()
    assert row is not None and row[0] == keys


def test_streaming_comparison_finds_the_same_drift_with_spilled_partitions(
    declared: tuple[Any, Transforms], source_engine: Engine, target_engine: Engine
) -> None:
    config, transforms = declared
    result = reconcile(
        source_engine,
        target_engine,
        config,
        transforms,
        wait_s=5,
        segments=False,
        bucket_rows=400,
        chunk_rows=250,
    )
    assert [t.method for t in result.tables] == ["stream"]
    assert _found(result) == EXPECTED
    assert (result.tables[0].expected_rows, result.tables[0].target_rows) == (ROWS, ROWS - 1)


SQL_FORM = {
    "id": "id",
    "title": "name",
    "email": "lower(email)",
    "cents": "cents::numeric / 100",
    "price": "price",
    "ratio": "ratio",
    "seen": "seen",
    "local_ts": "local_ts AT TIME ZONE 'Europe/Berlin'",
    "doc": "doc",
    "blob": "blob",
    "tags": "tags",
    "code": "code",
    "origin": "'legacy'",
}


def _python_transform(config: Any, declared: Transforms, form: dict[str, str] | None) -> Transforms:
    """The declared transform's function as Python code, with an optional SQL form."""
    label, target = str(config.tables[0].source), str(config.tables[0].target)
    transforms = Transforms()
    transforms.target(target, key=["id"])
    transforms.source(label, targets={target: {"id": "id"}})(declared.sources[label].function)
    if form is not None:
        transforms.sql_form(label, target, form)
    return transforms


@pytest.mark.parametrize(
    ("form", "method"),
    [
        (None, "stream"),  # Python code without a SQL form
        (SQL_FORM, "segments"),  # a SQL form that agrees with the function on the sample
        ({**SQL_FORM, "title": "upper(name)"}, "stream"),  # one that does not: not used
    ],
)
def test_a_user_sql_form_is_used_only_when_it_agrees_with_the_python_transform(
    declared: tuple[Any, Transforms],
    source_engine: Engine,
    target_engine: Engine,
    form: dict[str, str] | None,
    method: str,
) -> None:
    config, declared_transforms = declared
    transforms = _python_transform(config, declared_transforms, form)
    result = reconcile(source_engine, target_engine, config, transforms, wait_s=5)
    assert [t.method for t in result.tables] == [method]
    assert _found(result) == EXPECTED
