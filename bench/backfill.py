"""Backfill throughput and peak memory on the shop example (issue 5), against raw COPY-in.

1. fill: the shop example's schemas (``examples/shop/old_schema.sql`` on the source,
   ``new_schema.sql`` on the target, default names ``legacy`` / ``shop``), ``--customers``
   customers and ``--rows`` rows of ``legacy.orders`` from set-based SQL (free-text statuses
   and currencies drawn from ``examples.shop.workload``, so 2 in 15 are 'test' rows the
   transform filters out: a delete on the target), then ``VACUUM (FREEZE, ANALYZE)``, then
   capture installed with ``examples/shop/migration.toml`` as it is (its ``${VAR:-...}``
   placeholders read DUALWRITE_SOURCE_URL / DUALWRITE_TARGET_URL / DUALWRITE_KAFKA_BOOTSTRAP);
2. raw baseline (before the backfills and again after them): the same number of rows, shaped
   like ``shop.orders`` and generated before the clock starts, loaded with one COPY into
   ``CREATE TABLE ... (LIKE shop.orders INCLUDING ALL)`` (primary key, customer_id index and
   CHECK), binary ``write_row`` and pre-formatted text; plus the fastest batched upsert of
   ``ceilings.py`` (binary COPY into a temp staging table + ``INSERT ... SELECT ... ON
   CONFLICT DO UPDATE``, one commit per ``--chunk-rows``) for context;
3. backfill: ``run_backfill`` of ``legacy.orders`` only (``BackfillSettings(tables=...)``)
   in this process, for each ``--chunk-rows``, ``--repeats`` times interleaved with the raw
   baseline; the target table, its ``dualwrite.applied`` rows and the progress row are
   cleared before each run; the Applier's methods are wrapped with chunk-level timers
   (negligible overhead); after every run (here and in 5 and 6) the target must equal the
   transform of the source: ``shop.orders`` is hashed row by row and compared (count and
   digest) with the transform of every source row read by a plain ``SELECT`` (computed once
   per table size, not through the backfill's read path), and the backfill must have left
   no bookkeeping row for it (a single-owner target, ``docs/backfill.md``);
3a. with ``--cli-processes N ...``, every round: ``dualwrite backfill --processes N`` (N = 1:
   the plain command), and with ``--shard-processes N ...`` the CLI as N ``--shard K/N``
   processes at once (the two ways docs/backfill.md gives to use more cores), process
   start-up included, the target checked the same way;
3b. with ``--floor-shards N ...``, every round: the Python floor (``python_floor``): the same
   source rows read by N forked processes with psycopg's own types, each row passed to the
   shop's ``order()`` directly and written with binary COPY into a fresh table, nothing else:
   what any backfill running this Python transform on this machine pays at least;
4. phases: one pass of the backfill's own chunk queries over the table, without applying,
   timing the SELECT, the row fetch, the records (``TypedChunks.record``) and the transforms per
   chunk;
5. profile: one ``dualwrite backfill FILE --table legacy.orders --json`` child under
   ``py-spy record --idle`` (wall-clock samples, grouped by what the backfill loop calls);
6. memory: the same CLI child (no py-spy) over the ``--rows`` table, then, after adding rows
   up to ``--big-rows`` (capture uninstalled around the insert, installed again), over the
   bigger table; peak RSS from ``wait4`` (``ru_maxrss``), and VmRSS sampled at every
   progress line.

Services come from DUALWRITE_SOURCE_URL / DUALWRITE_TARGET_URL / DUALWRITE_KAFKA_BOOTSTRAP;
without them the dev stack is started and stopped around the run. It refuses to run when the
``legacy`` or ``shop`` schema already exists (``--drop-existing`` drops them first) and drops
them, and its rows of the bookkeeping, at the end.

    .venv/bin/python bench/backfill.py                           # 1M + 5M rows (~35 min on 2 busy cores)
    .venv/bin/python bench/backfill.py --memory-chunk-rows 5000 20000   # memory at both sizes
    .venv/bin/python bench/backfill.py --rows 50000 --big-rows 150000 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import random
import re
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from _benchlib import emit_json, libpq_url, machine_info, print_table, stopwatch
from _capturebench import missing_services, run_inside_dev_stack, service_pids, services_cpu_s
from ceilings import try_checkpoint
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # examples.shop is imported from the repository root

from dualwrite import backfill as bf  # noqa: E402
from dualwrite import capture, load_migration, make_engine  # noqa: E402
from dualwrite.apply import Applier, ensure_bookkeeping  # noqa: E402
from dualwrite.backfill import BackfillSettings, run_backfill  # noqa: E402
from dualwrite.config import MigrationConfig  # noqa: E402
from dualwrite.envelope import _decode_row, parse_json  # noqa: E402
from dualwrite.transform import load_transforms  # noqa: E402
from examples.shop.workload import (  # noqa: E402
    CURRENCIES,
    STATUSES,
    install_new_schema,
    install_old_schema,
)

MIGRATION = REPO / "examples" / "shop" / "migration.toml"
SOURCE_TABLE = "legacy.orders"
TARGET_TABLE = "shop.orders"
OUT = Path(__file__).resolve().parent / "out"
DUALWRITE_CLI = Path(sys.executable).parent / "dualwrite"
RAW_COLUMNS = "id, customer_id, amount, currency, status, placed_at"
RAW_TYPES = ["int8", "int4", "numeric", "text", "text", "timestamptz"]
COPY_METHODS = ("binary_write_row", "text_preformatted")


# --- fill ------------------------------------------------------------------------------------


def pick_sql(values: Sequence[str | None]) -> str:
    """SQL choosing one of ``values`` uniformly with ``random()``."""
    items = ", ".join("NULL" if v is None else "'" + v.replace("'", "''") + "'" for v in values)
    return f"(ARRAY[{items}]::text[])[1 + floor(random() * {len(values)})::int]"


CUSTOMERS_SQL = """
INSERT INTO legacy.customers (id, first_name, last_name, email, phone, street, city, zip,
                              country, created_at, updated_at)
SELECT g, 'Anna', 'Müller', 'Anna.Mueller' || g || '@Example.COM ', '030/' || (1000000 + g),
       'Hauptstraße ' || (1 + g %% 250), 'Berlin', lpad(((g * 7919) %% 100000)::text, 5, '0'),
       'de', timestamp '2016-01-01' + g * interval '1 minute',
       timestamp '2016-01-01' + g * interval '1 minute'
FROM generate_series(1, %(n)s) AS g
"""

ORDERS_SQL = f"""
INSERT INTO legacy.orders (id, customer_id, amount_cents, currency, status, placed_at)
SELECT g, 1 + (g * 7919) %% %(customers)s, 99 + floor(random() * 50000)::bigint,
       {pick_sql(CURRENCIES)}, {pick_sql(STATUSES)},
       timestamp '2016-01-01' + random() * interval '8 years'
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
"""


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(libpq_url(url), autocommit=autocommit, options="-c timezone=UTC")


def schemas_exist(url: str, names: Sequence[str]) -> list[str]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (list(names),)
        ).fetchall()
    return [r[0] for r in rows]


def seed_orders(src_url: str, lo: int, hi: int, customers: int, step: int = 1_000_000) -> float:
    """Insert orders ``lo..hi`` (one transaction per million), then vacuum; return seconds."""
    with stopwatch() as t, connect(src_url) as conn:
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        is_super = bool((superuser.fetchone() or (False,))[0])
        conn.execute("SELECT setseed(0.42)")
        for start in range(lo, hi + 1, step):
            if is_super:  # skip the foreign-key trigger: the ids are valid by construction
                conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(
                ORDERS_SQL,
                {"customers": customers, "lo": start, "hi": min(hi, start + step - 1)},
                prepare=False,
            )
            conn.commit()
            print(f"  orders up to {min(hi, start + step - 1):,}", file=sys.stderr)
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('legacy.orders', 'id'), "
            "(SELECT max(id) FROM legacy.orders))"
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM (FREEZE, ANALYZE) legacy.orders")
        try_checkpoint(conn)
    return t[0]


def fill(
    src_url: str, tgt_url: str, source: Any, target: Any, args: argparse.Namespace
) -> dict[str, Any]:
    install_old_schema(source)
    install_new_schema(target)
    info: dict[str, Any] = {}
    print(f"seeding {args.customers:,} customers ...", file=sys.stderr)
    with stopwatch() as t, connect(src_url) as conn:
        conn.execute(CUSTOMERS_SQL, {"n": args.customers})
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('legacy.customers', 'id'), %s)",
            (args.customers,),
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM (ANALYZE) legacy.customers")
    info["customers_s"] = round(t[0], 1)
    print(f"seeding {args.rows:,} orders ...", file=sys.stderr)
    info["orders_s"] = round(seed_orders(src_url, 1, args.rows, args.customers), 1)
    info.update(source_facts(src_url))
    return info


def source_facts(src_url: str) -> dict[str, Any]:
    with connect(src_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE lower(btrim(status)) = 'test'), "
            "pg_total_relation_size('legacy.orders'), "
            "(SELECT avg(length(row_to_json(o)::text)) FROM "
            " (SELECT * FROM legacy.orders ORDER BY id LIMIT 10000) AS o) "
            "FROM legacy.orders"
        ).fetchone()
    assert row is not None
    return {
        "source_rows": int(row[0]),
        "test_rows": int(row[1]),
        "source_table_mib": round(row[2] / 2**20, 1),
        "row_to_json_bytes_avg": round(float(row[3]), 1),
    }


# --- raw baseline ----------------------------------------------------------------------------

RawRow = tuple[int, int, Decimal, str, str, dt.datetime]


def raw_rows(n: int, customers: int, seed: int = 7) -> list[RawRow]:
    """Rows shaped like shop.orders (what the transform produces), built before the clock."""
    rng = random.Random(seed)
    epoch = dt.datetime(2016, 1, 1, tzinfo=dt.UTC)
    statuses = ("pending", "shipped", "cancelled")
    currencies = ("EUR", "CHF", "USD")
    span = 8 * 365 * 86_400 * 1_000_000
    return [
        (
            i,
            1 + (i * 7919) % customers,
            Decimal(rng.randint(99, 50_098)).scaleb(-2),
            currencies[rng.randrange(3)],
            statuses[rng.randrange(3)],
            epoch + dt.timedelta(microseconds=rng.randrange(span)),
        )
        for i in range(1, n + 1)
    ]


def raw_text(rows: Sequence[RawRow]) -> bytes:
    return "".join(
        f"{r[0]}\t{r[1]}\t{r[2]}\t{r[3]}\t{r[4]}\t{r[5].isoformat()}\n" for r in rows
    ).encode()


BkRow = tuple[str, str, str, int, bool]


def bookkeeping_rows(rows: Sequence[RawRow]) -> list[BkRow]:
    """The ``dualwrite.applied`` rows the Applier writes for ``rows`` (version 0)."""
    return [(TARGET_TABLE, f"[{r[0]}]", SOURCE_TABLE, 0, False) for r in rows]


def raw_copy_in(
    tgt_url: str,
    method: str,
    rows: Sequence[RawRow],
    text: bytes,
    chunk_rows: int,
    bk_rows: Sequence[BkRow] = (),
) -> dict[str, Any]:
    """Load ``rows`` into a fresh table shaped like shop.orders; return the figure."""
    table = f"bench_bf_raw_{uuid.uuid4().hex[:8]}"
    with connect(tgt_url) as conn:
        conn.execute(f"CREATE TABLE public.{table} (LIKE shop.orders INCLUDING ALL)")
        conn.commit()
        try_checkpoint(conn)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            pg0 = services_cpu_s(PIDS).get("postgres", 0.0)
            with conn.cursor() as cur:
                if method == "binary_write_row":
                    with cur.copy(
                        f"COPY public.{table} ({RAW_COLUMNS}) FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.set_types(RAW_TYPES)
                        for row in rows:
                            copy.write_row(row)
                elif method == "text_preformatted":
                    view = memoryview(text)
                    with cur.copy(f"COPY public.{table} ({RAW_COLUMNS}) FROM STDIN") as copy:
                        for start in range(0, len(view), 1 << 20):
                            copy.write(view[start : start + (1 << 20)])
                elif method == "staged_upsert":
                    staged_upsert(conn, table, rows, chunk_rows)
                elif method == "staged_upsert_bookkeeping":
                    staged_upsert(conn, table, rows, chunk_rows, bk_rows)
                else:
                    raise ValueError(method)
            conn.commit()
            seconds = time.perf_counter() - t0
            cpu = time.process_time() - c0
            pg_cpu = services_cpu_s(PIDS).get("postgres", 0.0) - pg0
            count = conn.execute(f"SELECT count(*) FROM public.{table}").fetchone()
            assert count is not None and count[0] == len(rows), (count, len(rows))
        finally:
            conn.rollback()
            conn.execute(f"DROP TABLE IF EXISTS public.{table}")
            conn.execute(f"DROP TABLE IF EXISTS public.{table}_bk")
            conn.commit()
    return {
        "method": method,
        "rows": len(rows),
        "seconds": round(seconds, 2),
        "per_s": round(len(rows) / seconds, 1),
        "client_cpu_s": round(cpu, 2),
        "pg_cpu_s": round(pg_cpu, 2),
    }


def staged_upsert(
    conn: psycopg.Connection[Any],
    table: str,
    rows: Sequence[RawRow],
    chunk_rows: int,
    bk_rows: Sequence[BkRow] | None = None,
) -> None:
    """ceilings.py's fastest upsert: binary COPY into a temp table + INSERT ... ON CONFLICT,
    one commit per chunk. With ``bk_rows``, also what the Applier does around it on the
    server: COPY the chunk's bookkeeping rows into a temp table, the same ``INSERT INTO
    applied ... ON CONFLICT DO UPDATE ... WHERE version < EXCLUDED.version RETURNING`` (into a
    copy of ``dualwrite.applied``), its rows fetched; the Python per row kept to the minimum
    (rows and bookkeeping tuples built before the clock)."""
    stage = f"{table}_stage"
    conn.execute(
        f"CREATE TEMP TABLE {stage} (LIKE public.{table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    claim = ""
    if bk_rows is not None:
        conn.execute(f"CREATE TABLE public.{table}_bk (LIKE dualwrite.applied INCLUDING ALL)")
        conn.execute(
            f"CREATE TEMP TABLE {table}_ops (target_table text, target_key text, "
            "source_table text, version bigint, deleted boolean) ON COMMIT DELETE ROWS"
        )
        claim = (
            f"INSERT INTO public.{table}_bk AS a (target_table, target_key, source_table, "
            f"version, deleted) SELECT target_table, target_key, source_table, version, deleted "
            f"FROM {table}_ops ORDER BY target_table, target_key, source_table "
            "ON CONFLICT (target_table, target_key, source_table) DO UPDATE SET "
            "version = EXCLUDED.version, deleted = EXCLUDED.deleted, applied_at = now() "
            "WHERE a.version < EXCLUDED.version RETURNING target_table, target_key, source_table"
        )
    conn.commit()
    merge = (
        f"INSERT INTO public.{table} ({RAW_COLUMNS}) SELECT {RAW_COLUMNS} FROM {stage} "
        "ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id, amount = "
        "EXCLUDED.amount, currency = EXCLUDED.currency, status = EXCLUDED.status, "
        "placed_at = EXCLUDED.placed_at"
    )
    with conn.cursor() as cur:
        for start in range(0, len(rows), chunk_rows):
            if bk_rows is not None:
                with cur.copy(f"COPY {table}_ops FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "text", "text", "int8", "bool"])
                    for bk in bk_rows[start : start + chunk_rows]:
                        copy.write_row(bk)
                cur.execute(claim)
                cur.fetchall()
            with cur.copy(f"COPY {stage} ({RAW_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(RAW_TYPES)
                for row in rows[start : start + chunk_rows]:
                    copy.write_row(row)
            cur.execute(merge)
            conn.commit()
    conn.execute(f"DROP TABLE {stage}")
    if bk_rows is not None:
        conn.execute(f"DROP TABLE {table}_ops")


# --- backfill (in process) -------------------------------------------------------------------

PIDS: dict[str, int] = {}

TIMED_APPLIER = (
    "apply_reads",
    "_write_reads",
    "_apply_general",
    "_upsert_absent",
    "_delete_absent",
    "_stage",
)


@contextlib.contextmanager
def applier_timers() -> Iterator[dict[str, float]]:
    """Wrap the Applier's per-chunk methods with timers (seconds summed per method)."""
    totals = dict.fromkeys(TIMED_APPLIER, 0.0)
    totals["quiet_probe"] = 0.0
    originals: dict[str, Any] = {name: getattr(Applier, name) for name in TIMED_APPLIER}
    original_quiet = bf._wait_until_quiet

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                totals[name] += time.perf_counter() - t0

        return wrapper

    for name, function in originals.items():
        setattr(Applier, name, timed(name, function))
    bf._wait_until_quiet = timed("quiet_probe", original_quiet)  # type: ignore[assignment]
    try:
        yield totals
    finally:
        for name, function in originals.items():
            setattr(Applier, name, function)
        bf._wait_until_quiet = original_quiet  # type: ignore[assignment]


def reset_target(tgt_url: str) -> None:
    """Empty shop.orders, its bookkeeping rows and the backfill progress; vacuum; checkpoint."""
    with connect(tgt_url, autocommit=True) as conn:
        conn.execute("TRUNCATE shop.orders")
        has_applied = conn.execute("SELECT to_regclass('dualwrite.applied')").fetchone()
        if has_applied is not None and has_applied[0] is not None:
            others = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM dualwrite.applied WHERE target_table <> %s)",
                (TARGET_TABLE,),
            ).fetchone()
            if others is not None and not others[0]:
                conn.execute("TRUNCATE dualwrite.applied")
            else:
                conn.execute(
                    "DELETE FROM dualwrite.applied WHERE target_table = %s", (TARGET_TABLE,)
                )
                conn.execute("VACUUM dualwrite.applied")
        has_progress = conn.execute("SELECT to_regclass('dualwrite.backfill_progress')").fetchone()
        if has_progress is not None and has_progress[0] is not None:
            conn.execute(
                "DELETE FROM dualwrite.backfill_progress WHERE source_table = %s",
                (SOURCE_TABLE,),
            )
        try_checkpoint(conn)


class Expected(NamedTuple):
    """What ``shop.orders`` must hold: the transform of every ``legacy.orders`` row, as a row
    count and an order-independent digest of the rows (see :func:`expected_target`)."""

    rows: int
    digest: int
    source_rows: int


TARGET_COLUMNS = ("id", "customer_id", "amount", "currency", "status", "placed_at")


def _row_hash(values: Sequence[Any]) -> int:
    """One shop.orders row (id, customer_id, amount, currency, status, placed_at) as 64 bits;
    amounts to two places and instants in UTC, so equal values hash equally on both sides."""
    text = "|".join(
        (
            str(values[0]),
            str(values[1]),
            f"{values[2]:.2f}",
            str(values[3]),
            str(values[4]),
            values[5].astimezone(dt.UTC).isoformat(),
        )
    )
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def expected_target(src_url: str, config: MigrationConfig) -> Expected:
    """The transform of every source row, independently of the backfill's read path: the
    rows come from a plain ``SELECT`` (psycopg's own types; a server-side cursor, so memory
    stays bounded), go through the migration's transforms, and the target rows they must
    produce are hashed (sum of 64-bit row hashes mod 2**64, plus the count)."""
    transforms = load_transforms(config)
    rows = digest = source_rows = 0
    with connect(src_url) as conn, conn.cursor("bench_expected") as cur:
        cur.itersize = 20_000
        cur.execute(
            "SELECT id, customer_id, amount_cents, currency, status, placed_at FROM legacy.orders"
        )
        names = [d.name for d in cur.description or ()]
        for values in cur:
            source_rows += 1
            record = dict(zip(names, values, strict=True))
            for op in transforms.apply(SOURCE_TABLE, "read", {"id": record["id"]}, record, 0):
                if op.values is None:  # a filtered ('test') row: the target must not hold it
                    continue
                rows += 1
                digest = (digest + _row_hash([op.values[c] for c in TARGET_COLUMNS])) % 2**64
    return Expected(rows, digest, source_rows)


def check_target(tgt_url: str, expected: Expected) -> dict[str, int]:
    """Raise unless ``shop.orders`` holds exactly the transform of the source (same count,
    same digest of every row's values) and the backfill recorded no bookkeeping row (a
    single-owner target: ``docs/backfill.md``)."""
    rows = digest = 0
    with connect(tgt_url) as conn:
        with conn.cursor("bench_check") as cur:
            cur.itersize = 20_000
            cur.execute(f"SELECT {', '.join(TARGET_COLUMNS)} FROM shop.orders")
            for values in cur:
                rows += 1
                digest = (digest + _row_hash(values)) % 2**64
        conn.commit()
        row = conn.execute(
            "SELECT count(*) FROM dualwrite.applied WHERE target_table = %s", (TARGET_TABLE,)
        ).fetchone()
    assert row is not None
    if rows != expected.rows or digest != expected.digest:
        raise RuntimeError(
            f"shop.orders is not the transform of the source: {rows} rows (digest {digest:#x}), "
            f"expected {expected.rows} rows (digest {expected.digest:#x})"
        )
    if row[0] != 0:
        raise RuntimeError(f"{row[0]} bookkeeping rows for {TARGET_TABLE}, expected none")
    return {"target_rows": rows, "applied_rows": int(row[0])}


def backfill_in_process(
    src_url: str,
    tgt_url: str,
    config: MigrationConfig,
    chunk_rows: int,
    expected: Expected,
) -> dict[str, Any]:
    reset_target(tgt_url)
    transforms = load_transforms(config)
    source, target = make_engine(config.source), make_engine(config.target)
    marks: list[tuple[float, int]] = []

    def on_progress(p: bf.BackfillProgress) -> None:
        marks.append((time.perf_counter(), p.rows_done))

    settings = BackfillSettings(chunk_rows=chunk_rows, tables=(SOURCE_TABLE,), restart=True)
    try:
        with applier_timers() as timers:
            t0, c0 = time.perf_counter(), time.process_time()
            pg0 = services_cpu_s(PIDS).get("postgres", 0.0)
            (result,) = run_backfill(
                source, target, config, transforms, settings, progress=on_progress
            )
            seconds = time.perf_counter() - t0
            cpu = time.process_time() - c0
            pg_cpu = services_cpu_s(PIDS).get("postgres", 0.0) - pg0
    finally:
        source.dispose()
        target.dispose()
    if not result.done:
        raise RuntimeError(f"backfill stopped early: {result}")
    counts = check_target(tgt_url, expected)
    loop = result.elapsed_s
    apply_s = timers["apply_reads"]
    absent_s = timers["_upsert_absent"] + timers["_delete_absent"]
    phases = {
        "apply_total_s": round(apply_s, 2),
        "apply_insert_absent_stmts_s": round(absent_s - timers["_stage"], 2),
        "apply_stage_copy_s": round(timers["_stage"], 2),
        "apply_general_path_s": round(timers["_apply_general"], 2),
        "apply_python_s": round(timers["_write_reads"] - absent_s - timers["_apply_general"], 2),
        "apply_savepoint_s": round(apply_s - timers["_write_reads"], 2),
        # the reader thread reads, decodes and transforms the next chunk meanwhile
        "waiting_for_reader_and_commit_s": round(loop - apply_s, 2),
        "quiet_probe_in_reader_s": round(timers["quiet_probe"], 2),
    }
    return {
        "chunk_rows": chunk_rows,
        "rows": result.rows,
        "chunks": result.chunks,
        "seconds": round(seconds, 2),
        "loop_s": round(loop, 2),
        "per_s": round(result.rows / loop, 1),
        "target_rows_per_s": round(counts["target_rows"] / loop, 1),
        "first_half_per_s": round(_half_rate(marks, first=True), 1),
        "second_half_per_s": round(_half_rate(marks, first=False), 1),
        "client_cpu_s": round(cpu, 2),
        "pg_cpu_s": round(pg_cpu, 2),
        "phases": phases,
        **counts,
    }


def _half_rate(marks: Sequence[tuple[float, int]], *, first: bool) -> float:
    if len(marks) < 4:
        return float("nan")
    mid = len(marks) // 2
    (ta, ra), (tb, rb) = (marks[0], marks[mid]) if first else (marks[mid], marks[-1])
    return (rb - ra) / (tb - ta) if tb > ta else float("nan")


def backfill_sharded(
    tgt_url: str, chunk_rows: int, expected: Expected, shards: int, *, one_command: bool = False
) -> dict[str, Any]:
    """The CLI on more cores (docs/backfill.md): ``dualwrite backfill --shard K/N`` in N
    processes at once, or with ``one_command`` one ``dualwrite backfill --processes N``
    (N = 1: the plain command); wall time from the first start to the last exit, process
    start-up included, the target checked row by row afterwards."""
    reset_target(tgt_url)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pg0 = services_cpu_s(PIDS).get("postgres", 0.0)
    t0 = time.perf_counter()
    argvs = (
        [[*cli_argv(chunk_rows), "--processes", str(shards)]]
        if one_command
        else [[*cli_argv(chunk_rows), "--shard", f"{k}/{shards}"] for k in range(shards)]
    )
    children = [
        subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for argv in argvs
    ]
    failures = []
    for child in children:
        _out, err = child.communicate()
        if child.returncode != 0:
            failures.append(err.decode(errors="replace")[-2000:])
    seconds = time.perf_counter() - t0
    pg_cpu = services_cpu_s(PIDS).get("postgres", 0.0) - pg0
    if failures:
        raise RuntimeError(f"a shard process failed: {failures}")
    counts = check_target(tgt_url, expected)
    return {
        "chunk_rows": chunk_rows,
        "shards": shards,
        "rows": expected.source_rows,
        "seconds": round(seconds, 2),
        "per_s": round(expected.source_rows / seconds, 1),
        "pg_cpu_s": round(pg_cpu, 2),
        **counts,
    }


# --- the floor of any backfill running this Python transform --------------------------------


def _floor_part(src_url: str, tgt_url: str, table: str, lo: int, hi: int, chunk: int) -> int:
    """One process's share of the floor: source rows ``lo..hi`` read with psycopg's own
    (binary) types through a server-side cursor, each passed as a dict to the shop's
    ``order()`` (the user's function, called directly: no registry, no TargetOp), what it
    returns written with binary ``write_row`` into one COPY; no version guard, no
    bookkeeping, no progress row, one commit. Returns the rows written."""
    function = load_transforms(load_migration(MIGRATION)).sources[SOURCE_TABLE].function
    written = 0
    with (
        connect(src_url) as src,
        connect(tgt_url) as dst,
        src.cursor("bench_floor", binary=True) as cur,
        dst.cursor() as out,
        out.copy(f"COPY public.{table} ({RAW_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(RAW_TYPES)
        cur.itersize = chunk
        cur.execute(
            "SELECT id, customer_id, amount_cents, currency, status, placed_at "
            "FROM legacy.orders WHERE id BETWEEN %s AND %s ORDER BY id",
            (lo, hi),
        )
        names = [d.name for d in cur.description or ()]
        write = copy.write_row
        for values in cur:
            produced = function(dict(zip(names, values, strict=True)))
            for row in produced.values() if produced else ():
                write(
                    (
                        row["id"],
                        row["customer_id"],
                        row["amount"],
                        row["currency"],
                        row["status"],
                        row["placed_at"],
                    )
                )
                written += 1
    return written


def python_floor(
    src_url: str, tgt_url: str, shards: int, chunk: int, expected: Expected
) -> dict[str, Any]:
    """The fastest a backfill that runs the shop's Python transform could go here: the source
    split by id into ``shards`` processes running :func:`_floor_part` at once (forked),
    writing into a fresh table shaped like shop.orders. Every design choice of dualwrite's
    backfill (JSON row images, decoding, the registry, the guard, progress) is left out; what
    is left is the driver's reading and COPY encoding and the user's function, per row."""
    import multiprocessing

    table = f"bench_bf_floor_{uuid.uuid4().hex[:8]}"
    with connect(src_url) as conn:
        bounds = conn.execute("SELECT min(id), max(id) FROM legacy.orders").fetchone()
    assert bounds is not None
    first, last = int(bounds[0]), int(bounds[1])
    edges = [first + (last - first + 1) * k // shards for k in range(shards + 1)]
    with connect(tgt_url) as conn:
        conn.execute(f"CREATE TABLE public.{table} (LIKE shop.orders INCLUDING ALL)")
        conn.commit()
        try_checkpoint(conn)
        try:
            pg0 = services_cpu_s(PIDS).get("postgres", 0.0)
            t0 = time.perf_counter()
            with multiprocessing.get_context("fork").Pool(shards) as pool:
                parts = [
                    pool.apply_async(
                        _floor_part, (src_url, tgt_url, table, edges[k], edges[k + 1] - 1, chunk)
                    )
                    for k in range(shards)
                ]
                written = sum(part.get() for part in parts)
            seconds = time.perf_counter() - t0
            pg_cpu = services_cpu_s(PIDS).get("postgres", 0.0) - pg0
            count = conn.execute(f"SELECT count(*) FROM public.{table}").fetchone()
            assert count is not None and count[0] == written == expected.rows, (
                count,
                written,
                expected.rows,
            )
        finally:
            conn.rollback()
            conn.execute(f"DROP TABLE IF EXISTS public.{table}")
            conn.commit()
    return {
        "shards": shards,
        "rows": expected.source_rows,
        "rows_written": written,
        "seconds": round(seconds, 2),
        "per_s": round(expected.source_rows / seconds, 1),
        "pg_cpu_s": round(pg_cpu, 2),
    }


# --- phases of the read side (no apply) ------------------------------------------------------


def shape_and_queries(
    conn: psycopg.Connection[Any], table: Any, chunk_rows: int
) -> tuple[Any, tuple[sql.Composed, sql.Composed]]:
    """The backfill's own table shape and chunk queries (``dualwrite.snapshot`` since commit
    608183f; the private helpers of ``dualwrite.backfill`` before)."""
    try:
        from dualwrite import snapshot
    except ImportError:
        shape = bf._shape(conn, table)  # type: ignore[attr-defined]
        return shape, bf._chunk_queries(shape, BackfillSettings(chunk_rows=chunk_rows))  # type: ignore[attr-defined]
    shape = snapshot.source_shape(conn, table)
    return shape, snapshot.chunk_queries(shape, chunk_rows)


# --- micro-measurements of the per-row Python ------------------------------------------------


def micro(src_url: str, config: MigrationConfig, n: int) -> dict[str, float]:
    """us per row of each per-row step of the backfill, and of cheaper variants of some, on
    the first ``n`` real row images of the table (interleaved, best of 5)."""
    import json as _json

    from dualwrite.envelope import DECODERS, _parse_int
    from dualwrite.transform import TargetOp, key_text
    from examples.shop.transform import berlin_to_utc

    transforms = load_transforms(config)
    table = next(t for t in config.tables if str(t.source) == SOURCE_TABLE)
    with connect(src_url) as conn:
        shape, (first, _following) = shape_and_queries(conn, table, n)
        fetched = conn.execute(first).fetchall()
    images = [image for _k, image in fetched]
    types = shape.types
    key_cols = shape.key
    docs = [parse_json(i) for i in images]
    records = [_decode_row(d, types) for d in docs]
    keys = [{c: r[c] for c in key_cols} for r in records]
    st = transforms.sources[SOURCE_TABLE]
    ops = [
        op
        for r, k in zip(records, keys, strict=True)
        for op in transforms.apply(SOURCE_TABLE, "read", k, r, 0)
    ]
    decoder = _json.JSONDecoder(parse_float=Decimal, parse_int=_parse_int)
    plan = [(c, DECODERS.get(t)) for c, t in types.items()]

    def decode_planned(doc: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for column, function in plan:
            value = doc[column]
            out[column] = value if value is None or function is None else function(value)
        return out

    def key_text_fast(key: tuple[Any, ...]) -> str:
        if len(key) == 1 and type(key[0]) is int:
            return f"[{key[0]}]"
        return key_text(key)

    pairs = list(zip(records, keys, strict=True))
    steps: dict[str, Callable[[], Any]] = {
        "parse_json (json.loads with hooks: a new JSONDecoder per call)": lambda: [
            parse_json(i) for i in images
        ],
        "  variant: one prebuilt JSONDecoder(parse_float=Decimal, parse_int=...)": lambda: [
            decoder.decode(i) for i in images
        ],
        "  floor: json.loads without hooks": lambda: [_json.loads(i) for i in images],
        "_decode_row (decode_value + DECODERS lookup per value)": lambda: [
            _decode_row(d, types) for d in docs
        ],
        "  variant: (column, decoder) list built once per table": lambda: [
            decode_planned(d) for d in docs
        ],
        "Transforms.apply (registry + order())": lambda: [
            transforms.apply(SOURCE_TABLE, "read", k, r, 0) for r, k in pairs
        ],
        "  of which order() (examples/shop/transform.py)": lambda: [
            st.function(r) for r in records
        ],
        "  of which berlin_to_utc": lambda: [berlin_to_utc(r["placed_at"]) for r in records],
        "  of which TargetOp(...) (frozen dataclass)": lambda: [
            TargetOp(o.target, o.key, o.values, o.source, 0) for o in ops
        ],
        "key_text per op (Transforms.apply_reads)": lambda: [key_text(o.key) for o in ops],
        "  variant: f'[{k}]' for one int key, else json.dumps": lambda: [
            key_text_fast(o.key) for o in ops
        ],
        "str(QualifiedName) per op (Applier._name, cached)": lambda: [str(o.target) for o in ops],
    }
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(5):  # interleaved, best of 5: the machine's noise spreads over all steps
        for name, function in steps.items():
            t0 = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - t0)
    count = len(images)
    return {"rows": float(count), **{k: round(v / count * 1e6, 2) for k, v in best.items()}}


def read_phases(src_url: str, config: MigrationConfig, chunk_rows: int) -> dict[str, Any]:
    """The backfill's own typed chunk queries over the whole table, each chunk's rows made
    into records and transformed (``Transforms.apply_reads``, as the backfill's reader)
    without applying them; seconds per phase."""
    from dualwrite.snapshot import source_shape, typed_chunks

    transforms = load_transforms(config)
    table = next(t for t in config.tables if str(t.source) == SOURCE_TABLE)
    totals = dict.fromkeys(("select", "fetch", "records", "transform", "commit"), 0.0)
    rows = ops = 0
    with connect(src_url) as conn:
        shape = source_shape(conn, table)
        typed = typed_chunks(shape, chunk_rows)
        key_cols = shape.key
        last: str | None = None
        pc = time.perf_counter
        while True:
            t0 = pc()
            cur = (
                conn.execute(typed.first, binary=True)
                if last is None
                else conn.execute(typed.following, (last,), binary=True)
            )
            t1 = pc()
            fetched = cur.fetchall()
            t2 = pc()
            conn.commit()
            t3 = pc()
            totals["select"] += t1 - t0
            totals["fetch"] += t2 - t1
            totals["commit"] += t3 - t2
            if not fetched:
                break
            records = [typed.record(row) for row in fetched]
            t4 = pc()
            produced = transforms.apply_reads(SOURCE_TABLE, key_cols, records)
            t5 = pc()
            totals["records"] += t4 - t3
            totals["transform"] += t5 - t4
            rows += len(fetched)
            ops += produced.operations
            last = typed.last_key(fetched[-1])
    total = sum(totals.values())
    return {
        "chunk_rows": chunk_rows,
        "rows": rows,
        "ops": ops,
        "seconds": round(total, 2),
        "per_s": round(rows / total, 1),
        "us_per_row": {k: round(v / rows * 1e6, 2) for k, v in totals.items()},
    }


# --- the CLI child: memory and profile -------------------------------------------------------


def cli_argv(chunk_rows: int) -> list[str]:
    return [
        str(DUALWRITE_CLI),
        "backfill",
        str(MIGRATION),
        "--table",
        SOURCE_TABLE,
        "--chunk-rows",
        str(chunk_rows),
        "--restart",
        "--json",
    ]


def _status_kib(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def run_cli_child(argv: Sequence[str], log_path: Path, watch_pid_of_child: bool) -> dict[str, Any]:
    """Run ``argv`` (the CLI, or py-spy around it) to completion.

    Peak memory is the child's VmHWM (the high-water mark of its own address space since
    ``exec``), read at every output line and by a 0.1 s poller until the process exits.
    ``wait4``'s ``ru_maxrss`` would not do: Linux carries the pre-``exec`` high-water mark,
    i.e. this (big) parent's RSS at fork, into the child's figure. With py-spy in front, the
    sampled pid is py-spy's child (the CLI).
    """
    with log_path.open("w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO, bufsize=1
        )
        assert proc.stdout is not None
        samples: list[tuple[int, float]] = []
        hwm = [0]
        summary: dict[str, Any] | None = None
        watched: list[int] = [] if watch_pid_of_child else [proc.pid]
        done = threading.Event()

        def find_watched() -> int | None:
            if not watched:
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                with contextlib.suppress(OSError, ValueError, IndexError):
                    watched.append(int(children.read_text().split()[0]))
            return watched[0] if watched else None

        def read_hwm() -> None:
            pid = find_watched()
            value = _status_kib(pid, "VmHWM") if pid is not None else None
            if value is not None:
                hwm[0] = max(hwm[0], value)

        def poll() -> None:
            while not done.wait(0.1):
                read_hwm()

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        for line in proc.stdout:
            read_hwm()
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            pid = find_watched()
            if event.get("event") == "progress" and pid is not None:
                rss = _status_kib(pid, "VmRSS")
                if rss is not None:
                    samples.append((int(event["rows_done"]), rss / 1024))
            elif event.get("event") == "summary":
                summary = event
        proc.wait()
        done.set()
        poller.join()
        wall = time.perf_counter() - t0
    if proc.returncode != 0 or summary is None:
        raise RuntimeError(
            f"backfill child failed (exit {proc.returncode}):\n{log_path.read_text()[-3000:]}"
        )
    table = summary["tables"][0]
    rows = int(table["rows"])
    return {
        "rows": rows,
        "wall_s": round(wall, 1),
        "loop_s": round(float(table["elapsed_s"]), 1),
        "per_s": round(rows / float(table["elapsed_s"]), 1),
        "peak_rss_mib": round(hwm[0] / 1024, 1),
        "rss_samples": samples,
    }


def rss_at(samples: Sequence[tuple[int, float]], share: float) -> float | None:
    if not samples:
        return None
    total = samples[-1][0]
    for rows, rss in samples:
        if rows >= share * total:
            return round(rss, 1)
    return round(samples[-1][1], 1)


def import_only_rss() -> float:
    """Peak RSS of the CLI's imports alone: a child that imports ``cli.main`` and prints its
    own VmHWM."""
    code = (
        "import re, cli.main; "
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return round(int(out.stdout.strip()) / 1024, 1)


def memory_run(tgt_url: str, chunk_rows: int, expected: Expected, label: str) -> dict[str, Any]:
    reset_target(tgt_url)
    print(f"memory: CLI child over {label} rows, chunk {chunk_rows} ...", file=sys.stderr)
    log = OUT / f"backfill_mem_{label}_{chunk_rows}.log"
    out = run_cli_child(cli_argv(chunk_rows), log, False)
    counts = check_target(tgt_url, expected)
    samples = out.pop("rss_samples")
    out.update(
        {
            "label": label,
            "chunk_rows": chunk_rows,
            "rss_at_10pct_mib": rss_at(samples, 0.1),
            "rss_at_50pct_mib": rss_at(samples, 0.5),
            "rss_at_end_mib": rss_at(samples, 1.0),
            "rss_samples": len(samples),
            **counts,
        }
    )
    return out


# --- py-spy profile --------------------------------------------------------------------------

WAIT_LEAF = re.compile(
    r"^(Connection\.wait|BaseConnection\.wait|wait|wait_c|_wait_gen|select|sleep|"
    r"Event\.wait|Condition\.wait)\b"
)


def _frame_name(frame: str) -> str:
    return frame.split(" (", 1)[0]


def _frame_line(frame: str) -> int | None:
    match = re.search(r":(\d+)\)$", frame)
    return int(match.group(1)) if match else None


def classify_reader(frames: list[str], index: int) -> str:
    """What the backfill's reader thread (``_ChunkReader._read_all``) was doing."""
    names = [_frame_name(f) for f in frames[index + 1 :]]
    child = names[0] if names else ""
    if child == "_wait_until_quiet":
        return "reader: SELECT 1 latency probe before each chunk"
    if child.endswith("_put"):
        return "reader: chunk ready, waiting for the applying thread"
    if "fetchall" in " ".join(names):
        return "reader: rows -> Python tuples (psycopg fetchall)"
    if child == "execute" or child.endswith("Connection.execute") or child.endswith("commit"):
        return "reader: chunk SELECT / COMMIT (server: index scan, typed values; wire)"
    if child.endswith("TypedChunks.record") or child == "record":
        return "reader: row tuple -> record dict (snapshot.TypedChunks.record)"
    if "parse_json" in names:
        return "reader: decode JSON (envelope.parse_json: non-typed columns, image chunks)"
    if child.endswith("RowDecoder.__call__") or "_decode_row" in names:
        return "reader: decode typed values (envelope.RowDecoder)"
    if child.endswith("Transforms.apply_reads") or child == "apply_reads":
        if "berlin_to_utc" in names or "_exists" in names:
            return "reader: transform: berlin_to_utc (zoneinfo)"
        if any(n == "order" or n.endswith(".order") for n in names):
            return "reader: transform: shop order() other (status, cents, currency)"
        return "reader: transform: registry (grouping rows by target, key texts, checks)"
    return "reader: other Python (records list)"


def classify(frames: list[str], index: int) -> str:
    """What the applying thread (``_backfill_table``) was doing in one sample."""
    names = [_frame_name(f) for f in frames[index + 1 :]]
    child = names[0] if names else ""
    if child.endswith("next"):
        return "apply thread: waiting for the reader's next chunk"
    if "Applier.apply_reads" in names or "apply_reads" in names[1:2]:
        if "Applier._stage" in names:
            return "apply thread: COPY into staging (incl. CREATE IF NOT EXISTS + TRUNCATE)"
        if "Applier._upsert_absent" in names or "Applier._delete_absent" in names:
            return "apply thread: claim + INSERT/DELETE statement (insert-if-absent)"
        if "Applier._apply_general" in names:
            return "apply thread: general path (deletes of merged rows)"
        if "Applier._write_reads" in names:
            return "apply thread: ordering groups, json values, key lookup (Python)"
        return "apply thread: SAVEPOINT / RELEASE"
    if child.endswith("_apply_chunk"):
        return "apply thread: progress UPDATE / COMMIT"
    if child == "progress" or "BackfillProgress" in names:
        return "apply thread: progress callback (CLI JSON line)"
    return "apply thread: other"


def categorise(profile: Path) -> dict[str, Any]:
    per: dict[str, list[int]] = {}
    total = in_loop = outside = 0
    thread_samples = {"reader": 0, "apply thread": 0}
    for raw in profile.read_text().splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not count_text.isdigit() or not stack.strip():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        reader = next(
            (i for i, f in enumerate(frames) if _frame_name(f).endswith("_read_all")), None
        )
        applying = next(
            (i for i, f in enumerate(frames) if _frame_name(f) == "_backfill_table"), None
        )
        if reader is not None:
            category = classify_reader(frames, reader)
            thread_samples["reader"] += count
        elif applying is not None:
            category = classify(frames, applying)
            thread_samples["apply thread"] += count
        else:
            outside += count
            continue
        in_loop += count
        waiting = bool(WAIT_LEAF.search(_frame_name(frames[-1])))
        entry = per.setdefault(category, [0, 0])
        entry[0] += count
        entry[1] += count if waiting else 0
    return {
        "samples": total,
        "samples_in_loop": in_loop,
        "samples_outside_loop": outside,
        "thread_samples": thread_samples,
        "categories": {
            k: {
                # share of that thread's samples (both threads run for the whole loop)
                "share_of_loop": round(v[0] / thread_samples[k.split(":")[0]], 4),
                "waiting_share": round(v[1] / v[0], 4) if v[0] else None,
                "samples": v[0],
            }
            for k, v in sorted(per.items(), key=lambda kv: -kv[1][0])
        },
    }


def profile_run(tgt_url: str, chunk_rows: int, expected: Expected, rate: int) -> dict[str, Any]:
    reset_target(tgt_url)
    spy = Path(sys.executable).parent / "py-spy"
    raw = OUT / "backfill_profile.txt"
    argv = [
        str(spy),
        "record",
        "--format",
        "raw",
        "--idle",
        "--nonblocking",
        "--rate",
        str(rate),
        "--output",
        str(raw),
        "--",
        *cli_argv(chunk_rows),
    ]
    print("profile: CLI child under py-spy ...", file=sys.stderr)
    out = run_cli_child(argv, OUT / "backfill_profile.log", True)
    check_target(tgt_url, expected)
    out.pop("rss_samples")
    out.pop("peak_rss_mib")  # py-spy's own, not the backfill's
    return {**out, "profile_file": str(raw.relative_to(REPO)), **categorise(raw)}


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="legacy.orders rows (1M)")
    p.add_argument(
        "--big-rows", type=int, default=5_000_000, help="rows of the memory re-run (5M; 0: skip)"
    )
    p.add_argument("--customers", type=int, default=100_000, help="legacy.customers rows (100k)")
    p.add_argument(
        "--chunk-rows",
        type=int,
        nargs="+",
        default=[5000, 20000],
        help="chunk sizes of the in-process throughput runs (5000 20000); the first one is\n"
        "also used by the phases and the profile",
    )
    p.add_argument("--repeats", type=int, default=2, help="backfill runs per chunk size (2)")
    p.add_argument(
        "--memory-chunk-rows",
        type=int,
        nargs="+",
        default=[5000],
        help="chunk sizes of the CLI memory runs, each at --rows and at --big-rows (5000)",
    )
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second (100)")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    p.add_argument(
        "--no-phases", action="store_true", help="skip the read-side phases without apply"
    )
    p.add_argument(
        "--micro-rows", type=int, default=20_000, help="rows of the micro part (0: skip)"
    )
    p.add_argument(
        "--floor-shards",
        type=int,
        nargs="*",
        default=[],
        help="also measure the Python floor (no dualwrite: read, the shop's order(), COPY)\n"
        "with each of these numbers of processes, every round (e.g. 1 2)",
    )
    p.add_argument(
        "--cli-processes",
        type=int,
        nargs="*",
        default=[],
        help="also run `dualwrite backfill --processes N` for each of these N, every round\n"
        "(e.g. 1 2; process start-up included)",
    )
    p.add_argument(
        "--shard-processes",
        type=int,
        nargs="*",
        default=[],
        help="also run the CLI as this many `--shard K/N` processes at once, every round\n"
        "(e.g. 2; process start-up included)",
    )
    p.add_argument("--drop-existing", action="store_true", help="drop legacy/shop schemas first")
    p.add_argument("--keep", action="store_true", help="keep the schemas at the end")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    return p.parse_args(argv)


def drop_all(src_url: str, tgt_url: str, source: Any, config: MigrationConfig) -> None:
    with contextlib.suppress(Exception):
        capture.uninstall(source, config, force=True)
    with connect(src_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS legacy CASCADE")
    with connect(tgt_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS shop CASCADE")
        for table, column in (("applied", "target_table"), ("backfill_progress", "source_table")):
            exists = conn.execute("SELECT to_regclass(%s)", (f"dualwrite.{table}",)).fetchone()
            if exists is not None and exists[0] is not None:
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE {} LIKE ANY(%s)").format(
                        sql.Identifier("dualwrite", table), sql.Identifier(column)
                    ),
                    (["shop.%", "legacy.%"],),
                )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if missing_services():
        return run_inside_dev_stack(__file__, sys.argv[1:] if argv is None else list(argv))
    src_url, tgt_url = os.environ["DUALWRITE_SOURCE_URL"], os.environ["DUALWRITE_TARGET_URL"]
    OUT.mkdir(exist_ok=True)
    PIDS.update(service_pids())
    config = load_migration(MIGRATION)
    source, target = make_engine(config.source), make_engine(config.target)
    existing = schemas_exist(src_url, ["legacy"]) + schemas_exist(tgt_url, ["shop"])
    if existing and not args.drop_existing:
        print(f"schemas {existing} exist already; --drop-existing drops them", file=sys.stderr)
        return 2
    drop_all(src_url, tgt_url, source, config)

    info: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    info["code"] = code_state()
    raw_runs: list[dict[str, Any]] = []
    backfills: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    sharded: list[dict[str, Any]] = []
    cli_runs: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    try:
        info["fill"] = fill(src_url, tgt_url, source, target, args)
        print("transforming the source for the check ...", file=sys.stderr)
        expected = expected_target(src_url, config)
        capture.install(source, config)

        print(f"generating {args.rows:,} raw rows ...", file=sys.stderr)
        rows = raw_rows(args.rows, args.customers)
        text = raw_text(rows)
        bk_rows = bookkeeping_rows(rows)
        ensure_bookkeeping(target)
        methods = (
            "binary_write_row",
            "text_preformatted",
            "staged_upsert",
            "staged_upsert_bookkeeping",
        )
        for rep in range(args.repeats):
            for method in methods:
                print(f"raw {method} (round {rep + 1}) ...", file=sys.stderr)
                raw_runs.append(
                    {
                        "round": rep + 1,
                        **raw_copy_in(tgt_url, method, rows, text, args.chunk_rows[0], bk_rows),
                    }
                )
            chunks = args.chunk_rows if rep % 2 == 0 else list(reversed(args.chunk_rows))
            for chunk in chunks:
                print(f"backfill chunk_rows={chunk} (round {rep + 1}) ...", file=sys.stderr)
                result = backfill_in_process(src_url, tgt_url, config, chunk, expected)
                backfills.append({"round": rep + 1, **result})
                print(f"  {result['per_s']:,.0f} rows/s", file=sys.stderr)
            for n in args.cli_processes:
                print(f"backfill --processes {n} (round {rep + 1}) ...", file=sys.stderr)
                result = backfill_sharded(
                    tgt_url, args.chunk_rows[0], expected, n, one_command=True
                )
                cli_runs.append({"round": rep + 1, **result})
                print(f"  {result['per_s']:,.0f} rows/s", file=sys.stderr)
            for shards in args.shard_processes:
                print(f"backfill, {shards} shard processes (round {rep + 1}) ...", file=sys.stderr)
                result = backfill_sharded(tgt_url, args.chunk_rows[0], expected, shards)
                sharded.append({"round": rep + 1, **result})
                print(f"  {result['per_s']:,.0f} rows/s", file=sys.stderr)
            for shards in args.floor_shards:
                print(f"python floor, {shards} process(es) (round {rep + 1}) ...", file=sys.stderr)
                result = python_floor(src_url, tgt_url, shards, args.chunk_rows[0], expected)
                floors.append({"round": rep + 1, **result})
                print(f"  {result['per_s']:,.0f} rows/s", file=sys.stderr)
        for method in methods[:2]:
            print(f"raw {method} (after) ...", file=sys.stderr)
            raw_runs.append(
                {"round": "after", **raw_copy_in(tgt_url, method, rows, text, args.chunk_rows[0])}
            )
        del rows, text, bk_rows

        if not args.no_phases:
            print("read-side phases ...", file=sys.stderr)
            info["read_phases"] = read_phases(src_url, config, args.chunk_rows[0])
        if args.micro_rows:
            print("micro-measurements ...", file=sys.stderr)
            info["micro"] = micro(src_url, config, min(args.micro_rows, args.rows))
        if not args.no_profile:
            info["profile"] = profile_run(tgt_url, args.chunk_rows[0], expected, args.profile_rate)

        memory: list[dict[str, Any]] = []
        info["cli_import_only_peak_rss_mib"] = import_only_rss()
        for chunk in args.memory_chunk_rows:
            memory.append(memory_run(tgt_url, chunk, expected, f"{args.rows}"))
        if args.big_rows > args.rows:
            capture.uninstall(source, config, force=True)
            print(f"adding orders up to {args.big_rows:,} ...", file=sys.stderr)
            info["fill"]["big_orders_s"] = round(
                seed_orders(src_url, args.rows + 1, args.big_rows, args.customers), 1
            )
            capture.install(source, config)
            big = source_facts(src_url)
            info["fill_big"] = big
            print("transforming the bigger source for the check ...", file=sys.stderr)
            expected_big = expected_target(src_url, config)
            for chunk in args.memory_chunk_rows:
                memory.append(memory_run(tgt_url, chunk, expected_big, f"{args.big_rows}"))
        info["memory"] = memory
    finally:
        if not args.keep:
            print("dropping the schemas ...", file=sys.stderr)
            drop_all(src_url, tgt_url, source, config)
        source.dispose()
        target.dispose()
    info["total_s"] = round(time.perf_counter() - t_start, 1)
    info["raw"] = raw_runs
    info["backfill"] = backfills
    info["python_floor"] = floors
    info["backfill_sharded"] = sharded
    info["backfill_cli"] = cli_runs
    report(info, args)
    return 0


def code_state() -> dict[str, Any]:
    """Which code was measured: HEAD and whether the measured files had local changes."""
    files = ["dualwrite/backfill.py", "dualwrite/apply.py", "dualwrite/envelope.py"]
    files += ["dualwrite/transform", "examples/shop/transform.py"]

    def git(*a: str) -> str:
        out = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    return {"head": git("rev-parse", "--short", "HEAD"), "dirty": git("status", "--short", *files)}


def report(info: dict[str, Any], args: argparse.Namespace) -> None:
    raw, backfills = info["raw"], info["backfill"]
    print_table(
        "Raw baseline: 1 COPY (or staged upserts) of rows shaped like shop.orders",
        ["method", "round", "rows", "seconds", "rows/s", "client CPU s", "PG CPU s"],
        [
            (
                r["method"],
                str(r["round"]),
                r["rows"],
                r["seconds"],
                r["per_s"],
                r["client_cpu_s"],
                r["pg_cpu_s"],
            )
            for r in raw
        ],
    )
    copy_best = max((r["per_s"] for r in raw if r["method"] in COPY_METHODS), default=float("nan"))
    copy_median = sorted(r["per_s"] for r in raw if r["method"] in COPY_METHODS)
    copy_med = copy_median[len(copy_median) // 2] if copy_median else float("nan")
    print_table(
        f"Backfill of {SOURCE_TABLE} (run_backfill in process; rate over source rows)",
        [
            "chunk",
            "round",
            "rows",
            "loop s",
            "rows/s",
            "vs best COPY",
            "vs median COPY",
            "1st half/s",
            "2nd half/s",
            "client CPU s",
            "PG CPU s",
        ],
        [
            (
                b["chunk_rows"],
                str(b["round"]),
                b["rows"],
                b["loop_s"],
                b["per_s"],
                f"{b['per_s'] / copy_best:.1%}",
                f"{b['per_s'] / copy_med:.1%}",
                b["first_half_per_s"],
                b["second_half_per_s"],
                b["client_cpu_s"],
                b["pg_cpu_s"],
            )
            for b in backfills
        ],
    )
    for key, title in (
        ("backfill_cli", "Backfill as one `dualwrite backfill --processes N` command"),
        ("backfill_sharded", "Backfill as N `dualwrite backfill --shard K/N` processes at once"),
        ("python_floor", "Python floor: read + the shop's order() + binary COPY, no dualwrite"),
    ):
        if info.get(key):
            print_table(
                f"{title} (source rows/s)",
                ["processes", "round", "rows", "seconds", "rows/s", "vs best COPY", "PG CPU s"],
                [
                    (
                        r["shards"],
                        str(r["round"]),
                        r["rows"],
                        r["seconds"],
                        r["per_s"],
                        f"{r['per_s'] / copy_best:.1%}",
                        r["pg_cpu_s"],
                    )
                    for r in info[key]
                ],
            )
    print_table(
        "Backfill time by Applier method (chunk-level timers, seconds)",
        ["chunk", "round", *backfills[0]["phases"].keys()] if backfills else ["-"],
        [(b["chunk_rows"], str(b["round"]), *b["phases"].values()) for b in backfills],
    )
    if "read_phases" in info:
        ph = info["read_phases"]
        print_table(
            f"Read side without apply (chunk {ph['chunk_rows']}): {ph['per_s']:,.0f} rows/s",
            ["phase", "us/row"],
            list(ph["us_per_row"].items()),
        )
    if "micro" in info:
        mi = dict(info["micro"])
        n = int(mi.pop("rows"))
        print_table(
            f"Per-row steps on {n:,} real rows (interleaved, best of 5)",
            ["step", "us/row"],
            list(mi.items()),
        )
    if "profile" in info:
        pr = info["profile"]
        groups: dict[str, float] = {}
        for k, v in pr["categories"].items():
            group = k.split(":")[0] if ":" in k else k
            groups[group] = groups.get(group, 0.0) + v["share_of_loop"]
        print_table(
            "py-spy profile by group (share of the table loop's wall time)",
            ["group", "share", "us/row"],
            [
                (g, f"{share:.1%}", round(share * pr["loop_s"] / pr["rows"] * 1e6, 2))
                for g, share in sorted(groups.items(), key=lambda kv: -kv[1])
            ],
        )
        print_table(
            f"py-spy profile of one CLI backfill ({pr['per_s']:,.0f} rows/s under py-spy, "
            f"{pr['samples_in_loop']:,} samples in the loop)",
            ["where", "share of loop", "of which waiting", "us/row"],
            [
                (
                    k,
                    f"{v['share_of_loop']:.1%}" if v["share_of_loop"] is not None else "-",
                    f"{v['waiting_share']:.0%}",
                    round(v["share_of_loop"] * pr["loop_s"] / pr["rows"] * 1e6, 2)
                    if v["share_of_loop"] is not None
                    else None,
                )
                for k, v in pr["categories"].items()
            ],
        )
    if "memory" in info:
        print_table(
            f"Peak RSS of `dualwrite backfill` (CLI imports alone: "
            f"{info['cli_import_only_peak_rss_mib']} MiB)",
            ["chunk", "source rows", "rows/s", "peak RSS MiB", "RSS @10%", "RSS @50%", "RSS @end"],
            [
                (
                    m["chunk_rows"],
                    m["rows"],
                    m["per_s"],
                    m["peak_rss_mib"],
                    m["rss_at_10pct_mib"],
                    m["rss_at_50pct_mib"],
                    m["rss_at_end_mib"],
                )
                for m in info["memory"]
            ],
        )
        for chunk in args.memory_chunk_rows:
            runs = [m for m in info["memory"] if m["chunk_rows"] == chunk]
            if len(runs) == 2:
                a, b = runs
                print(f"peak RSS ratio {b['rows']:,} / {a['rows']:,} rows, chunk {chunk}: ", end="")
                print(f"{b['peak_rss_mib'] / a['peak_rss_mib']:.3f}")
    print(f"\nfill: {info['fill']}")
    print(f"code: {info['code']}")
    m = info["machine"]
    print(
        f"machine: {m['nproc']} cores {m['cpu_model']}, load {m['loadavg_1m']:.2f}, "
        f"psycopg {m['psycopg']}, total {info['total_s']} s, self peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    if args.json:
        emit_json({"benchmark": "backfill", **info})


if __name__ == "__main__":
    sys.exit(main())
