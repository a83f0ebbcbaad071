"""The rollback round trip on the shop example, against real PostgreSQL and Kafka.

Forward: seeded legacy rows are backfilled and streamed to the new schema, reconcile is clean.
Cutover: reverse capture is installed, the reverse backfill aligns the old rows with the
inverse of the new ones. Then the new application writes to the new schema, the reverse relay
and worker carry those writes to the old schema, the reverse reconcile is clean, and nothing
the workers applied was captured again.
"""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import text

from dualwrite.backfill import run_backfill
from dualwrite.relay import run_relay
from dualwrite.reverse import reverse_status
from dualwrite.transform import load_transforms
from reconcile import reconcile
from tests.reverse.conftest import Pair

pytestmark = pytest.mark.integration


def _sync_forward(p: Pair) -> None:
    run_backfill(p.source, p.target, p.config, p.transforms, stop=threading.Event())
    p.pump_forward()
    result = reconcile(p.source, p.target, p.config, p.transforms, wait_s=30)
    assert result.status == "clean", result.differences[:5]


def test_after_cutover_writes_on_the_new_schema_reach_the_old_one_and_reverse_reconcile_is_clean(
    shop: Pair,
) -> None:
    p = shop
    leaving = 900_001  # a customer with a profile and an address, and no order
    p.old_sql(
        "INSERT INTO {s}.customers (id, first_name, last_name, email, street, city, zip, country) "
        "VALUES (:id, 'Lea', 'Weg', 'lea@example.org', 'Gasse 2', 'Graz', '8010', 'AT')",
        id=leaving,
    )
    p.old_sql("INSERT INTO {s}.customer_profiles VALUES (:id, 'silver', true, NULL)", id=leaving)
    _sync_forward(p)
    assert reverse_status(p.config, p.target).installed
    assert p.reverse_backlog() == 0  # nothing the forward pipeline wrote came back

    # cutover: the old application has stopped writing; align the old rows with the new ones
    reverse_transforms = load_transforms(p.reverse)
    run_backfill(p.target, p.source, p.reverse, reverse_transforms, stop=threading.Event())
    assert p.forward_backlog() == 0

    with_address = p.new_rows(
        f"SELECT min(customer_id), max(customer_id) FROM {{d}}.addresses WHERE customer_id < {leaving}"
    )[0]
    without_address = p.new_rows(
        "SELECT min(c.id) FROM {d}.customers c LEFT JOIN {d}.addresses a ON a.customer_id = c.id "
        "WHERE a.customer_id IS NULL"
    )[0][0]
    order_ids = [r[0] for r in p.new_rows("SELECT id FROM {d}.orders ORDER BY id LIMIT 2")]
    new_id = p.new_rows("SELECT max(id) + 1000 FROM {d}.customers")[0][0]

    # the new application takes the writes
    p.new_sql(
        "UPDATE {d}.customers SET full_name = 'Jo Doe', email = 'jo@example.org', "
        "loyalty_tier = 'platinum' WHERE id = :id",
        id=with_address[0],
    )
    p.new_sql("DELETE FROM {d}.addresses WHERE customer_id = :id", id=with_address[1])
    p.new_sql(
        "INSERT INTO {d}.addresses VALUES (:id, 'Ring 1', 'Wien', '1010', 'AT')",
        id=without_address,
    )
    # a new customer with a profile: the old profile row refers to the old customer row
    p.new_sql(
        "INSERT INTO {d}.customers VALUES (:id, 'Neu Kunde', 'neu@example.org', NULL, "
        "'2025-01-10 09:00+00', '2025-01-10 09:00+00', 'gold', true)",
        id=new_id,
    )
    # a customer leaves: the address (if any) and the merged row go in one transaction
    with p.target.begin() as conn:
        conn.execute(text(f'DELETE FROM "{p.dst}".addresses WHERE customer_id = {leaving}'))
        conn.execute(text(f'DELETE FROM "{p.dst}".customers WHERE id = {leaving}'))
    p.pump_reverse()
    assert p.old_rows(f"SELECT 1 FROM {{s}}.customers WHERE id = {leaving}") == []
    assert p.old_rows(f"SELECT 1 FROM {{s}}.customer_profiles WHERE customer_id = {leaving}") == []
    assert p.old_rows(
        "SELECT c.first_name, c.last_name, c.created_at, p.loyalty_tier, p.marketing_opt_in "
        f"FROM {{s}}.customers c JOIN {{s}}.customer_profiles p ON p.customer_id = c.id "
        f"WHERE c.id = {new_id}"
    ) == [("Neu", "Kunde", dt.datetime(2025, 1, 10, 10, 0), "gold", True)]  # Berlin time

    # orders, once their customer is there (per-key order holds, cross-table order does not:
    # see docs/rollback.md)
    p.new_sql(
        "INSERT INTO {d}.orders VALUES (:oid, :cid, 12.34, 'EUR', 'pending', '2025-01-10 09:05+00')",
        oid=10_000_000,
        cid=new_id,
    )
    p.new_sql(
        "UPDATE {d}.orders SET status = 'cancelled', amount = 0.99 WHERE id = :id",
        id=order_ids[0],
    )
    p.new_sql("DELETE FROM {d}.orders WHERE id = :id", id=order_ids[1])
    assert p.reverse_backlog() == 3
    p.pump_reverse()

    assert p.old_rows(
        "SELECT c.first_name, c.last_name, c.email, p.loyalty_tier FROM {s}.customers c "
        f"JOIN {{s}}.customer_profiles p ON p.customer_id = c.id WHERE c.id = {with_address[0]}"
    ) == [("Jo", "Doe", "jo@example.org", "platinum")]
    assert p.old_rows(
        f"SELECT street, city, zip, country FROM {{s}}.customers WHERE id = {with_address[1]}"
    ) == [(None, None, None, None)]
    assert p.old_rows(
        f"SELECT street, city, zip, country FROM {{s}}.customers WHERE id = {without_address}"
    ) == [("Ring 1", "Wien", "1010", "AT")]
    assert p.old_rows(
        "SELECT customer_id, amount_cents, currency, status, placed_at FROM {s}.orders "
        "WHERE id = 10000000"
    ) == [(new_id, 1234, "EUR", "pending", dt.datetime(2025, 1, 10, 10, 5))]
    assert p.old_rows(
        f"SELECT amount_cents, status FROM {{s}}.orders WHERE id = {order_ids[0]}"
    ) == [(99, "cancelled")]
    assert p.old_rows(f"SELECT 1 FROM {{s}}.orders WHERE id = {order_ids[1]}") == []
    assert p.forward_backlog() == 0  # the reverse worker's writes were not captured

    run_relay(p.target, p.reverse, until_idle=True, stop=threading.Event())
    result = reconcile(p.target, p.source, p.reverse, reverse_transforms, wait_s=30)
    assert result.status == "clean", [d for d in result.differences][:5]
    assert {t.target for t in result.tables} == {
        f"{p.src}.customers",
        f"{p.src}.customer_profiles",
        f"{p.src}.orders",
    }
