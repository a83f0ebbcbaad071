"""The shop example's transform module, through the registry the migration file loads.

Pure unit tests: no database, no Kafka. A tiny in-memory target (``_Store``) applies target
operations with the merge semantics of :class:`dualwrite.transform.TargetSpec` (an owner's
delete clears its columns; the row goes once no owner has a row behind it), so the tests can
check what a whole target row ends up as, and that rolling it back gives the source rows.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dualwrite import QualifiedName, load_migration
from dualwrite.transform import TargetOp, TransformError, Transforms, load_transforms
from examples.shop.transform import (
    BERLIN,
    CUSTOMER_COLUMNS,
    PROFILE_COLUMNS,
    _berlin_to_utc_exact,
    amount_to_cents,
    berlin_to_utc,
    build_transforms,
)

REPO = Path(__file__).resolve().parents[2]
SHOP = REPO / "examples" / "shop"
CONFIG = load_migration(SHOP / "migration.toml", env={})
UTC = dt.UTC

CUSTOMERS, PROFILES, ORDERS = "legacy.customers", "legacy.customer_profiles", "legacy.orders"
T_CUSTOMERS, T_ADDRESSES, T_ORDERS = "shop.customers", "shop.addresses", "shop.orders"
SOURCE_KEY = {CUSTOMERS: "id", PROFILES: "customer_id", ORDERS: "id"}


def _table_columns(path: Path) -> dict[str, tuple[str, ...]]:
    """Column names per ``CREATE TABLE`` of a schema file (one column per line)."""
    tables: dict[str, tuple[str, ...]] = {}
    sql = path.read_text(encoding="utf-8")
    for match in re.finditer(r"CREATE TABLE IF NOT EXISTS (\w+\.\w+) \((.*?)\n\);", sql, re.S):
        lines = (line.split("--")[0].strip() for line in match.group(2).splitlines())
        tables[match.group(1)] = tuple(line.split()[0] for line in lines if line)
    return tables


LEGACY_COLUMNS = _table_columns(SHOP / "old_schema.sql")
SHOP_COLUMNS = _table_columns(SHOP / "new_schema.sql")


@pytest.fixture(scope="module")
def registry() -> Transforms:
    return load_transforms(CONFIG)


# --- helpers -------------------------------------------------------------------------------


def customer_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 7,
        "first_name": "Anna",
        "last_name": "van der Berg",
        "email": "anna@example.com",
        "phone": "030/1234567",
        "street": "Hauptstraße 1",
        "city": "Berlin",
        "zip": "10115",
        "country": "DE",
        "created_at": dt.datetime(2024, 1, 15, 12, 0),
        "updated_at": dt.datetime(2024, 7, 1, 12, 0),
    }
    return row | changes


def profile_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "customer_id": 7,
        "loyalty_tier": "gold",
        "marketing_opt_in": True,
        "notes": None,
    }
    return row | changes


def order_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 9,
        "customer_id": 7,
        "amount_cents": 1999,
        "currency": "EUR",
        "status": "shipped",
        "placed_at": dt.datetime(2024, 1, 15, 12, 0),
    }
    return row | changes


def apply(
    registry: Transforms, source: str, row: Mapping[str, Any], op: str = "insert", version: int = 1
) -> list[TargetOp]:
    key = {SOURCE_KEY[source]: row[SOURCE_KEY[source]]}
    return registry.apply(source, op, key, None if op == "delete" else row, version)


def by_target(ops: Iterable[TargetOp]) -> dict[str, TargetOp]:
    return {str(op.target): op for op in ops}


class _Store:
    """Target tables in memory, applying ops with the registry's merge semantics."""

    def __init__(self, registry: Transforms) -> None:
        self.registry = registry
        self.tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {
            t: {} for t in registry.targets
        }
        self.owners_alive: dict[tuple[str, tuple[Any, ...]], set[str]] = defaultdict(set)

    def apply(self, ops: Iterable[TargetOp]) -> None:
        for op in ops:
            table = str(op.target)
            spec = self.registry.targets[table]
            rows = self.tables[table]
            owned = spec.owned_by(op.source)
            alive = self.owners_alive[(table, op.key)]
            if op.values is None:
                if owned is None:
                    rows.pop(op.key, None)
                    continue
                alive.discard(op.source)
                if op.key in rows:
                    rows[op.key].update(dict.fromkeys(owned))
                    if not alive:
                        del rows[op.key]
            else:
                if owned is not None:
                    alive.add(op.source)
                rows.setdefault(op.key, dict.fromkeys(SHOP_COLUMNS[table])).update(op.values)

    def rollback(self) -> dict[str, dict[Any, dict[str, Any]]]:
        """Source rows from the target rows through the inverse transforms: partial rows of
        one source row are merged; columns no inverse names are NULL."""
        out: dict[str, dict[Any, dict[str, Any]]] = {}
        for table, rows in self.tables.items():
            inverse = self.registry.inverses[table]
            for row in rows.values():
                for source, values in (inverse(row) or {}).items():
                    key = values[SOURCE_KEY[source]]
                    merged = out.setdefault(source, {}).setdefault(
                        key, dict.fromkeys(LEGACY_COLUMNS[source])
                    )
                    merged.update(values)
        return out


# --- the files -----------------------------------------------------------------------------


def test_the_migration_file_loads_the_module_registry(registry: Transforms) -> None:
    assert CONFIG.name == "shop"
    assert CONFIG.kafka.topic_prefix == "dualwrite.shop"
    assert CONFIG.transform.module == "examples.shop.transform"
    assert [str(t.source) for t in CONFIG.tables] == [CUSTOMERS, PROFILES, ORDERS]
    assert [t.key for t in CONFIG.tables] == [("id",), ("customer_id",), ("id",)]
    assert set(registry.sources) == {CUSTOMERS, PROFILES, ORDERS}
    assert set(registry.targets) == {T_CUSTOMERS, T_ADDRESSES, T_ORDERS}
    assert set(registry.inverses) == {T_CUSTOMERS, T_ADDRESSES, T_ORDERS}
    assert registry.sources[CUSTOMERS].targets == {
        T_CUSTOMERS: {"id": "id"},
        T_ADDRESSES: {"customer_id": "id"},
    }
    assert registry.sources[PROFILES].targets == {T_CUSTOMERS: {"id": "customer_id"}}


def test_every_target_of_a_table_entry_is_written_by_its_source(registry: Transforms) -> None:
    for table in CONFIG.tables:
        assert str(table.target) in registry.sources[str(table.source)].targets


def test_merged_customers_owners_cover_exactly_the_non_key_columns(registry: Transforms) -> None:
    spec = registry.targets[T_CUSTOMERS]
    assert spec.key == ("id",)
    assert spec.owners == {CUSTOMERS: CUSTOMER_COLUMNS, PROFILES: PROFILE_COLUMNS}
    assert sorted(CUSTOMER_COLUMNS + PROFILE_COLUMNS) == sorted(SHOP_COLUMNS[T_CUSTOMERS][1:])


@pytest.mark.parametrize("name", ["old_schema.sql", "new_schema.sql"])
def test_schema_files_are_idempotent(name: str) -> None:
    sql = (SHOP / name).read_text(encoding="utf-8")
    creates = re.findall(r"^CREATE (?:SCHEMA|TABLE|INDEX) (.{13})", sql, re.M)
    assert creates
    assert all(c == "IF NOT EXISTS" for c in creates)


def test_new_schema_keeps_merged_columns_nullable_and_has_no_foreign_keys() -> None:
    sql = (SHOP / "new_schema.sql").read_text(encoding="utf-8")
    customers = re.search(r"CREATE TABLE IF NOT EXISTS shop\.customers \((.*?)\n\);", sql, re.S)
    assert customers is not None
    assert "NOT NULL" not in customers.group(1)
    assert "REFERENCES" not in sql


def test_built_registries_follow_the_schema_names() -> None:
    other = build_transforms("legacy_t1", "Shop T1")
    assert set(other.sources) == {
        "legacy_t1.customers",
        "legacy_t1.customer_profiles",
        "legacy_t1.orders",
    }
    assert '"Shop T1".customers' in other.targets
    ops = other.apply("legacy_t1.orders", "insert", {"id": 9}, order_row(), 1)
    assert ops[0].target == QualifiedName("Shop T1", "orders")


# --- legacy.customers: derived name, cleaned email, instants, split address ---------------


def test_customer_becomes_a_customer_and_an_address(registry: Transforms) -> None:
    row = customer_row(
        first_name=" Anna ",
        email=" Anna.VanDerBerg@Example.COM ",
        country="de ",
    )
    ops = apply(registry, CUSTOMERS, row, version=42)
    assert [(str(o.target), o.key, o.source, o.version) for o in ops] == [
        (T_CUSTOMERS, (7,), CUSTOMERS, 42),
        (T_ADDRESSES, (7,), CUSTOMERS, 42),
    ]
    customers, addresses = ops[0].values, ops[1].values
    assert customers == {
        "id": 7,
        "full_name": "Anna van der Berg",
        "email": "anna.vanderberg@example.com",
        "phone": "030/1234567",
        "created_at": dt.datetime(2024, 1, 15, 11, 0, tzinfo=UTC),  # CET: UTC+1
        "updated_at": dt.datetime(2024, 7, 1, 10, 0, tzinfo=UTC),  # CEST: UTC+2
    }
    assert addresses == {
        "customer_id": 7,
        "street": "Hauptstraße 1",
        "city": "Berlin",
        "postal_code": "10115",
        "country": "DE",
    }


def test_output_columns_match_the_new_schema(registry: Transforms) -> None:
    ops = by_target(apply(registry, CUSTOMERS, customer_row()))
    ops |= by_target(apply(registry, ORDERS, order_row()))
    for table in (T_ADDRESSES, T_ORDERS):
        values = ops[table].values
        assert values is not None
        assert tuple(values) == SHOP_COLUMNS[table]
    merged = ops[T_CUSTOMERS].values
    assert merged is not None
    assert tuple(merged) == ("id", *CUSTOMER_COLUMNS)


@pytest.mark.parametrize(
    ("first", "last", "full"),
    [
        ("Anna", "Schmidt", "Anna Schmidt"),
        ("Mary Ann", "O'Brien", "Mary Ann O'Brien"),
        (" lea ", None, "lea"),
        (None, "Weber", "Weber"),
        ("", "  ", None),
        (None, None, None),
    ],
)
def test_full_name_is_derived_from_both_parts(
    registry: Transforms, first: str | None, last: str | None, full: str | None
) -> None:
    ops = apply(registry, CUSTOMERS, customer_row(first_name=first, last_name=last))
    assert by_target(ops)[T_CUSTOMERS].values["full_name"] == full  # type: ignore[index]


@pytest.mark.parametrize(
    ("email", "clean"),
    [
        (" Anna.Mueller@Example.COM ", "anna.mueller@example.com"),
        ("BEN@WEB.DE", "ben@web.de"),
        ("   ", None),
        (None, None),
    ],
)
def test_email_is_trimmed_and_lower_cased(
    registry: Transforms, email: str | None, clean: str | None
) -> None:
    ops = apply(registry, CUSTOMERS, customer_row(email=email))
    assert by_target(ops)[T_CUSTOMERS].values["email"] == clean  # type: ignore[index]


@pytest.mark.parametrize(
    ("local", "instant"),
    [
        (dt.datetime(2024, 1, 15, 12, 0), dt.datetime(2024, 1, 15, 11, 0, tzinfo=UTC)),
        (dt.datetime(2024, 7, 1, 0, 30), dt.datetime(2024, 6, 30, 22, 30, tzinfo=UTC)),
        # The repeated autumn hour is standard time, as PostgreSQL reads it.
        (dt.datetime(2024, 10, 27, 2, 30), dt.datetime(2024, 10, 27, 1, 30, tzinfo=UTC)),
        (dt.datetime(2024, 10, 27, 1, 59), dt.datetime(2024, 10, 26, 23, 59, tzinfo=UTC)),
        # The skipped spring hour takes the offset before the jump, as PostgreSQL does.
        (dt.datetime(2024, 3, 31, 2, 30), dt.datetime(2024, 3, 31, 1, 30, tzinfo=UTC)),
        (dt.datetime(2024, 3, 31, 3, 0), dt.datetime(2024, 3, 31, 1, 0, tzinfo=UTC)),
        (
            dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
            dt.datetime(2024, 2, 29, 22, 59, 59, 999999, tzinfo=UTC),
        ),
        ("infinity", "infinity"),
    ],
)
def test_berlin_wall_clock_time_becomes_an_instant(
    registry: Transforms, local: dt.datetime | str, instant: dt.datetime | str
) -> None:
    """Expected values checked against PostgreSQL 15's ``ts AT TIME ZONE 'Europe/Berlin'``."""
    ops = by_target(apply(registry, ORDERS, order_row(placed_at=local)))
    placed_at = ops[T_ORDERS].values["placed_at"]  # type: ignore[index]
    assert placed_at == instant
    if isinstance(placed_at, dt.datetime):
        assert placed_at.utcoffset() == dt.timedelta(0)


@given(st.datetimes(min_value=dt.datetime(1850, 1, 1), max_value=dt.datetime(2100, 1, 1)))
def test_the_offset_caches_give_the_exact_conversion(local: dt.datetime) -> None:
    assert berlin_to_utc(local) == _berlin_to_utc_exact(local)


def test_the_offset_caches_give_the_exact_conversion_around_every_transition() -> None:
    """Every hour in which Europe/Berlin's offset changes (from the zone's own data) and the
    hours around it, at their first, middle and last microsecond."""
    checked = 0
    hour = dt.datetime(1890, 1, 1)
    end = dt.datetime(2060, 1, 1)
    previous = hour.replace(tzinfo=BERLIN).utcoffset()
    while hour < end:
        current = hour.replace(tzinfo=BERLIN).utcoffset()
        if current != previous:
            for around in range(-3, 4):
                start = hour + dt.timedelta(hours=around)
                for offset in (dt.timedelta(0), dt.timedelta(minutes=30), dt.timedelta(hours=1)):
                    local = start + offset - dt.timedelta(microseconds=offset > dt.timedelta(0))
                    assert berlin_to_utc(local) == _berlin_to_utc_exact(local), local
                    checked += 1
        previous = current
        hour += dt.timedelta(hours=1)
    assert checked >= 150 * 3 * 7  # two a year since 1980, the war years, 1893 (187 in all)


def test_the_per_day_offset_is_exact_at_both_ends_of_every_day_from_1940_to_2040() -> None:
    day = dt.datetime(1940, 1, 1)  # the war years' double summer time, and today's rules
    while day < dt.datetime(2040, 1, 1):
        for local in (day, day + dt.timedelta(days=1, microseconds=-1)):
            assert berlin_to_utc(local) == _berlin_to_utc_exact(local), local
        day += dt.timedelta(days=1)


def test_an_aware_legacy_timestamp_is_a_transform_error(registry: Transforms) -> None:
    row = customer_row(created_at=dt.datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(TransformError, match=r"legacy\.customers failed for key \{'id': 7\}"):
        apply(registry, CUSTOMERS, row)


@pytest.mark.parametrize(
    "address",
    [
        {"street": None, "city": None, "zip": None, "country": None},
        {"street": None, "city": None, "zip": None, "country": "  "},
    ],
)
def test_a_customer_without_address_has_no_address_row(
    registry: Transforms, address: dict[str, Any]
) -> None:
    """Filtering on a split target: the address op is a delete (an update that removes the
    last address column deletes the row an earlier version produced)."""
    ops = by_target(apply(registry, CUSTOMERS, customer_row(**address), op="update", version=5))
    assert ops[T_ADDRESSES] == TargetOp(
        QualifiedName("shop", "addresses"), (7,), None, CUSTOMERS, 5
    )
    assert ops[T_CUSTOMERS].values is not None


def test_a_partial_address_is_kept(registry: Transforms) -> None:
    row = customer_row(street=None, city="Wien", zip=None, country=None)
    address = by_target(apply(registry, CUSTOMERS, row))[T_ADDRESSES].values
    assert address == {
        "customer_id": 7,
        "street": None,
        "city": "Wien",
        "postal_code": None,
        "country": None,
    }


# --- legacy.customer_profiles: merge with column ownership, dropped column ----------------


def test_profile_writes_only_its_own_columns_of_the_merged_customer(registry: Transforms) -> None:
    ops = apply(registry, PROFILES, profile_row(notes="called about a late delivery"))
    assert len(ops) == 1
    assert ops[0].target == QualifiedName("shop", "customers")
    assert ops[0].key == (7,)
    assert ops[0].source == PROFILES
    assert ops[0].values == {"id": 7, "loyalty_tier": "gold", "marketing_opt_in": True}


def test_customer_writes_only_its_own_columns_of_the_merged_customer(
    registry: Transforms,
) -> None:
    values = by_target(apply(registry, CUSTOMERS, customer_row()))[T_CUSTOMERS].values
    assert values is not None
    assert set(values) == {"id", *CUSTOMER_COLUMNS}
    assert not set(values) & set(PROFILE_COLUMNS)


def test_merge_profile_first_then_customer_then_deletes(registry: Transforms) -> None:
    store = _Store(registry)
    rows = store.tables[T_CUSTOMERS]
    store.apply(apply(registry, PROFILES, profile_row()))  # a profile arrives first
    assert rows[(7,)] == dict.fromkeys(SHOP_COLUMNS[T_CUSTOMERS]) | {
        "id": 7,
        "loyalty_tier": "gold",
        "marketing_opt_in": True,
    }
    store.apply(apply(registry, CUSTOMERS, customer_row()))
    assert rows[(7,)]["full_name"] == "Anna van der Berg"
    assert rows[(7,)]["loyalty_tier"] == "gold"

    store.apply(apply(registry, PROFILES, profile_row(), op="delete"))  # clears its columns
    assert rows[(7,)]["loyalty_tier"] is None
    assert rows[(7,)]["marketing_opt_in"] is None
    assert rows[(7,)]["email"] == "anna@example.com"

    store.apply(apply(registry, CUSTOMERS, customer_row(), op="delete"))  # the last owner
    assert rows == {}
    assert store.tables[T_ADDRESSES] == {}


def test_merged_row_outlives_one_owner_until_the_other_goes(registry: Transforms) -> None:
    store = _Store(registry)
    rows = store.tables[T_CUSTOMERS]
    store.apply(apply(registry, CUSTOMERS, customer_row()))
    store.apply(apply(registry, PROFILES, profile_row()))
    store.apply(apply(registry, CUSTOMERS, customer_row(), op="delete"))
    assert rows[(7,)] == dict.fromkeys(SHOP_COLUMNS[T_CUSTOMERS]) | {
        "id": 7,
        "loyalty_tier": "gold",
        "marketing_opt_in": True,
    }
    assert store.tables[T_ADDRESSES] == {}  # not merged: the customer's delete deletes it
    assert store.rollback() == {PROFILES: {7: profile_row()}}
    store.apply(apply(registry, PROFILES, profile_row(), op="delete"))
    assert rows == {}


# --- deletes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "row", "expected"),
    [
        (CUSTOMERS, customer_row(), [("customers", (7,)), ("addresses", (7,))]),
        (PROFILES, profile_row(), [("customers", (7,))]),
        (ORDERS, order_row(), [("orders", (9,))]),
    ],
)
def test_a_source_delete_yields_a_delete_of_each_target_row(
    registry: Transforms, source: str, row: dict[str, Any], expected: list[tuple[str, tuple[int]]]
) -> None:
    ops = apply(registry, source, row, op="delete", version=3)
    assert ops == [
        TargetOp(QualifiedName("shop", table), key, None, source, 3) for table, key in expected
    ]


def test_each_owner_of_the_merged_row_owns_its_columns(registry: Transforms) -> None:
    spec = registry.targets[T_CUSTOMERS]
    assert spec.owned_by(CUSTOMERS) == CUSTOMER_COLUMNS
    assert spec.owned_by(PROFILES) == PROFILE_COLUMNS
    assert registry.targets[T_ADDRESSES].owned_by(CUSTOMERS) is None  # whole rows


# --- legacy.orders: cents, normalised text, filtering ---------------------------------------


@pytest.mark.parametrize(
    ("cents", "amount"),
    [
        (1999, "19.99"),
        (100, "1.00"),
        (0, "0.00"),
        (5, "0.05"),
        (-250, "-2.50"),
        (999_999_999_999, "9999999999.99"),
        (-999_999_999_999, "-9999999999.99"),
    ],
)
def test_cents_become_numeric_with_two_decimals(
    registry: Transforms, cents: int, amount: str
) -> None:
    values = apply(registry, ORDERS, order_row(amount_cents=cents))[0].values
    assert values is not None
    assert isinstance(values["amount"], Decimal)
    assert str(values["amount"]) == amount  # exact, scale 2 like numeric(12, 2)


def test_an_amount_too_large_for_numeric_12_2_is_a_transform_error(registry: Transforms) -> None:
    with pytest.raises(TransformError, match=r"does not fit numeric\(12, 2\)"):
        apply(registry, ORDERS, order_row(amount_cents=10**12))


@pytest.mark.parametrize(
    ("status", "clean"),
    [
        ("pending", "pending"),
        ("Pending", "pending"),
        ("shipped", "shipped"),
        ("Shipped ", "shipped"),
        ("SHIPPED", "shipped"),
        ("cancelled", "cancelled"),
        ("Canceled", "cancelled"),
        (" CANCELLED ", "cancelled"),
    ],
)
def test_status_is_normalised(registry: Transforms, status: str, clean: str) -> None:
    values = apply(registry, ORDERS, order_row(status=status))[0].values
    assert values is not None
    assert values["status"] == clean


@pytest.mark.parametrize(("currency", "clean"), [("EUR", "EUR"), ("eur", "EUR"), ("EU ", "EU")])
def test_currency_is_upper_case_without_char_padding(
    registry: Transforms, currency: str, clean: str
) -> None:
    values = apply(registry, ORDERS, order_row(currency=currency))[0].values
    assert values is not None
    assert values["currency"] == clean


@pytest.mark.parametrize("status", ["TEST", "test", " Test ", "test\t"])
@pytest.mark.parametrize("op", ["insert", "update", "read"])
def test_test_orders_are_filtered_out(registry: Transforms, status: str, op: str) -> None:
    """A filtered row yields a delete: an update that turns an order into a test order
    removes the target row an earlier version produced."""
    ops = apply(registry, ORDERS, order_row(status=status), op=op, version=8)
    assert ops == [TargetOp(QualifiedName("shop", "orders"), (9,), None, ORDERS, 8)]


def test_an_unknown_status_is_a_transform_error_naming_it(registry: Transforms) -> None:
    with pytest.raises(TransformError, match=r"unknown order status 'returned'"):
        apply(registry, ORDERS, order_row(status="returned"))


# --- inverse --------------------------------------------------------------------------------


def test_inverse_of_orders_restores_cents_berlin_time_and_legacy_spelling(
    registry: Transforms,
) -> None:
    target = {
        "id": 9,
        "customer_id": 7,
        "amount": Decimal("19.99"),
        "currency": "EUR",
        "status": "cancelled",
        "placed_at": dt.datetime(2024, 10, 27, 1, 30, tzinfo=UTC),
    }
    assert registry.inverses[T_ORDERS](target) == {
        ORDERS: order_row(status="cancelled", placed_at=dt.datetime(2024, 10, 27, 2, 30))
    }


def test_inverse_of_a_merged_row_returns_the_parts_that_exist(registry: Transforms) -> None:
    inverse = registry.inverses[T_CUSTOMERS]
    only_profile = dict.fromkeys(SHOP_COLUMNS[T_CUSTOMERS]) | {
        "id": 7,
        "loyalty_tier": None,
        "marketing_opt_in": False,
    }
    assert inverse(only_profile) == {
        PROFILES: {"customer_id": 7, "loyalty_tier": None, "marketing_opt_in": False}
    }
    only_customer = only_profile | {
        "marketing_opt_in": None,
        "created_at": dt.datetime(2024, 1, 1, tzinfo=UTC),
        "updated_at": dt.datetime(2024, 1, 1, tzinfo=UTC),
    }
    back = inverse(only_customer)
    assert back is not None
    assert set(back) == {CUSTOMERS}


@pytest.mark.parametrize(
    ("changes", "comes_back_as"),
    [
        (
            {"first_name": "Mary Ann", "last_name": "Smith"},
            {"first_name": "Mary", "last_name": "Ann Smith"},
        ),
        ({"first_name": None, "last_name": "Weber"}, {"first_name": "Weber", "last_name": None}),
        ({"email": " Anna@Example.COM"}, {"email": "anna@example.com"}),
        (
            {"created_at": dt.datetime(2024, 3, 31, 2, 30)},
            {"created_at": dt.datetime(2024, 3, 31, 3, 30)},
        ),
    ],
)
def test_documented_non_canonical_values_do_not_round_trip(
    registry: Transforms, changes: dict[str, Any], comes_back_as: dict[str, Any]
) -> None:
    store = _Store(registry)
    store.apply(apply(registry, CUSTOMERS, customer_row(**changes)))
    assert store.rollback()[CUSTOMERS][7] == customer_row(**comes_back_as)


def test_amount_to_cents_refuses_fractions_of_a_cent() -> None:
    assert amount_to_cents(Decimal("19.99")) == 1999
    with pytest.raises(ValueError, match="whole number of cents"):
        amount_to_cents(Decimal("0.001"))


# --- properties -----------------------------------------------------------------------------

_chars = st.characters(codec="utf-8", exclude_characters="\x00")  # as PostgreSQL text
_text = st.text(_chars, max_size=12)
_trimmed = _text.map(str.strip).filter(bool)
_local_times = st.datetimes(
    min_value=dt.datetime(1900, 1, 1),
    max_value=dt.datetime(2200, 12, 31),
    timezones=st.just(BERLIN),
    allow_imaginary=False,
).map(lambda d: d.replace(tzinfo=None)) | st.sampled_from(["infinity", "-infinity"])
_names = st.one_of(
    st.tuples(_trimmed.filter(lambda s: " " not in s), _trimmed),
    st.tuples(_trimmed.filter(lambda s: " " not in s), st.none()),
    st.just((None, None)),
)
_emails = st.none() | _text.map(lambda s: s.strip().lower()).filter(
    lambda s: bool(s) and s == s.strip().lower()
)
_countries = st.none() | st.text(string.ascii_uppercase, min_size=2, max_size=2)
_addresses = st.just(dict.fromkeys(("street", "city", "zip", "country"))) | st.fixed_dictionaries(
    {
        "street": st.none() | _text,
        "city": st.none() | _text,
        "zip": st.none() | _text,
        "country": _countries,
    }
).filter(lambda a: any(v is not None for v in a.values()))


@st.composite
def _customers(draw: st.DrawFn, customer_id: int) -> dict[str, Any]:
    first, last = draw(_names)
    return {
        "id": customer_id,
        "first_name": first,
        "last_name": last,
        "email": draw(_emails),
        "phone": draw(st.none() | _text),
        **draw(_addresses),
        "created_at": draw(_local_times),
        "updated_at": draw(_local_times),
    }


def _profiles(customer_id: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "customer_id": st.just(customer_id),
            "loyalty_tier": st.none() | _text,
            "marketing_opt_in": st.booleans(),
            "notes": st.none(),  # dropped by the migration
        }
    )


_orders = st.fixed_dictionaries(
    {
        "id": st.integers(1, 2**63 - 1),
        "customer_id": st.integers(-(2**31), 2**31 - 1),
        "amount_cents": st.integers(-999_999_999_999, 999_999_999_999),
        "currency": st.text(string.ascii_uppercase, min_size=3, max_size=3),
        "status": st.sampled_from(["pending", "shipped", "cancelled"]),
        "placed_at": _local_times,
    }
)


@st.composite
def _source_rows(draw: st.DrawFn) -> dict[str, dict[Any, dict[str, Any]]]:
    """Canonical legacy rows: maybe a customer, maybe its profile, some orders."""
    customer_id = draw(st.integers(1, 2**31 - 1))
    rows: dict[str, dict[Any, dict[str, Any]]] = {}
    if draw(st.booleans()):
        rows[CUSTOMERS] = {customer_id: draw(_customers(customer_id))}
    if draw(st.booleans()):
        rows[PROFILES] = {customer_id: draw(_profiles(customer_id))}
    orders = draw(st.lists(_orders, max_size=3, unique_by=lambda o: o["id"]))
    if orders:
        rows[ORDERS] = {o["id"]: o for o in orders}
    return rows


_registry = load_transforms(CONFIG)


@given(_source_rows())
def test_inverse_of_transform_gives_back_canonical_rows(
    rows: dict[str, dict[Any, dict[str, Any]]],
) -> None:
    store = _Store(_registry)
    for source, by_key in rows.items():
        for row in by_key.values():
            store.apply(apply(_registry, source, row, op="read"))
    assert store.rollback() == rows


@given(_customers(7), _profiles(7), st.booleans())
def test_merge_does_not_depend_on_arrival_order(
    customer: dict[str, Any], profile: dict[str, Any], profile_first: bool
) -> None:
    changes = [(CUSTOMERS, customer), (PROFILES, profile)]
    expected = _Store(_registry)
    for source, row in changes:
        expected.apply(apply(_registry, source, row))
    store = _Store(_registry)
    for source, row in reversed(changes) if profile_first else changes:
        store.apply(apply(_registry, source, row))
    assert store.tables == expected.tables


@given(_orders, st.sampled_from(["TEST", "test", " Test"]))
def test_an_order_turned_into_a_test_order_disappears(order: dict[str, Any], test: str) -> None:
    store = _Store(_registry)
    store.apply(apply(_registry, ORDERS, order, version=1))
    assert (order["id"],) in store.tables[T_ORDERS]
    store.apply(apply(_registry, ORDERS, order | {"status": test}, op="update", version=2))
    assert store.tables[T_ORDERS] == {}
