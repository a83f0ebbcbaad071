"""Transforms declared in the migration file, and the transform registry's checks (pure)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from dualwrite import parse_migration
from dualwrite.config import QualifiedName
from dualwrite.transform import DeclaredTransformError, TransformError, Transforms, load_transforms

BASE = """
[source]
url = "postgresql://u:p@h/s"
[target]
url = "postgresql://u:p@h/t"
[kafka]
bootstrap_servers = ["h:9092"]
topic_prefix = "x"
[[tables]]
source = "legacy.orders"
target = "shop.orders"
key = ["id"]
rename = { amount_cents = "amount", placed_at = "placed_at_utc" }
drop = ["internal_note"]
constants = { currency = "EUR" }
convert = { amount_cents = "cents_to_numeric", email = "lower", placed_at = "zone:Europe/Berlin" }
"""


def _row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": 7,
        "amount_cents": 1999,
        "email": "Ann@X.Org",
        "placed_at": dt.datetime(2024, 7, 1, 12, 0),
        "internal_note": "secret",
    }
    row.update(overrides)
    return row


def test_declared_rename_drop_constant_and_conversions() -> None:
    transforms = load_transforms(parse_migration(BASE, "m.toml", {}))
    (op,) = transforms.apply("legacy.orders", "insert", {"id": 7}, _row(), 5)
    assert op.target == QualifiedName("shop", "orders")
    assert op.key == (7,) and op.version == 5
    assert op.values == {
        "id": 7,
        "amount": Decimal("19.99"),
        "email": "ann@x.org",
        "placed_at_utc": dt.datetime(2024, 7, 1, 10, 0, tzinfo=dt.UTC),
        "currency": "EUR",
    }


def test_declared_delete_maps_the_key() -> None:
    transforms = load_transforms(parse_migration(BASE, "m.toml", {}))
    (op,) = transforms.apply("legacy.orders", "delete", {"id": 7}, None, 6)
    assert op.is_delete and op.key == (7,)


@pytest.mark.parametrize(
    ("local", "utc"),
    [
        (
            dt.datetime(2024, 10, 27, 2, 30),
            dt.datetime(2024, 10, 27, 1, 30),
        ),  # repeated: standard time
        (
            dt.datetime(2024, 3, 31, 2, 30),
            dt.datetime(2024, 3, 31, 1, 30),
        ),  # skipped: offset before
        (dt.datetime(2024, 1, 15, 8, 0), dt.datetime(2024, 1, 15, 7, 0)),
    ],
)
def test_zone_conversion_resolves_dst_like_postgresql(local: dt.datetime, utc: dt.datetime) -> None:
    transforms = load_transforms(parse_migration(BASE, "m.toml", {}))
    (op,) = transforms.apply("legacy.orders", "update", {"id": 7}, _row(placed_at=local), 1)
    assert op.values is not None
    assert op.values["placed_at_utc"] == utc.replace(tzinfo=dt.UTC)


def test_key_is_learnt_from_the_first_change_when_not_declared() -> None:
    text = BASE.replace('key = ["id"]\n', "")
    transforms = load_transforms(parse_migration(text, "m.toml", {}))
    (op,) = transforms.apply("legacy.orders", "insert", {"id": 7}, _row(), 1)
    assert transforms.targets["shop.orders"].key == ("id",) and op.key == (7,)


def test_unknown_conversion_is_named() -> None:
    with pytest.raises(
        DeclaredTransformError, match=r"legacy.orders column email: unknown conversion 'shout'"
    ):
        load_transforms(
            parse_migration(BASE.replace('email = "lower"', 'email = "shout"'), "m.toml", {})
        )


def test_unknown_zone_is_named() -> None:
    with pytest.raises(DeclaredTransformError, match="unknown time zone 'Mars/Olympus'"):
        load_transforms(
            parse_migration(BASE.replace("Europe/Berlin", "Mars/Olympus"), "m.toml", {})
        )


def test_registry_checks_targets_and_ownership() -> None:
    t = Transforms()

    @t.source("a.s", targets={"b.t": {"id": "id"}})
    def f(row: object) -> dict[str, dict[str, object]]:
        return {}

    with pytest.raises(TransformError, match=r"has no transforms\.target"):
        t.check()
    t.target("b.t", key=["id"], owners={"a.other": ["x"]})
    with pytest.raises(TransformError, match="owns no columns"):
        t.check()


def test_failing_transform_and_unknown_table_raise_transform_error() -> None:
    t = Transforms()
    t.target("b.t", key=["id"])

    @t.source("a.s", targets={"b.t": {"id": "id"}})
    def boom(row: object) -> dict[str, dict[str, object]]:
        raise ZeroDivisionError("x")

    with pytest.raises(
        TransformError, match=r"transform of a.s failed for key \{'id': 1\}: ZeroDivisionError"
    ):
        t.apply("a.s", "insert", {"id": 1}, {"id": 1}, 1)
    with pytest.raises(TransformError, match=r"no transform for source table a\.nope"):
        t.apply("a.nope", "insert", {"id": 1}, {"id": 1}, 1)
