"""reverse_config and the inverse registry, without services."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from dualwrite import load_migration, parse_migration
from dualwrite.config import MigrationConfig
from dualwrite.reverse import reverse_config
from dualwrite.transform import (
    CONVERTERS,
    DeclaredTransformError,
    TransformError,
    inverse_transforms,
    load_transforms,
)
from examples.shop.transform import build_transforms

REPO = Path(__file__).resolve().parents[2]

HEAD = """
name = "bank"
[source]
url = "postgresql://u:secret@old.example:5432/old"
[target]
url = "postgresql://u:secret@new.example:5432/new"
[kafka]
bootstrap_servers = ["kafka:9092"]
topic_prefix = "dw.bank"
[capture]
schema = "dwcap"
"""

ACCOUNTS = """
[[tables]]
source = "legacy.accounts"
target = "core.accounts"
key = ["id"]
rename = { owner_name = "holder", balance_cents = "balance" }
convert = { balance_cents = "cents_to_numeric", opened_at = "zone:Europe/Berlin", email = "lower" }
drop = ["note"]
constants = { source_system = "legacy" }
"""


def _config(tables: str = ACCOUNTS, extra: str = "") -> MigrationConfig:
    return parse_migration(HEAD + extra + tables, "bank.toml", env={})


def test_the_reverse_direction_swaps_databases_and_tables_and_has_its_own_names() -> None:
    config = _config()
    reverse = reverse_config(config)
    assert (reverse.source, reverse.target) == (config.target, config.source)
    assert [(str(t.source), str(t.target), t.key) for t in reverse.tables] == [
        ("core.accounts", "legacy.accounts", ("id",))
    ]
    assert reverse.name == "bank-reverse"
    assert reverse.kafka.topic_prefix == "dw.bank.reverse"
    assert reverse.changes_topic == "dw.bank.reverse.changes"
    assert reverse.capture.schema == "dwcap_reverse"
    assert reverse.is_reverse and not config.is_reverse
    assert reverse_config(reverse) is config
    assert "secret" not in repr(reverse)


def test_a_declared_transform_gets_an_automatic_inverse() -> None:
    config = _config()
    forward, back = load_transforms(config), load_transforms(reverse_config(config))
    row = {
        "id": 1,
        "owner_name": "Ann",
        "balance_cents": 1999,
        "opened_at": dt.datetime(2024, 10, 27, 2, 30),  # the repeated autumn hour
        "email": "ann@example.org",
        "note": "vip",
    }
    (op,) = forward.apply("legacy.accounts", "insert", {"id": 1}, row, 5)
    assert op.values is not None and op.values["balance"] == Decimal("19.99")
    (again,) = back.apply("core.accounts", "update", {"id": 1}, op.values, 6)
    # renames undone, conversions inverted, the constant left out, the dropped column absent
    assert again.values == {key: value for key, value in row.items() if key != "note"}
    (gone,) = back.apply("core.accounts", "delete", {"id": 1}, None, 7)
    assert gone.is_delete and gone.key == (1,) and str(gone.target) == "legacy.accounts"


def test_numeric_to_cents_refuses_fractions_of_a_cent() -> None:
    back = load_transforms(reverse_config(_config()))
    row = {"id": 1, "holder": "A", "balance": Decimal("0.001"), "opened_at": None, "email": None}
    with pytest.raises(TransformError, match="not a whole number of cents"):
        back.apply("core.accounts", "insert", {"id": 1}, row, 1)


def test_a_declared_conversion_without_inverse_is_an_error_naming_table_and_column(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(CONVERTERS, "shuffle", lambda _arg: lambda v: v)
    config = _config(ACCOUNTS.replace('email = "lower"', 'email = "shuffle"'))
    load_transforms(config)  # the forward direction is fine
    with pytest.raises(DeclaredTransformError) as caught:
        reverse_config(config)
    message = str(caught.value)
    assert "legacy.accounts column email" in message
    assert "'shuffle' has no inverse" in message


def test_a_target_without_inverse_is_an_error_naming_it() -> None:
    config = _config(
        '[[tables]]\nsource = "s.person"\ntarget = "d.person"\n'
        '[[tables]]\nsource = "s.profile"\ntarget = "d.person"\n',
        '[transform]\nmodule = "tests.worker.merge_transform"\n',
    )
    with pytest.raises(TransformError, match=r"target d\.address has no inverse transform"):
        reverse_config(config)


def test_the_shop_reverse_registry_merges_legacy_customers_from_two_new_tables() -> None:
    shop = _shop_config()
    back = load_transforms(reverse_config(shop))
    spec = back.targets["legacy.customers"]
    assert spec.owners == {
        "shop.customers": ("first_name", "last_name", "email", "phone", "created_at", "updated_at"),
        "shop.addresses": ("street", "city", "zip", "country"),
    }
    assert back.sources["shop.customers"].targets == {
        "legacy.customers": {"id": "id"},
        "legacy.customer_profiles": {"customer_id": "id"},
    }
    assert back.sources["shop.addresses"].targets == {"legacy.customers": {"id": "customer_id"}}


def test_a_merged_old_table_needs_the_columns_of_each_inverse() -> None:
    shop = _shop_config()
    registry = build_transforms()
    registry.inverse_columns.pop("shop.addresses")
    with pytest.raises(TransformError, match=r"legacy\.customers is rebuilt from"):
        inverse_transforms(registry, shop)


def _shop_config() -> MigrationConfig:
    return load_migration(REPO / "examples" / "shop" / "migration.toml", env={})
