"""Transforms of the shop example: the old ``legacy`` schema -> the new ``shop`` schema.

=========================  =================================================================
source                     target
=========================  =================================================================
legacy.customers           shop.customers (owner of full_name, email, phone, created_at,
                           updated_at) and shop.addresses (split; no row when the customer
                           has no address at all)
legacy.customer_profiles   shop.customers (owner of loyalty_tier, marketing_opt_in; notes is
                           dropped)
legacy.orders              shop.orders (cents -> numeric, status normalised, 'test' rows
                           filtered out)
=========================  =================================================================

Legacy ``timestamp`` values are Europe/Berlin wall-clock time; they become aware UTC
datetimes, resolving the two daylight-saving edge cases the way PostgreSQL's
``AT TIME ZONE 'Europe/Berlin'`` does (see :func:`berlin_to_utc`), so a backfill written in
SQL and this module agree to the microsecond.

Rollback: ``transforms.inverses`` maps each target row back to *partial* legacy rows (only the
columns the target carries; ``notes`` and a missing address are not reconstructed), and
``inverse(transform(row)) == row`` holds for *canonical* source rows, i.e. rows that are
already in the form the transform produces:

- ``first_name`` and ``last_name`` are both set, or ``first_name`` alone, or both NULL; each
  is non-empty with no surrounding whitespace and ``first_name`` has no space (the inverse
  splits ``full_name`` at its first space: ``'Mary Ann' 'Smith'`` comes back as
  ``'Mary' 'Ann Smith'``);
- ``email`` is NULL or non-empty, trimmed and lower case; ``country`` upper case, trimmed,
  non-empty; ``currency`` three upper-case letters;
- ``status`` is one of ``pending``, ``shipped``, ``cancelled`` (the legacy spelling the
  inverse writes); ``test`` rows have no target row, hence no inverse;
- timestamps exist in Europe/Berlin (not in the skipped spring-forward hour), or are the
  strings ``'infinity'`` / ``'-infinity'``;
- ``notes`` is NULL, and a customer with no address has all four address columns NULL.

Thread-safety: every function here is pure; the registry is read-only once built.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

from dualwrite.config import MigrationConfig, QualifiedName
from dualwrite.transform import Transforms

__all__ = [
    "BERLIN",
    "CUSTOMER_COLUMNS",
    "PROFILE_COLUMNS",
    "STATUS_SPELLINGS",
    "amount_to_cents",
    "berlin_to_utc",
    "build_transforms",
    "cents_to_amount",
    "full_name",
    "normalise_status",
    "split_full_name",
    "transforms",
    "utc_to_berlin",
]

BERLIN: Final = ZoneInfo("Europe/Berlin")
"""The zone legacy wall-clock timestamps are written in."""

CUSTOMER_COLUMNS: Final = ("full_name", "email", "phone", "created_at", "updated_at")
"""Columns of shop.customers owned by legacy.customers."""

PROFILE_COLUMNS: Final = ("loyalty_tier", "marketing_opt_in")
"""Columns of shop.customers owned by legacy.customer_profiles."""

STATUS_SPELLINGS: Final[Mapping[str, str | None]] = {
    "pending": "pending",
    "shipped": "shipped",
    "cancelled": "cancelled",
    "canceled": "cancelled",
    "test": None,  # QA rows: no target row
}
"""Legacy status (trimmed, case-folded) -> target status; ``None`` filters the order out."""

LEGACY_STATUS: Final[Mapping[str, str]] = {
    "pending": "pending",
    "shipped": "shipped",
    "cancelled": "cancelled",
}
"""Target status -> the canonical legacy spelling the inverse writes."""

MAX_AMOUNT: Final = Decimal("9999999999.99")
"""The largest absolute value numeric(12, 2) holds."""


# --- value conversions ---------------------------------------------------------------------


def _text(value: object, column: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{column}: expected text, got {type(value).__name__}")


def _trimmed(value: object, column: str) -> str | None:
    """Trimmed text, with an empty or blank string read as NULL."""
    text = _text(value, column)
    if text is None:
        return None
    return text.strip() or None


def full_name(first: object, last: object) -> str | None:
    """``'first last'`` from the legacy name parts; blank parts count as missing."""
    parts = [p for p in (_trimmed(first, "first_name"), _trimmed(last, "last_name")) if p]
    return " ".join(parts) or None


def split_full_name(name: object) -> tuple[str | None, str | None]:
    """The inverse of :func:`full_name`: split at the first space (lossy for multi-word first
    names, see the module docstring)."""
    text = _text(name, "full_name")
    if text is None:
        return None, None
    first, _, last = text.partition(" ")
    return first or None, last or None


def berlin_to_utc(value: object) -> dt.datetime | str | None:
    """A naive Europe/Berlin wall-clock timestamp as an aware UTC datetime.

    Resolves the DST edge cases as PostgreSQL does: a time in the repeated autumn hour is the
    *later* (standard time) instant, a time in the skipped spring hour is read with the offset
    before the jump (so ``02:30`` becomes ``01:30 UTC``, i.e. ``03:30`` CEST). ``None`` and
    PostgreSQL's ``'infinity'`` strings pass through. Raises ``TypeError`` for anything else
    than a naive datetime.
    """
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, dt.datetime) or value.tzinfo is not None:
        raise TypeError(f"expected a timestamp without time zone, got {value!r}")
    day = value.toordinal()
    offset = _DAY_OFFSETS.get(day, _UNKNOWN)
    if offset is _UNKNOWN:
        if len(_DAY_OFFSETS) >= _MAX_DAYS:
            _DAY_OFFSETS.clear()
        offset = _DAY_OFFSETS[day] = _day_offset(day)
    if offset is None:  # a day with a transition: per hour
        hour = day * 24 + value.hour
        try:
            offset = _HOUR_OFFSETS[hour]
        except KeyError:
            if len(_HOUR_OFFSETS) >= _MAX_HOURS:
                _HOUR_OFFSETS.clear()
            offset = _HOUR_OFFSETS[hour] = _hour_offset(
                value.replace(minute=0, second=0, microsecond=0)
            )
    if offset is None:  # the offset changes inside this hour (no transition of today's rules)
        return _berlin_to_utc_exact(value)
    assert isinstance(offset, dt.timedelta)
    # (value - offset).replace(tzinfo=dt.UTC), the same datetime, without replace()'s keyword
    # parsing: 2 of its 2.3 µs per call (bench/RESULTS.md, issue 5 sixth run)
    return _UTC_ANCHOR + (value - offset - _NAIVE_ANCHOR)


_NAIVE_ANCHOR: Final = dt.datetime(2000, 1, 1)
_UTC_ANCHOR: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _berlin_to_utc_exact(value: dt.datetime) -> dt.datetime:
    earlier = value.replace(tzinfo=BERLIN, fold=0)
    later = value.replace(tzinfo=BERLIN, fold=1)
    if earlier.utcoffset() != later.utcoffset() and _exists(earlier):
        return later.astimezone(dt.UTC)  # the repeated hour: PostgreSQL takes standard time
    return earlier.astimezone(dt.UTC)  # ordinary time, or the skipped hour


_MAX_DAYS: Final = 1 << 16  # about 179 years of distinct days; then the cache starts over
_DAY_OFFSETS: dict[int, dt.timedelta | None] = {}
"""Proleptic ordinal of a day -> :func:`_day_offset` of that day. A race between threads can
only compute an entry twice (both compute the same value)."""
_UNKNOWN: Final = object()

_MAX_HOURS: Final = 1 << 12  # transition days only: about 170 of them
_HOUR_OFFSETS: dict[int, dt.timedelta | None] = {}
"""Hour number (proleptic ordinal * 24 + hour) of a transition day -> :func:`_hour_offset`."""


def _day_offset(day: int) -> dt.timedelta | None:
    """The offset of every wall-clock time of the day ``day`` (a proleptic ordinal) when the
    zone gives one and the same offset, unambiguous (``fold`` 0 and 1 agree), at the start of
    each of its hours and at its last microsecond, else None (a transition day). Offsets
    change on whole hours or inside one, so no change hides between those instants. Data
    spread over years touches a few thousand days, where a cache per hour (tens of thousands
    of hours, two exact conversions each) kept missing."""
    start = dt.datetime.fromordinal(day)
    instants = [start + dt.timedelta(hours=h) for h in range(24)]
    instants.append(start + dt.timedelta(days=1, microseconds=-1))
    offsets = {
        local.replace(tzinfo=BERLIN, fold=fold).utcoffset() for local in instants for fold in (0, 1)
    }
    if len(offsets) == 1:
        return offsets.pop()
    return None


def _hour_offset(hour: dt.datetime) -> dt.timedelta | None:
    """The offset :func:`_berlin_to_utc_exact` subtracts from every wall-clock time of the
    naive ``hour`` (its first and last microsecond agree), or None when it does not hold for
    the whole hour. Europe/Berlin changes offset on whole hours, so one cached offset per hour
    replaces two zone lookups and a conversion per value."""
    first = hour - _berlin_to_utc_exact(hour).replace(tzinfo=None)
    last_local = hour + dt.timedelta(hours=1, microseconds=-1)
    last = last_local - _berlin_to_utc_exact(last_local).replace(tzinfo=None)
    return first if first == last else None


def _exists(local: dt.datetime) -> bool:
    back = local.astimezone(dt.UTC).astimezone(BERLIN)
    return back.replace(tzinfo=None) == local.replace(tzinfo=None)


def utc_to_berlin(value: object) -> dt.datetime | str | None:
    """The inverse of :func:`berlin_to_utc`: an aware datetime as naive Berlin wall-clock time."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise TypeError(f"expected a timestamp with time zone, got {value!r}")
    return value.astimezone(BERLIN).replace(tzinfo=None)


def cents_to_amount(cents: object) -> Decimal:
    """Integer cents as a numeric(12, 2) amount (exact; scale 2 even for whole amounts).

    Raises ``ValueError`` when the amount does not fit numeric(12, 2), so the change is
    dead-lettered instead of failing at the target.
    """
    if not isinstance(cents, int) or isinstance(cents, bool):
        raise TypeError(f"amount_cents: expected an integer, got {cents!r}")
    amount = Decimal(cents).scaleb(-2)
    if abs(amount) > MAX_AMOUNT:
        raise ValueError(f"amount_cents {cents} does not fit numeric(12, 2)")
    return amount


def amount_to_cents(amount: object) -> int:
    """The inverse of :func:`cents_to_amount`; ``ValueError`` for fractions of a cent."""
    if not isinstance(amount, Decimal | int) or isinstance(amount, bool):
        raise TypeError(f"amount: expected a Decimal, got {amount!r}")
    cents = Decimal(amount).scaleb(2)
    if not cents.is_finite() or cents != cents.to_integral_value():
        raise ValueError(f"amount {amount} is not a whole number of cents")
    return int(cents)


def normalise_status(status: object) -> str | None:
    """The target status of a legacy status, or ``None`` for a row to filter out.

    Raises ``ValueError`` naming the value for a status nobody mapped (a new spelling should
    be added to :data:`STATUS_SPELLINGS`, not guessed).
    """
    text = _text(status, "status")
    spelling = (text or "").strip().casefold()
    if spelling not in STATUS_SPELLINGS:
        raise ValueError(f"unknown order status {status!r}")
    return STATUS_SPELLINGS[spelling]


def _upper(value: object, column: str) -> str | None:
    text = _trimmed(value, column)
    return text.upper() if text is not None else None


def _lower(value: object, column: str) -> str | None:
    text = _trimmed(value, column)
    return text.lower() if text is not None else None


# --- the registry --------------------------------------------------------------------------


def build_transforms(source_schema: str = "legacy", target_schema: str = "shop") -> Transforms:
    """The shop registry for the given schema names (tests use a unique pair per test).

    The module-level :data:`transforms` is ``build_transforms()``, the one the migration file
    loads. Builds a new registry on every call; thread-safe.
    """

    def src(table: str) -> str:
        return str(QualifiedName(source_schema, table))

    def tgt(table: str) -> str:
        return str(QualifiedName(target_schema, table))

    customers, profiles, orders = src("customers"), src("customer_profiles"), src("orders")
    shop_customers, shop_addresses, shop_orders = tgt("customers"), tgt("addresses"), tgt("orders")

    registry = Transforms()
    registry.target(
        shop_customers,
        key=["id"],
        owners={customers: CUSTOMER_COLUMNS, profiles: PROFILE_COLUMNS},
    )
    registry.target(shop_addresses, key=["customer_id"])
    registry.target(shop_orders, key=["id"])

    @registry.source(
        customers,
        targets={shop_customers: {"id": "id"}, shop_addresses: {"customer_id": "id"}},
    )
    def customer(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Derived full_name, cleaned email, instants; the address split out (if any)."""
        out = {
            shop_customers: {
                "id": row["id"],
                "full_name": full_name(row["first_name"], row["last_name"]),
                "email": _lower(row["email"], "email"),
                "phone": row["phone"],
                "created_at": berlin_to_utc(row["created_at"]),
                "updated_at": berlin_to_utc(row["updated_at"]),
            }
        }
        address = {
            "street": row["street"],
            "city": row["city"],
            "postal_code": row["zip"],
            "country": _upper(row["country"], "country"),
        }
        if any(v is not None for v in address.values()):
            out[shop_addresses] = {"customer_id": row["id"], **address}
        return out

    @registry.source(profiles, targets={shop_customers: {"id": "customer_id"}})
    def profile(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The profile's columns of the merged customer row; ``notes`` is dropped."""
        return {
            shop_customers: {
                "id": row["customer_id"],
                "loyalty_tier": row["loyalty_tier"],
                "marketing_opt_in": row["marketing_opt_in"],
            }
        }

    @registry.source(orders, targets={shop_orders: {"id": "id"}})
    def order(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Cents to numeric, status normalised (``test`` rows filtered), instants."""
        status = normalise_status(row["status"])
        if status is None:
            return {}
        return {
            shop_orders: {
                "id": row["id"],
                "customer_id": row["customer_id"],
                "amount": cents_to_amount(row["amount_cents"]),
                "currency": _upper(row["currency"], "currency"),
                "status": status,
                "placed_at": berlin_to_utc(row["placed_at"]),
            }
        }

    @registry.inverse(
        shop_customers,
        columns={
            customers: ("first_name", "last_name", "email", "phone", "created_at", "updated_at")
        },
    )
    def customer_back(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The legacy customer (when created_at is set: legacy requires it) and the profile
        (when marketing_opt_in is set: legacy requires it) a merged row came from."""
        out: dict[str, dict[str, Any]] = {}
        if row.get("created_at") is not None:
            first, last = split_full_name(row.get("full_name"))
            out[customers] = {
                "id": row["id"],
                "first_name": first,
                "last_name": last,
                "email": row.get("email"),
                "phone": row.get("phone"),
                "created_at": utc_to_berlin(row.get("created_at")),
                "updated_at": utc_to_berlin(row.get("updated_at")),
            }
        if row.get("marketing_opt_in") is not None:
            out[profiles] = {
                "customer_id": row["id"],
                "loyalty_tier": row.get("loyalty_tier"),
                "marketing_opt_in": row["marketing_opt_in"],
            }
        return out

    @registry.inverse(shop_addresses, columns={customers: ("street", "city", "zip", "country")})
    def address_back(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The address columns of the legacy customer row."""
        return {
            customers: {
                "id": row["customer_id"],
                "street": row["street"],
                "city": row["city"],
                "zip": row["postal_code"],
                "country": row["country"],
            }
        }

    @registry.inverse(shop_orders)
    def order_back(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The legacy order, status in its canonical legacy spelling."""
        return {
            orders: {
                "id": row["id"],
                "customer_id": row["customer_id"],
                "amount_cents": amount_to_cents(row["amount"]),
                "currency": row["currency"],
                "status": LEGACY_STATUS[row["status"]],
                "placed_at": utc_to_berlin(row["placed_at"]),
            }
        }

    return registry


def make_transforms(config: MigrationConfig) -> Transforms:
    """The registry ``[transform] module = "examples.shop.transform"`` loads: the schema names
    come from the migration file's first table (``legacy`` and ``shop`` in the example)."""
    first = config.tables[0]
    return build_transforms(first.source.schema, first.target.schema)


transforms: Final = build_transforms()
"""The registry for the default schema names (``legacy`` -> ``shop``)."""
