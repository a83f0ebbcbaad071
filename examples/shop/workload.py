"""Data for the shop example: install the schemas, seed the legacy tables, drive live writes.

A library for tests and benchmarks; the caller owns the engines (``dualwrite.make_engine``
or a test fixture). Every function takes the schema name, so a test can use a unique schema
(``install_old_schema(engine, "legacy_t42")``) and build the matching registry with
``examples.shop.transform.build_transforms("legacy_t42", "shop_t42")``.

- :func:`install_old_schema` / :func:`install_new_schema`: run ``old_schema.sql`` /
  ``new_schema.sql`` (idempotent) under the given schema name.
- :func:`seed`: N customers, ~90 % with a profile, 1-5 orders each (3 on average), in one
  set-based statement (``INSERT ... SELECT generate_series``): mixed-case and padded emails,
  free-text phones and statuses (including ``'TEST'`` rows), char(3) currencies in any case,
  Berlin wall-clock timestamps, some NULLs and some customers without an address.
- :func:`run_workload`: random single-operation transactions for a number of transactions
  or a duration (inserts, updates of every column, no-op "touch" updates, order key
  changes, deletes of orders and profiles, occasionally a customer with its profile and
  orders), from a seeded RNG; returns what it did, including the number of row changes per
  source table (what capture should have recorded).

Not thread-safe per call (one connection); run one call per thread with its own seed to
write concurrently. Concurrent runs can deadlock or race each other (a customer deleted
under an order insert); such transactions are rolled back and counted as ``conflicts``.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

__all__ = [
    "NEW_SCHEMA_SQL",
    "OLD_SCHEMA_SQL",
    "SeedResult",
    "WorkloadResult",
    "install_new_schema",
    "install_old_schema",
    "run_workload",
    "schema_sql",
    "seed",
    "tables_toml",
]

HERE: Final = Path(__file__).resolve().parent
OLD_SCHEMA_SQL: Final = HERE / "old_schema.sql"
NEW_SCHEMA_SQL: Final = HERE / "new_schema.sql"

FIRST_NAMES: Final = (
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hans", "Ines", "Jonas",
    "Mary Ann", " lea", None,
)  # fmt: skip
LAST_NAMES: Final = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "van der Berg",
    "O'Brien", None,
)  # fmt: skip
CITIES: Final = ("Berlin", "München", "Hamburg", "Köln", "Wien", "Zürich", None)
COUNTRIES: Final = ("DE", "de", "De ", "AT", "ch", None)
LOYALTY_TIERS: Final = ("bronze", "silver", "gold", "platinum", None)
CURRENCIES: Final = ("EUR", "EUR", "EUR", "eur", "CHF", "USD")
STATUSES: Final = (
    "pending", "pending", "Pending", "shipped", "shipped", "Shipped ", "SHIPPED", "shipped",
    "cancelled", "Canceled", "CANCELLED ", "pending", "shipped", "TEST", " test",
)  # fmt: skip
"""Free-text statuses as the old code wrote them (2 in 15 are QA rows the migration drops)."""

_CONFLICT_SQLSTATES: Final = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "23503",  # foreign_key_violation: the customer was deleted by a concurrent run
        "23505",  # unique_violation: a concurrent run inserted the same profile first
    }
)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def schema_sql(which: Literal["old", "new"], schema: str | None = None) -> str:
    """The text of ``old_schema.sql`` or ``new_schema.sql``, with its schema renamed to
    ``schema`` (quoted) when given."""
    path, default = (OLD_SCHEMA_SQL, "legacy") if which == "old" else (NEW_SCHEMA_SQL, "shop")
    sql = path.read_text(encoding="utf-8")
    if schema is None or schema == default:
        return sql
    quoted = _quote(schema)
    sql = re.sub(rf"\b{default}\.", lambda _m: quoted + ".", sql)
    return re.sub(rf"(SCHEMA IF NOT EXISTS ){default};", lambda m: m.group(1) + quoted + ";", sql)


def _run_script(engine: Engine, sql: str) -> None:
    # Several statements and no parameters: psycopg sends them as one simple query.
    with engine.begin() as conn:
        conn.exec_driver_sql(sql)


def tables_toml(source_schema: str = "legacy", target_schema: str = "shop") -> str:
    """The ``[[tables]]`` entries of a shop migration file between the two schemas."""
    entries = (
        ("customers", "id", "customers"),
        ("customer_profiles", "customer_id", "customers"),
        ("orders", "id", "orders"),
    )
    return "".join(
        f'[[tables]]\nsource = "{source_schema}.{old}"\nkey = ["{key}"]\n'
        f'target = "{target_schema}.{new}"\n'
        for old, key, new in entries
    )


def install_old_schema(engine: Engine, schema: str = "legacy") -> None:
    """Create the legacy schema and tables (idempotent); one transaction."""
    _run_script(engine, schema_sql("old", schema))


def install_new_schema(engine: Engine, schema: str = "shop") -> None:
    """Create the new shop schema and tables (idempotent); one transaction."""
    _run_script(engine, schema_sql("new", schema))


# --- seeding -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedResult:
    """Rows :func:`seed` inserted."""

    customers: int
    profiles: int
    orders: int

    @property
    def rows(self) -> int:
        return self.customers + self.profiles + self.orders


def _array(values: tuple[str | None, ...]) -> str:
    items = ", ".join("NULL" if v is None else "'" + v.replace("'", "''") + "'" for v in values)
    return f"ARRAY[{items}]::text[]"


def _pick(values: tuple[str | None, ...]) -> str:
    """SQL choosing one of ``values`` uniformly with ``random()``."""
    return f"({_array(values)})[1 + floor(random() * {len(values)})::int]"


_SEED_SQL: Final = """
WITH picked AS (
    SELECT g.i,
           {first} AS first_name,
           {last} AS last_name,
           {domain} AS domain,
           random() AS r_email,
           random() AS r_phone,
           random() AS r_addr,
           timestamp '2016-01-01' + random() * interval '8 years' AS created_at,
           random() * interval '400 days' AS age
    FROM generate_series(1, :n) AS g(i)
), shaped AS (
    SELECT p.*,
           replace(coalesce(btrim(first_name), 'kunde'), ' ', '') || '.'
               || replace(coalesce(last_name, 'x'), ' ', '') || p.i || '@' || domain AS email_raw
    FROM picked AS p
), new_customers AS (
    INSERT INTO {s}.customers
        (first_name, last_name, email, phone, street, city, zip, country, created_at, updated_at)
    SELECT first_name,
           last_name,
           CASE WHEN r_email < 0.03 THEN NULL
                WHEN r_email < 0.40 THEN lower(email_raw)
                WHEN r_email < 0.55 THEN upper(email_raw)
                WHEN r_email < 0.70 THEN ' ' || email_raw || ' '
                ELSE email_raw END,
           CASE WHEN r_phone < 0.10 THEN NULL
                WHEN r_phone < 0.40 THEN '+49 30 ' || (1000000 + i)
                WHEN r_phone < 0.70 THEN '030/' || (1000000 + i)
                ELSE '(030) ' || (1000000 + i) END,
           CASE WHEN r_addr >= 0.05 THEN 'Hauptstraße ' || (1 + i % 250) END,
           CASE WHEN r_addr >= 0.05 THEN {city} END,
           CASE WHEN r_addr >= 0.05 THEN lpad(((i * 7919) % 100000)::text, 5, '0') END,
           CASE WHEN r_addr >= 0.05 THEN {country} END,
           created_at,
           created_at + age
    FROM shaped
    RETURNING id, created_at
), new_profiles AS (
    INSERT INTO {s}.customer_profiles (customer_id, loyalty_tier, marketing_opt_in, notes)
    SELECT id,
           {tier},
           random() < 0.4,
           CASE WHEN random() < 0.1 THEN 'called about a late delivery' END
    FROM new_customers
    WHERE random() < 0.9
    RETURNING 1
), new_orders AS (
    INSERT INTO {s}.orders (customer_id, amount_cents, currency, status, placed_at)
    SELECT c.id,
           99 + floor(random() * 50000)::bigint,
           {currency},
           {status},
           c.created_at + random() * interval '300 days'
    FROM new_customers AS c
    CROSS JOIN LATERAL generate_series(1, 1 + c.id % 5) AS o(n)
    RETURNING 1
)
SELECT (SELECT count(*) FROM new_customers),
       (SELECT count(*) FROM new_profiles),
       (SELECT count(*) FROM new_orders)
"""


def seed(
    engine: Engine, customers: int, *, schema: str = "legacy", rng_seed: int = 0
) -> SeedResult:
    """Insert ``customers`` customers with profiles and orders, in one transaction.

    Set-based (one ``INSERT ... SELECT generate_series`` statement): 200,000 customers (~1 M
    rows) took ~15 s on a development machine's PostgreSQL 15 without capture triggers.
    ``rng_seed`` seeds PostgreSQL's ``random()``; the same seed gives the same rows on an empty
    schema and the same server version. Raises ``ValueError`` for a negative count; database
    errors propagate (nothing is inserted).
    """
    if customers < 0:
        raise ValueError(f"customers must be 0 or more, got {customers}")
    sql = _SEED_SQL.format(
        s=_quote(schema),
        first=_pick(FIRST_NAMES),
        last=_pick(LAST_NAMES),
        domain=_pick(("example.com", "Mail.DE", "gmx.net", "WEB.de")),
        city=_pick(CITIES),
        country=_pick(COUNTRIES),
        tier=_pick(LOYALTY_TIERS),
        currency=_pick(CURRENCIES),
        status=_pick(STATUSES),
    )
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
        conn.execute(text("SELECT setseed(:s)"), {"s": _setseed_value(rng_seed)})
        row = conn.execute(text(sql), {"n": customers}).one()
    return SeedResult(int(row[0]), int(row[1]), int(row[2]))


def _setseed_value(rng_seed: int) -> float:
    """Map any integer onto setseed's [-1, 1]."""
    return (rng_seed % 2_000_001) / 1_000_000 - 1.0


# --- live workload -------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadResult:
    """What :func:`run_workload` did.

    ``operations``: committed transactions per operation name. ``changes``: row changes per
    source table (``schema.table``) as capture records them (a key change counts twice: a
    delete and an insert). ``misses``: operations that found no row to act on (their
    transactions commit and change nothing). ``conflicts``: transactions rolled back because
    of a concurrent writer.
    """

    transactions: int
    operations: Mapping[str, int]
    changes: Mapping[str, int]
    misses: int
    conflicts: int
    elapsed_s: float


_NOW_BERLIN: Final = "(now() AT TIME ZONE 'Europe/Berlin')"


class _Workload:
    """One run's state: the RNG, the id ranges to pick from, the counters."""

    def __init__(self, conn: Connection, schema: str, rng: random.Random) -> None:
        self.conn = conn
        self.rng = rng
        q = _quote(schema)
        self.customers, self.profiles, self.orders = (
            f"{q}.customers",
            f"{q}.customer_profiles",
            f"{q}.orders",
        )
        self.labels = {
            self.customers: f"{schema}.customers",
            self.profiles: f"{schema}.customer_profiles",
            self.orders: f"{schema}.orders",
        }
        self.changes: Counter[str] = Counter()
        self.misses = 0
        self.max_customer = self._max_id(self.customers)
        self.max_order = self._max_id(self.orders)

    def _max_id(self, table: str) -> int:
        value = self.conn.execute(text(f"SELECT coalesce(max(id), 0) FROM {table}")).scalar_one()
        return int(value)

    # --- helpers

    def _exec(self, table: str, sql: str, params: Mapping[str, Any] | None = None) -> int:
        count = self.conn.execute(text(sql), dict(params or {})).rowcount
        self.changes[self.labels[table]] += count
        return count

    def _any_customer(self) -> int:
        return self.rng.randint(1, max(self.max_customer, 1))

    def _any_order(self) -> int:
        return self.rng.randint(1, max(self.max_order, 1))

    def _hit(self, count: int) -> None:
        if count == 0:
            self.misses += 1

    def _local_time(self) -> dt.datetime:
        """A random Berlin wall-clock time in 2016-2024 (the DST hours included)."""
        return dt.datetime(2016, 1, 1) + dt.timedelta(
            microseconds=self.rng.randrange(8 * 365 * 86_400 * 1_000_000)
        )

    def _email(self) -> str | None:
        if self.rng.random() < 0.03:
            return None
        first = (self.rng.choice(FIRST_NAMES) or "kunde").strip().replace(" ", "")
        raw = f"{first}.{self.rng.randrange(10**6)}@Example.com"
        style = self.rng.choice((str.lower, str.upper, str.title, lambda s: f"  {s} ", str))
        return style(raw)

    def _phone(self) -> str | None:
        prefix = self.rng.choice((None, "+49 30 ", "030/", "(030) ", "0171-"))
        return None if prefix is None else prefix + str(self.rng.randrange(1_000_000, 9_999_999))

    def _customer_values(self) -> dict[str, Any]:
        no_address = self.rng.random() < 0.05
        return {
            "first_name": self.rng.choice(FIRST_NAMES),
            "last_name": self.rng.choice(LAST_NAMES),
            "email": self._email(),
            "phone": self._phone(),
            "street": None if no_address else f"Hauptstraße {self.rng.randint(1, 250)}",
            "city": None if no_address else self.rng.choice(CITIES),
            "zip": None if no_address else f"{self.rng.randrange(100_000):05d}",
            "country": None if no_address else self.rng.choice(COUNTRIES),
            "created_at": self._local_time(),
        }

    def _order_values(self, customer_id: int) -> dict[str, Any]:
        return {
            "customer_id": customer_id,
            "amount_cents": self.rng.randint(-5_000, 500_000),  # refunds are negative
            "currency": self.rng.choice(CURRENCIES),
            "status": self.rng.choice(STATUSES),
            "placed_at": self._local_time(),
        }

    # --- operations: each runs inside the caller's transaction

    def insert_customer(self) -> None:
        values = self._customer_values()
        new_id = self.conn.execute(
            text(
                f"INSERT INTO {self.customers} (first_name, last_name, email, phone, street, "
                "city, zip, country, created_at, updated_at) VALUES (:first_name, :last_name, "
                ":email, :phone, :street, :city, :zip, :country, :created_at, :created_at) "
                "RETURNING id"
            ),
            values,
        ).scalar_one()
        self.changes[self.labels[self.customers]] += 1
        self.max_customer = max(self.max_customer, int(new_id))
        if self.rng.random() < 0.7:
            self._exec(
                self.profiles,
                f"INSERT INTO {self.profiles} (customer_id, loyalty_tier, marketing_opt_in) "
                "VALUES (:id, :tier, :opt_in)",
                {
                    "id": new_id,
                    "tier": self.rng.choice(LOYALTY_TIERS),
                    "opt_in": self.rng.random() < 0.4,
                },
            )
        for _ in range(self.rng.randint(0, 3)):
            self._insert_order(int(new_id))

    def _insert_order(self, customer_id: int) -> int:
        new_id = self.conn.execute(
            text(
                f"INSERT INTO {self.orders} (customer_id, amount_cents, currency, status, "
                "placed_at) SELECT id, :amount_cents, :currency, :status, :placed_at "
                f"FROM {self.customers} WHERE id = :customer_id RETURNING id"
            ),
            self._order_values(customer_id),
        ).scalar_one_or_none()
        if new_id is None:
            return 0
        self.changes[self.labels[self.orders]] += 1
        self.max_order = max(self.max_order, int(new_id))
        return 1

    def insert_order(self) -> None:
        self._hit(self._insert_order(self._any_customer()))

    def update_customer(self) -> None:
        column = self.rng.choice(
            (
                "first_name", "last_name", "email", "phone", "street", "city", "zip",
                "country", "created_at",
            )
        )  # fmt: skip
        value = self._customer_values()[column]
        # The old application always bumps updated_at; sometimes only that changes.
        assignment = f"{column} = :value, " if self.rng.random() < 0.9 else ""
        self._hit(
            self._exec(
                self.customers,
                f"UPDATE {self.customers} SET {assignment}updated_at = {_NOW_BERLIN} "
                "WHERE id = :id",
                {"value": value, "id": self._any_customer()},
            )
        )

    def upsert_profile(self) -> None:
        self._hit(
            self._exec(
                self.profiles,
                f"INSERT INTO {self.profiles} AS p (customer_id, loyalty_tier, "
                "marketing_opt_in, notes) "
                f"SELECT id, :tier, :opt_in, :notes FROM {self.customers} WHERE id = :id "
                "ON CONFLICT (customer_id) DO UPDATE SET loyalty_tier = excluded.loyalty_tier, "
                "marketing_opt_in = excluded.marketing_opt_in, notes = excluded.notes",
                {
                    "id": self._any_customer(),
                    "tier": self.rng.choice(LOYALTY_TIERS),
                    "opt_in": self.rng.random() < 0.4,
                    "notes": self.rng.choice((None, None, "prefers DHL", "VIP")),
                },
            )
        )

    def update_order(self) -> None:
        column = self.rng.choice(
            ("status", "status", "amount_cents", "currency", "placed_at", "customer_id")
        )
        if column == "customer_id":  # move the order to another existing customer
            sql = (
                f"UPDATE {self.orders} AS o SET customer_id = c.id FROM (SELECT id FROM "
                f"{self.customers} WHERE id >= :value ORDER BY id LIMIT 1) AS c WHERE o.id = :id"
            )
            value: Any = self._any_customer()
        else:
            sql = f"UPDATE {self.orders} SET {column} = :value WHERE id = :id"
            value = self._order_values(0)[column]
        self._hit(self._exec(self.orders, sql, {"value": value, "id": self._any_order()}))

    def touch(self) -> None:
        """A key-preserving update that changes nothing (capture still records it)."""
        table = self.rng.choice((self.customers, self.orders, self.profiles))
        key = "customer_id" if table == self.profiles else "id"
        row_id = self._any_order() if table == self.orders else self._any_customer()
        self._hit(
            self._exec(table, f"UPDATE {table} SET {key} = {key} WHERE {key} = :id", {"id": row_id})
        )

    def rekey_order(self) -> None:
        """Give an order a new id (capture records a delete and an insert)."""
        new_id = self.conn.execute(
            text(
                f"UPDATE {self.orders} SET id = nextval(pg_get_serial_sequence(:table, 'id')) "
                "WHERE id = :id RETURNING id"
            ),
            {"table": self.orders, "id": self._any_order()},
        ).scalar_one_or_none()
        if new_id is None:
            self.misses += 1
            return
        self.changes[self.labels[self.orders]] += 2
        self.max_order = max(self.max_order, int(new_id))

    def delete_order(self) -> None:
        self._hit(
            self._exec(
                self.orders, f"DELETE FROM {self.orders} WHERE id = :id", {"id": self._any_order()}
            )
        )

    def delete_profile(self) -> None:
        self._hit(
            self._exec(
                self.profiles,
                f"DELETE FROM {self.profiles} WHERE customer_id = :id",
                {"id": self._any_customer()},
            )
        )

    def delete_customer(self) -> None:
        """The customer, with its profile and orders (children first: foreign keys)."""
        params = {"id": self._any_customer()}
        self._exec(self.orders, f"DELETE FROM {self.orders} WHERE customer_id = :id", params)
        self._exec(self.profiles, f"DELETE FROM {self.profiles} WHERE customer_id = :id", params)
        self._hit(
            self._exec(self.customers, f"DELETE FROM {self.customers} WHERE id = :id", params)
        )


OPERATION_WEIGHTS: Final[Mapping[str, int]] = {
    "insert_customer": 12,
    "insert_order": 15,
    "update_customer": 15,
    "upsert_profile": 10,
    "update_order": 20,
    "touch": 5,
    "rekey_order": 3,
    "delete_order": 8,
    "delete_profile": 5,
    "delete_customer": 2,
}
"""Relative frequency of each operation; each transaction runs exactly one."""


def run_workload(
    engine: Engine,
    *,
    transactions: int | None = None,
    duration_s: float | None = None,
    schema: str = "legacy",
    rng_seed: int = 0,
    weights: Mapping[str, int] = OPERATION_WEIGHTS,
) -> WorkloadResult:
    """Run random single-operation transactions until ``transactions`` have been attempted
    or ``duration_s`` has passed, whichever comes first (at least one must be given).

    Ids are drawn uniformly from 1 to the largest id seen, so a mostly deleted table gives
    ``misses`` rather than errors. Conflicts with concurrent writers (deadlock,
    serialization, a foreign key or unique race) roll the transaction back and are counted;
    any other database error propagates after rolling back the current transaction.
    """
    if transactions is None and duration_s is None:
        raise ValueError("give transactions=, duration_s= or both")
    unknown = set(weights) - set(OPERATION_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown operations {sorted(unknown)}")
    rng = random.Random(rng_seed)  # noqa: S311 - test data, not security
    names = [name for name, weight in weights.items() if weight > 0]
    chances = [weights[name] for name in names]
    operations: Counter[str] = Counter()
    conflicts = attempted = 0
    started = time.monotonic()
    deadline = None if duration_s is None else started + duration_s
    with engine.connect() as conn:
        state = _Workload(conn, schema, rng)
        conn.commit()
        while (transactions is None or attempted < transactions) and (
            deadline is None or time.monotonic() < deadline
        ):
            name = rng.choices(names, weights=chances)[0]
            operation: Callable[[], None] = getattr(state, name)
            attempted += 1
            before = (state.changes.copy(), state.misses, state.max_customer, state.max_order)
            try:
                with conn.begin():
                    operation()
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) not in _CONFLICT_SQLSTATES:
                    raise
                conflicts += 1
                state.changes, state.misses, state.max_customer, state.max_order = before
                continue
            operations[name] += 1
    return WorkloadResult(
        transactions=attempted,
        operations=dict(operations),
        changes=dict(state.changes),
        misses=state.misses,
        conflicts=conflicts,
        elapsed_s=time.monotonic() - started,
    )
