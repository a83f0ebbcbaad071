"""capture install / uninstall / status on the real source database."""

from __future__ import annotations

import pytest
from psycopg import sql
from sqlalchemy import Engine, text

from dualwrite import capture
from dualwrite.capture import CaptureError
from tests.capture.helpers import drain, events

pytestmark = pytest.mark.integration


def _triggers(engine: Engine, schema: str, table: str) -> list[str]:
    with engine.connect() as conn:
        return sorted(
            conn.execute(
                text(
                    "SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = :s AND c.relname = :t AND NOT t.tgisinternal"
                ),
                {"s": schema, "t": table},
            ).scalars()
        )


def _objects_in(engine: Engine, schema: str) -> list[str]:
    with engine.connect() as conn:
        rels = conn.execute(
            text(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s"
            ),
            {"s": schema},
        ).scalars()
        fns = conn.execute(
            text(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = :s"
            ),
            {"s": schema},
        ).scalars()
        return sorted([*rels, *fns])


def test_install_is_idempotent_and_uninstall_removes_exactly_what_it_created(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".a (id int PRIMARY KEY, v text)'))
        conn.execute(
            text(
                f'CREATE TRIGGER user_trigger BEFORE UPDATE ON "{source_schema}".a FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()'
            )
        )
    config = make_config([f"{source_schema}.a"])
    cap = config.capture.schema
    capture.install(source_engine, config)
    first = (_triggers(source_engine, source_schema, "a"), _objects_in(source_engine, cap))
    capture.install(source_engine, config)
    assert (_triggers(source_engine, source_schema, "a"), _objects_in(source_engine, cap)) == first
    assert first[0] == sorted([f"{cap}_capture", f"{cap}_no_truncate", "user_trigger"])

    assert capture.uninstall(source_engine, config) == (f"{source_schema}.a",)
    assert _triggers(source_engine, source_schema, "a") == ["user_trigger"]
    with source_engine.connect() as conn:
        assert (
            conn.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": cap}).scalar()
            is None
        )
    assert capture.uninstall(source_engine, config) == ()


def test_uninstall_keeps_a_schema_it_did_not_create(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".a (id int PRIMARY KEY)'))
    config = make_config([f"{source_schema}.a"])
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{config.capture.schema}"'))
        conn.execute(text(f'CREATE TABLE "{config.capture.schema}".users_own (x int)'))
    capture.install(source_engine, config)
    capture.uninstall(source_engine, config)
    assert _objects_in(source_engine, config.capture.schema) == ["users_own"]
    with source_engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{config.capture.schema}" CASCADE'))


def test_table_without_primary_key_or_declared_key_is_refused(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".nokey (a int, b text)'))
    config = make_config([f"{source_schema}.nokey"])
    with pytest.raises(
        CaptureError, match=r"has no primary key and the migration file declares no key"
    ):
        capture.install(source_engine, config)
    with source_engine.connect() as conn:  # all or nothing: no schema left behind
        assert (
            conn.execute(
                text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": config.capture.schema}
            ).scalar()
            is None
        )


def test_declared_key_needs_a_unique_not_null_index(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(
            text(f'CREATE TABLE "{source_schema}".t (a int NOT NULL, b int NOT NULL, c int)')
        )
    config = make_config([{"source": f"{source_schema}.t", "key": ["a", "b"]}])
    with pytest.raises(CaptureError, match="no unique index covers exactly the key"):
        capture.install(source_engine, config)
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE UNIQUE INDEX ON "{source_schema}".t (b, a)'))
    capture.install(source_engine, config)
    config_nullable = make_config([{"source": f"{source_schema}.t", "key": ["c"]}])
    with pytest.raises(CaptureError, match="allow NULL"):
        capture.install(source_engine, config_nullable)


def test_missing_table_is_named(source_engine: Engine, source_schema: str, make_config) -> None:
    config = make_config([f"{source_schema}.absent"])
    with pytest.raises(CaptureError, match=rf"{source_schema}\.absent does not exist"):
        capture.install(source_engine, config)


def test_truncate_is_refused_and_nothing_is_lost(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".t (id int PRIMARY KEY)'))
    config = make_config([f"{source_schema}.t"])
    capture.install(source_engine, config)
    with source_engine.begin() as conn:
        conn.execute(text(f'INSERT INTO "{source_schema}".t VALUES (1), (2)'))
    with (
        pytest.raises(Exception, match=r"TRUNCATE of .* is refused"),
        source_engine.begin() as conn,
    ):
        conn.execute(text(f'TRUNCATE "{source_schema}".t'))
    with source_engine.connect() as conn:
        assert conn.execute(text(f'SELECT count(*) FROM "{source_schema}".t')).scalar() == 2


def test_uninstall_refuses_while_changes_are_unrelayed(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".t (id int PRIMARY KEY)'))
    config = make_config([f"{source_schema}.t"])
    capture.install(source_engine, config)
    with source_engine.begin() as conn:
        conn.execute(text(f'INSERT INTO "{source_schema}".t VALUES (1)'))
    with pytest.raises(CaptureError, match="still holds 1 change"):
        capture.uninstall(source_engine, config)
    st = capture.status(source_engine, config)
    assert st.backlog == 1 and st.tables[0].installed
    drain(source_engine, config)
    assert capture.uninstall(source_engine, config) == (f"{source_schema}.t",)


def test_status_reports_schema_drift(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".t (id int PRIMARY KEY, v text)'))
    config = make_config([f"{source_schema}.t"])
    capture.install(source_engine, config)
    assert capture.status(source_engine, config).tables[0].schema_drift == ()
    with source_engine.begin() as conn:
        conn.execute(
            text(
                f'ALTER TABLE "{source_schema}".t ADD COLUMN extra int, ALTER COLUMN v TYPE varchar(10)'
            )
        )
    assert capture.status(source_engine, config).tables[0].schema_drift == ("extra", "v")


HOSTILE_SCHEMA = 'we"ird; DROP TABLE x; --'
HOSTILE_TABLE = "o'rders\"; DELETE FROM y; --:name%s"


def test_hostile_identifiers_are_data_not_sql(source_engine: Engine, make_config) -> None:
    schema_id, table_id = sql.Identifier(HOSTILE_SCHEMA), sql.Identifier(HOSTILE_TABLE)
    raw = source_engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema_id))
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(schema_id))
            cur.execute(
                sql.SQL('CREATE TABLE {}.{} ({} int PRIMARY KEY, "v;--" text)').format(
                    schema_id, table_id, sql.Identifier('i"d')
                )
            )
        raw.commit()
        quoted = (
            '"' + HOSTILE_SCHEMA.replace('"', '""') + '"."' + HOSTILE_TABLE.replace('"', '""') + '"'
        )
        config = make_config([quoted])
        capture.install(source_engine, config)
        capture.install(source_engine, config)
        with raw.cursor() as cur:
            cur.execute(
                sql.SQL("INSERT INTO {}.{} VALUES (1, 'x'), (2, NULL)").format(schema_id, table_id)
            )
            cur.execute(
                sql.SQL('UPDATE {}.{} SET {} = 3 WHERE "v;--" IS NULL').format(
                    schema_id, table_id, sql.Identifier('i"d')
                )
            )
            cur.execute(
                sql.SQL("DELETE FROM {}.{} WHERE {} = 1").format(
                    schema_id, table_id, sql.Identifier('i"d')
                )
            )
        raw.commit()
        drain(source_engine, config)
        got = [(e.op, dict(e.key)) for e in events(config)]
        assert got == [
            ("insert", {'i"d': 1}),
            ("insert", {'i"d': 2}),
            ("delete", {'i"d': 2}),
            ("insert", {'i"d': 3}),
            ("delete", {'i"d': 1}),
        ]
        assert {e.source for e in events(config)} == {str(config.tables[0].source)}
        capture.uninstall(source_engine, config)
    finally:
        with raw.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema_id))
        raw.commit()
        raw.close()
