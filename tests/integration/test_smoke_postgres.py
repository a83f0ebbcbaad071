"""The real databases: both answer through SQLAlchemy and psycopg, with logical WAL."""

from __future__ import annotations

import datetime as dt
import decimal

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from dualwrite import DatabaseConfig, make_engine
from tests.conftest import Services

pytestmark = pytest.mark.integration


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.mark.parametrize("side", ["source", "target"])
def test_write_and_read_through_sqlalchemy(side: str, request: pytest.FixtureRequest) -> None:
    engine: Engine = request.getfixturevalue(f"{side}_engine")
    schema: str = request.getfixturevalue(f"{side}_schema")
    with engine.begin() as conn:
        conn.execute(
            text(
                f'CREATE TABLE "{schema}".t (id int PRIMARY KEY, amount numeric(12,2), at timestamptz)'
            )
        )
        conn.execute(
            text(f'INSERT INTO "{schema}".t VALUES (1, 12.30, :at)'),
            {"at": dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)},
        )
    with engine.connect() as conn:
        row = conn.execute(text(f'SELECT id, amount, at FROM "{schema}".t')).one()
    assert row == (1, decimal.Decimal("12.30"), dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC))


@pytest.mark.parametrize("side", ["source", "target"])
def test_write_and_read_through_psycopg_copy(
    side: str, services: Services, request: pytest.FixtureRequest
) -> None:
    schema: str = request.getfixturevalue(f"{side}_schema")
    url = services.source_url if side == "source" else services.target_url
    with psycopg.connect(_libpq(url)) as conn:
        conn.execute(f'CREATE TABLE "{schema}".t (id int PRIMARY KEY, note text)')
        with conn.cursor().copy(f'COPY "{schema}".t (id, note) FROM STDIN') as copy:
            for i in range(1000):
                copy.write_row((i, None if i % 10 == 0 else f"n{i}"))
        conn.commit()
        count, nulls = conn.execute(
            f'SELECT count(*), count(*) FILTER (WHERE note IS NULL) FROM "{schema}".t'
        ).fetchone() or (0, 0)
    assert (count, nulls) == (1000, 100)


def test_source_and_target_are_different_databases(
    source_engine: Engine, target_engine: Engine
) -> None:
    with source_engine.connect() as s, target_engine.connect() as t:
        assert (
            s.execute(text("SELECT current_database()")).scalar()
            != t.execute(text("SELECT current_database()")).scalar()
        )


def test_wal_level_is_logical_for_later_log_based_capture(source_engine: Engine) -> None:
    with source_engine.connect() as conn:
        assert conn.execute(text("SHOW wal_level")).scalar() == "logical"


def test_make_engine_pins_utc_session(services: Services) -> None:
    engine = make_engine(DatabaseConfig(services.source_url))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW timezone")).scalar() == "UTC"
    finally:
        engine.dispose()
