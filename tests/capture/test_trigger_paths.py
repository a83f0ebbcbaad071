"""The row trigger's branches: what each kind of UPDATE records, and that the writer's
search_path cannot change what the trigger does."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text

from dualwrite import MigrationConfig, capture
from dualwrite.capture._ddl import function_name
from tests.capture.helpers import drain, events, messages

pytestmark = pytest.mark.integration


def _table(engine: Engine, schema: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(f'CREATE TABLE "{schema}".t (a int, b text, v int, note text, PRIMARY KEY (a, b))')
        )


def _captured_table(engine: Engine, schema: str, make_config: Any) -> MigrationConfig:
    """The test table, captured; the migration that captures it."""
    _table(engine, schema)
    config: MigrationConfig = make_config([f"{schema}.t"])
    capture.install(engine, config)
    return config


def test_update_that_leaves_the_key_alone_is_one_update_with_the_full_row(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    config = _captured_table(source_engine, source_schema, make_config)
    with source_engine.begin() as conn:
        conn.execute(text(f"INSERT INTO \"{source_schema}\".t VALUES (1, 'x', 10, 'n')"))
    with source_engine.begin() as conn:
        conn.execute(text(f'UPDATE "{source_schema}".t SET v = 11 WHERE a = 1'))
        # the key columns assigned their own values: still not a key change
        conn.execute(text(f'UPDATE "{source_schema}".t SET a = a, b = b, note = NULL'))
    drain(source_engine, config)
    got = [(e.op, dict(e.key), dict(e.row or {})) for e in events(config)]
    assert got == [
        ("insert", {"a": 1, "b": "x"}, {"a": 1, "b": "x", "v": 10, "note": "n"}),
        ("update", {"a": 1, "b": "x"}, {"a": 1, "b": "x", "v": 11, "note": "n"}),
        ("update", {"a": 1, "b": "x"}, {"a": 1, "b": "x", "v": 11, "note": None}),
    ]
    assert {m.key for m in messages(config)} == {f'{source_schema}.t:[1, "x"]'.encode()}


def test_multi_row_key_change_is_a_delete_then_an_insert_per_row(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    config = _captured_table(source_engine, source_schema, make_config)
    with source_engine.begin() as conn:
        conn.execute(text(f"INSERT INTO \"{source_schema}\".t VALUES (1, 'x', 1), (2, 'x', 2)"))
    with source_engine.begin() as conn:
        # one key column changes in one row only; the other row keeps its key
        conn.execute(
            text(
                f"UPDATE \"{source_schema}\".t SET b = CASE a WHEN 1 THEN 'y' ELSE b END, v = v + 10"
            )
        )
    drain(source_engine, config)
    after_inserts = [(e.op, dict(e.key), e.row and e.row["v"]) for e in events(config)][2:]
    assert sorted(after_inserts, key=repr) == sorted(
        [
            ("delete", {"a": 1, "b": "x"}, None),
            ("insert", {"a": 1, "b": "y"}, 11),
            ("update", {"a": 2, "b": "x"}, 12),
        ],
        key=repr,
    )
    ops_of_row_1 = [e.op for e in events(config) if e.key["a"] == 1]
    assert ops_of_row_1 == ["insert", "delete", "insert"]


def test_writer_search_path_cannot_change_what_is_captured(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    """A schema ahead of pg_catalog with look-alike operators and functions: the trigger
    (which has no SET search_path clause, for speed) uses only pg_catalog's."""
    _table(source_engine, source_schema)
    evil = f"{source_schema}_evil"
    config = make_config([f"{source_schema}.t"])
    capture.install(source_engine, config)
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{evil}"'))
        conn.execute(
            text(
                f'CREATE FUNCTION "{evil}".never(int, int) RETURNS boolean '
                "LANGUAGE sql AS 'SELECT false'"
            )
        )
        conn.execute(
            text(
                f'CREATE OPERATOR "{evil}".= (LEFTARG = int, RIGHTARG = int, FUNCTION = "{evil}".never)'
            )
        )
        conn.execute(
            text(
                f'CREATE FUNCTION "{evil}".cat(text, text) RETURNS text '
                "LANGUAGE sql AS $$SELECT 'hijacked'$$"
            )
        )
        conn.execute(
            text(
                f'CREATE OPERATOR "{evil}".|| (LEFTARG = text, RIGHTARG = text, FUNCTION = "{evil}".cat)'
            )
        )
        conn.execute(
            text(
                f'CREATE FUNCTION "{evil}".json_build_object(text, int, text, text) RETURNS json '
                """LANGUAGE sql AS $$SELECT '{"hijacked": true}'::json$$"""
            )
        )
        conn.execute(
            text(
                f'CREATE FUNCTION "{evil}".current_setting(text, boolean) RETURNS text '
                "LANGUAGE sql AS $$SELECT 'dualwrite'$$"
            )
        )
    try:
        with source_engine.begin() as conn:
            conn.execute(text(f'SET LOCAL search_path = "{evil}", pg_catalog, public'))
            conn.execute(text(f"INSERT INTO \"{source_schema}\".t VALUES (1, 'x', 10)"))
            conn.execute(text(f'UPDATE "{source_schema}".t SET v = 11'))
        drain(source_engine, config)
        got = [(e.op, dict(e.key), e.row and e.row["v"]) for e in events(config)]
        assert got == [
            ("insert", {"a": 1, "b": "x"}, 10),
            ("update", {"a": 1, "b": "x"}, 11),
        ]
        assert {m.key for m in messages(config)} == {f'{source_schema}.t:[1, "x"]'.encode()}
    finally:
        with source_engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{evil}" CASCADE'))


def test_trigger_function_carries_no_per_call_settings(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    """A SET clause on the function would be applied and undone on every captured row."""
    _table(source_engine, source_schema)
    config = make_config([f"{source_schema}.t"])
    (shape,) = capture.install(source_engine, config)
    with source_engine.connect() as conn:
        proconfig = conn.execute(
            text(
                "SELECT p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = :s AND p.proname = :f"
            ),
            {"s": config.capture.schema, "f": function_name(shape.relid)},
        ).one()[0]
    assert proconfig is None
