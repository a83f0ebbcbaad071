"""The round-trip check of the inverse transforms, its record, and the CLI around it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from dualwrite.reverse import last_round_trip, record_round_trip, round_trip_check
from examples.shop.transform import build_transforms
from tests.reverse.broken_inverse import break_orders
from tests.reverse.conftest import Pair

pytestmark = pytest.mark.integration


def _counts(p: Pair) -> dict[str, int]:
    return {
        f"{p.src}.{t}": p.old_rows(f"SELECT count(*) FROM {{s}}.{t}")[0][0]
        for t in ("customers", "customer_profiles", "orders")
    }


def test_the_shop_inverses_survive_the_round_trip(shop: Pair) -> None:
    p = shop
    report = round_trip_check(p.config, 1000, source=p.source, target=p.target)
    assert report.ok, report.failures[:3]
    assert {t.table: t.rows_checked for t in report.tables} == _counts(p)
    orders = next(t for t in report.tables if t.table.endswith(".orders"))
    test_orders = p.old_rows("SELECT count(*) FROM {s}.orders WHERE lower(trim(status)) = 'test'")
    assert orders.filtered == test_orders[0][0] > 0  # QA rows have nothing to invert
    # the seeded legacy data is messy (mixed-case e-mails, padded countries, ...): those rows
    # come back normalised, mapping to the same new rows
    assert report.normalised
    example = report.normalised[0]
    assert example.key and example.columns and not example.target_columns


def test_strict_fails_rows_that_come_back_normalised(shop: Pair) -> None:
    p = shop
    report = round_trip_check(p.config, 1000, source=p.source, target=p.target, strict=True)
    assert not report.ok
    assert len(report.failures) == sum(t.failures for t in report.tables) > 0
    assert not report.normalised


def test_a_broken_inverse_is_reported_with_key_and_columns(shop: Pair) -> None:
    p = shop
    broken = break_orders(build_transforms(p.src, p.dst))
    report = round_trip_check(p.config, 1000, source=p.source, target=p.target, transforms=broken)
    assert not report.ok
    assert {f.table for f in report.failures} == {f"{p.src}.orders"}
    failure = report.failures[0]
    order_id = json.loads(failure.key)["id"]
    cents = p.old_rows(f"SELECT amount_cents FROM {{s}}.orders WHERE id = {order_id}")[0][0]
    assert failure.columns["amount_cents"] == (cents, cents * 10)
    before, after = failure.target_columns[f"{p.dst}.orders.amount"]
    assert after == before * 10
    nonzero = p.old_rows(
        "SELECT count(*) FROM {s}.orders WHERE amount_cents <> 0 AND lower(trim(status)) <> 'test'"
    )[0][0]
    assert len(report.failures) == nonzero


def test_each_check_is_recorded_and_the_newest_is_read_back(shop: Pair) -> None:
    p = shop
    assert last_round_trip(p.config, target=p.target) is None
    good = round_trip_check(p.config, 20, source=p.source, target=p.target)
    first = record_round_trip(p.config, good, target=p.target)
    broken = break_orders(build_transforms(p.src, p.dst))
    bad = round_trip_check(p.config, 1000, source=p.source, target=p.target, transforms=broken)
    second = record_round_trip(p.config, bad, target=p.target)
    newest = last_round_trip(p.config, target=p.target)
    assert newest is not None and newest.id == second.id > first.id
    assert (newest.migration, newest.ok, newest.failures) == (
        p.config.name,
        False,
        len(bad.failures),
    )
    assert newest.rows_checked == bad.rows_checked
    failure = newest.detail["failures"][0]
    assert failure["table"] == f"{p.src}.orders" and "amount_cents" in failure["columns"]
    # the reversed config reads the same record
    assert last_round_trip(p.reverse, target=p.target) == newest


def test_cli_check_exits_0_when_the_inverses_hold_and_1_when_one_is_broken(
    shop: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = shop
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    ok = CliRunner().invoke(cli, ["reverse", "check", p.config.path, "--sample", "50"])
    assert ok.exit_code == 0, ok.output
    assert "round trip ok" in ok.output
    path = Path(p.config.path)
    path.write_text(
        path.read_text().replace("examples.shop.transform", "tests.reverse.broken_inverse")
    )
    bad = CliRunner().invoke(cli, ["reverse", "check", str(path), "--format", "json"])
    assert bad.exit_code == 1, bad.output
    payload = json.loads(bad.output)
    assert payload["ok"] is False and payload["failures"][0]["columns"]["amount_cents"]
    missing = CliRunner().invoke(cli, ["reverse", "check", str(path) + ".nope"])
    assert missing.exit_code == 2
