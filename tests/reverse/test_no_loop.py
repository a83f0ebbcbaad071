"""No replication loop in either direction, with declared transforms and their automatic inverse.

The forward worker's applies to the new tables are not captured by the reverse triggers there,
the reverse worker's applies to the old tables are not captured by the forward triggers, and
application writes on either side still are.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import Engine, text

from dualwrite import capture
from dualwrite.origin import MARK_TOOLKIT_WRITE
from tests.reverse.conftest import MakePair, Pair

pytestmark = pytest.mark.integration

ACCOUNTS = """
[[tables]]
source = "{s}.accounts"
target = "{d}.accounts"
key = ["id"]
rename = { owner_name = "holder", balance_cents = "balance" }
convert = { balance_cents = "cents_to_numeric", opened_at = "zone:Europe/Berlin" }
drop = ["note"]
constants = { source_system = "legacy" }
"""


@pytest.fixture
def accounts(
    make_pair: MakePair,
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
) -> Pair:
    with source_engine.begin() as conn:
        conn.execute(
            text(
                f'CREATE TABLE "{source_schema}".accounts (id int PRIMARY KEY, owner_name text, '
                "balance_cents bigint NOT NULL, opened_at timestamp NOT NULL, note text)"
            )
        )
    with target_engine.begin() as conn:
        conn.execute(
            text(
                f'CREATE TABLE "{target_schema}".accounts (id int PRIMARY KEY, holder text, '
                "balance numeric(12, 2) NOT NULL, opened_at timestamptz NOT NULL, "
                "source_system text)"
            )
        )
    return make_pair(ACCOUNTS)


def test_forward_applies_are_not_captured_back_and_application_writes_on_the_new_side_are(
    accounts: Pair,
) -> None:
    p = accounts
    p.old_sql(
        "INSERT INTO {s}.accounts VALUES (1, 'Ann', 1999, '2024-03-31 02:30', 'vip'), "
        "(2, 'Bob', 5, '2024-10-27 02:30', NULL), (3, 'Cem', 0, '2024-01-01 00:00', NULL)"
    )
    p.old_sql("UPDATE {s}.accounts SET balance_cents = 2500 WHERE id = 1")
    p.pump_forward()
    assert p.new_rows(
        "SELECT id, holder, balance, source_system FROM {d}.accounts ORDER BY id"
    ) == [
        (1, "Ann", Decimal("25.00"), "legacy"),
        (2, "Bob", Decimal("0.05"), "legacy"),
        (3, "Cem", Decimal("0.00"), "legacy"),
    ]
    assert p.reverse_backlog() == 0  # the forward worker's writes: not captured

    # the new application takes the writes
    p.new_sql("UPDATE {d}.accounts SET holder = 'Ann Lee', balance = 12.34 WHERE id = 1")
    p.new_sql("INSERT INTO {d}.accounts VALUES (4, 'Dan', 7.00, '2024-07-01 10:00+00', 'new-app')")
    p.new_sql("DELETE FROM {d}.accounts WHERE id = 2")
    assert p.reverse_backlog() == 3  # application writes: captured


def test_reverse_applies_are_not_captured_forward_and_the_old_rows_follow_the_new_ones(
    accounts: Pair,
) -> None:
    p = accounts
    p.old_sql(
        "INSERT INTO {s}.accounts VALUES (1, 'Ann', 1999, '2024-03-31 01:30', 'vip'), "
        "(2, 'Bob', 5, '2024-10-27 12:30', NULL)"
    )
    p.pump_forward()
    p.new_sql("UPDATE {d}.accounts SET holder = 'Ann Lee', balance = 12.34 WHERE id = 1")
    p.new_sql("INSERT INTO {d}.accounts VALUES (4, 'Dan', 7.00, '2024-07-01 10:00+00', 'new-app')")
    p.new_sql("DELETE FROM {d}.accounts WHERE id = 2")
    p.pump_reverse()
    assert p.old_rows("SELECT * FROM {s}.accounts ORDER BY id") == [
        # renames and conversions undone; the dropped column keeps its old value
        (1, "Ann Lee", 1234, dt.datetime(2024, 3, 31, 1, 30), "vip"),
        # a new row: Berlin wall-clock time again, the dropped column NULL
        (4, "Dan", 700, dt.datetime(2024, 7, 1, 12, 0), None),
    ]
    assert p.forward_backlog() == 0  # the reverse worker's writes: not captured

    # the old application's writes are still captured (e.g. after a rollback)
    p.old_sql("UPDATE {s}.accounts SET note = 'back' WHERE id = 4")
    assert p.forward_backlog() == 1
    p.pump_forward()
    assert p.reverse_backlog() == 0
    assert p.new_rows("SELECT id, holder, balance FROM {d}.accounts ORDER BY id") == [
        (1, "Ann Lee", Decimal("12.34")),
        (4, "Dan", Decimal("7.00")),
    ]


def test_capture_install_upgrades_triggers_installed_before_the_origin_check(
    accounts: Pair,
) -> None:
    """An install from before the origin check captured the toolkit's writes; installing
    again (idempotent) replaces the trigger functions, after which they are skipped."""
    p = accounts
    with p.source.begin() as conn:
        functions = [
            r[0]
            for r in conn.execute(
                text(
                    "SELECT p.oid::regprocedure::text FROM pg_proc p "
                    "JOIN pg_namespace n ON n.oid = p.pronamespace "
                    "WHERE n.nspname = :s AND p.proname LIKE 'capture\\_%'"
                ),
                {"s": p.config.capture.schema},
            )
        ]
        assert functions
        for fn in functions:
            body = conn.execute(
                text("SELECT pg_get_functiondef(CAST(:f AS regprocedure))"), {"f": fn}
            ).scalar_one()
            start = body.index("    IF pg_catalog.current_setting(")
            end = body.index("END IF;", start) + len("END IF;")
            conn.exec_driver_sql(body[:start] + body[end:])  # the trigger as it was

    def toolkit_write() -> None:
        with p.source.begin() as conn:
            conn.exec_driver_sql(MARK_TOOLKIT_WRITE)
            conn.execute(
                text(
                    f"INSERT INTO \"{p.src}\".accounts VALUES (9, 'x', 1, '2024-01-01', NULL) "
                    "ON CONFLICT (id) DO UPDATE SET balance_cents = accounts.balance_cents + 1"
                )
            )

    toolkit_write()
    assert p.forward_backlog() == 1  # the old trigger: a loop waiting to happen
    capture.install(p.source, p.config)
    toolkit_write()
    assert p.forward_backlog() == 1  # upgraded: skipped
    p.old_sql("UPDATE {s}.accounts SET note = 'app' WHERE id = 9")
    assert p.forward_backlog() == 2  # application writes still captured
