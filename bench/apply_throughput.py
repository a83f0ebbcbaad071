"""Worker apply throughput on the shop example, against the raw batched upsert in the same run.

1. fill: the shop example's legacy schema (``examples/shop/old_schema.sql``) under a unique
   name on the source, capture installed, seeded with ``examples.shop.workload.seed`` (its
   inserts are captured: ~70 % of the changes), then set-based UPDATEs of orders, customers
   and profiles (each row update is one captured change) until the changelog holds exactly
   ``--changes`` changes; ``run_relay(until_idle=True)`` publishes them to the changes topic
   (8 partitions);
2. raw baseline (twice: before the worker drains and after them): ``--changes`` rows upserted
   with the ceilings.py method (binary COPY into a temp staging table, then
   ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``, one commit per batch) into tables created
   from ``examples/shop/new_schema.sql`` (same columns, keys, CHECK and index as the shop
   target), rows split between customers / addresses / orders in the proportion the shop
   transforms produce, random keys from the seeded key ranges (distinct within a batch),
   batches of the worker's batch size; only COPY + INSERT + COMMIT are timed;
3. worker drains: for each ``--batch-sizes`` a fresh target schema, the consumer group
   deleted (so it starts at offset 0), then ``run_worker(until_idle=True)`` in a child
   process (bench/_worker_child.py) that reports the time of every batch, its peak RSS
   (``ru_maxrss``) and CPU; PostgreSQL's and Kafka's CPU seconds are read around it; the
   target row counts are checked against the source afterwards;
4. profile: one more drain under ``py-spy record --idle`` (wall-clock samples of the worker's
   main thread, categorised by the deepest worker/applier function on the stack) with
   wrappers timing each phase of the worker (``--instrument``).

The rate compared is change events per second from the worker's start (process already
imported; consumer group join included) to its last batch (the 2 s idle tail of
``--until-idle`` excluded), against raw rows per second.

Services come from DUALWRITE_SOURCE_URL / DUALWRITE_TARGET_URL / DUALWRITE_KAFKA_BOOTSTRAP;
without them the dev stack is started and stopped around the run. Schemas, capture schema,
topics and the consumer group have unique names and are removed at the end.

    .venv/bin/python bench/apply_throughput.py                      # 1M changes (~15 min)
    .venv/bin/python bench/apply_throughput.py --changes 50000 --batch-sizes 2000 --no-profile
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from _benchlib import emit_json, libpq_url, machine_info, print_table, stopwatch
from _capturebench import (
    delete_topics,
    make_config,
    missing_services,
    run_inside_dev_stack,
    service_pids,
    services_cpu_s,
)
from _shopbench import (
    REPO,
    ShopNames,
    categorise_profile,
    child_argv,
    drop_source,
    drop_target,
    env_urls,
    migration_text,
    py_spy_argv,
    repo_on_path,
    reset_group,
    run_child,
    split,
    topic_messages,
)
from ceilings import try_checkpoint
from psycopg import sql

repo_on_path()

from dualwrite.capture import install  # noqa: E402
from dualwrite.config import MigrationConfig  # noqa: E402
from dualwrite.db import make_engine  # noqa: E402
from dualwrite.relay import run_relay  # noqa: E402
from examples.shop.workload import install_new_schema, install_old_schema, seed  # noqa: E402

ROWS_PER_CUSTOMER = 4.9  # seed(): 1 customer + ~0.9 profile + 3 orders on average


# --- fill ------------------------------------------------------------------------------------

UPDATES = {
    # table: (key column, SET clause, share of the updates)
    "orders": (
        "id",
        "amount_cents = t.amount_cents + 100, status = CASE WHEN lower(btrim(t.status)) = "
        "'test' THEN t.status ELSE 'shipped' END",
        0.55,
    ),
    "customers": (
        "id",
        "email = lower(btrim(t.email)), updated_at = t.updated_at + interval '1 day'",
        0.30,
    ),
    "customer_profiles": (
        "customer_id",
        "loyalty_tier = (ARRAY['bronze','silver','gold','platinum'])[1 + mod(t.customer_id, 4)], "
        "marketing_opt_in = NOT t.marketing_opt_in",
        0.15,
    ),
}


def backlog(conn: psycopg.Connection[Any], capture_schema: str) -> dict[str, int]:
    rows = conn.execute(
        sql.SQL("SELECT source_table, count(*) FROM {}.changelog GROUP BY 1").format(
            sql.Identifier(capture_schema)
        )
    ).fetchall()
    conn.commit()
    return {r[0]: int(r[1]) for r in rows}


def update_rows(
    conn: psycopg.Connection[Any], schema: str, table: str, count: int, chunk: int = 100_000
) -> int:
    """Update ``count`` rows of ``table`` in key order (wrapping around), chunk per commit."""
    key, assignment, _share = UPDATES[table]
    q = sql.Identifier(schema, table)
    k = sql.Identifier(key)
    statement = sql.SQL(
        "WITH k AS (SELECT {k} FROM {t} WHERE {k} > %s ORDER BY {k} LIMIT %s) "
        "UPDATE {t} AS t SET {a} FROM k WHERE t.{k} = k.{k} RETURNING t.{k}"
    ).format(k=k, t=q, a=sql.SQL(assignment))  # type: ignore[arg-type]
    done, after = 0, 0
    while done < count:
        keys = [r[0] for r in conn.execute(statement, (after, min(chunk, count - done)))]
        conn.commit()
        if not keys:
            after = 0
            continue
        done += len(keys)
        after = max(keys)
    return done


def fill(
    src_url: str, engine: Any, config: MigrationConfig, names: ShopNames, changes: int
) -> dict[str, Any]:
    info: dict[str, Any] = {}
    install_old_schema(engine, names.source_schema)
    install(engine, config)
    customers = max(1, round(changes * 0.7 / ROWS_PER_CUSTOMER))
    print(f"seeding {customers:,} customers (captured) ...", file=sys.stderr)
    with stopwatch() as t:
        seeded = seed(engine, customers, schema=names.source_schema, rng_seed=4)
    info["seed"] = {
        "customers": seeded.customers,
        "profiles": seeded.profiles,
        "orders": seeded.orders,
        "seconds": round(t[0], 1),
    }
    with psycopg.connect(libpq_url(src_url)) as conn:
        have = sum(backlog(conn, names.capture_schema).values())
        remaining = changes - have
        print(f"{have:,} changes captured; {remaining:,} updates to go ...", file=sys.stderr)
        with stopwatch() as t:
            shares = list(UPDATES.items())
            left = remaining
            for i, (table, (_k, _a, share)) in enumerate(shares):
                n = left if i == len(shares) - 1 else round(remaining * share)
                left -= update_rows(conn, names.source_schema, table, max(0, n))
        info["updates_s"] = round(t[0], 1)
        info["changes_by_source"] = backlog(conn, names.capture_schema)
        conn.autocommit = True
        conn.execute(
            sql.SQL("VACUUM (ANALYZE) {}.changelog").format(sql.Identifier(names.capture_schema))
        )
    total = sum(info["changes_by_source"].values())
    if total != changes:
        raise RuntimeError(f"changelog holds {total} changes, expected {changes}")
    print("relaying ...", file=sys.stderr)
    result = run_relay(engine, config, until_idle=True)
    info["relay"] = {
        "relayed": result.relayed,
        "seconds": round(result.elapsed_s, 1),
        "per_s": round(result.relayed / result.elapsed_s, 1),
    }
    return info


# --- raw baseline ----------------------------------------------------------------------------

RAW_TABLES: dict[str, tuple[str, list[str], list[str]]] = {
    # table: (key, columns, binary COPY types)
    "customers": (
        "id",
        [
            "id", "full_name", "email", "phone", "created_at", "updated_at", "loyalty_tier",
            "marketing_opt_in",
        ],
        ["int4", "text", "text", "text", "timestamptz", "timestamptz", "text", "bool"],
    ),
    "addresses": (
        "customer_id",
        ["customer_id", "street", "city", "postal_code", "country"],
        ["int4", "text", "text", "text", "text"],
    ),
    "orders": (
        "id",
        ["id", "customer_id", "amount", "currency", "status", "placed_at"],
        ["int8", "int4", "numeric", "text", "text", "timestamptz"],
    ),
}  # fmt: skip

_EPOCH = dt.datetime(2016, 1, 1, tzinfo=dt.UTC)
_NAMES = ("Anna Müller", "Ben Schmidt", "Clara Weber", "Mary Ann van der Berg", "Jonas O'Brien")


class RawRows:
    """Rows shaped like the shop target tables (values as the transforms produce them)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def _ts(self) -> dt.datetime:
        return _EPOCH + dt.timedelta(microseconds=self.rng.randrange(8 * 365 * 86_400 * 10**6))

    def row(self, table: str, key: int) -> tuple[Any, ...]:
        rng = self.rng
        if table == "customers":
            return (
                key,
                rng.choice(_NAMES),
                f"kunde.{key}@example.com",
                f"+49 30 {1_000_000 + key}",
                self._ts(),
                self._ts(),
                rng.choice(("bronze", "silver", "gold", "platinum", None)),
                rng.random() < 0.4,
            )
        if table == "addresses":
            return (
                key,
                f"Hauptstraße {key % 250 + 1}",
                rng.choice(("Berlin", "München", "Hamburg", "Köln", "Wien")),
                f"{key * 7919 % 100000:05d}",
                rng.choice(("DE", "AT", "CH")),
            )
        return (
            key,
            rng.randint(1, 100_000),
            Decimal(rng.randint(99, 50_098)).scaleb(-2),
            rng.choice(("EUR", "CHF", "USD")),
            rng.choice(("pending", "shipped", "cancelled")),
            self._ts(),
        )


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw_upsert(
    url: str,
    schema: str,
    rows_total: int,
    batch_size: int,
    weights: dict[str, float],
    key_space: dict[str, int],
    seed: int,
) -> dict[str, Any]:
    """The ceilings.py upsert (binary COPY to temp staging + INSERT ... ON CONFLICT), one
    transaction per batch holding that batch's rows of all three tables."""
    gen = RawRows(seed)
    rng = gen.rng
    with psycopg.connect(libpq_url(url)) as conn:
        merge: dict[str, str] = {}
        for table, (key, cols, _types) in RAW_TABLES.items():
            stage = f"_raw_stage_{table}"
            conn.execute(f"CREATE TEMP TABLE {stage} (LIKE {schema}.{table}) ON COMMIT DELETE ROWS")
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c != key)
            collist = ", ".join(cols)
            merge[table] = (
                f"INSERT INTO {schema}.{table} ({collist}) SELECT {collist} FROM {stage} "
                f"ON CONFLICT ({key}) DO UPDATE SET {sets}"
            )
        conn.commit()
        try_checkpoint(conn)
        times: list[float] = []
        client_cpu = 0.0
        pids = service_pids()
        cpu0 = services_cpu_s(pids)
        done = 0
        while done < rows_total:
            n = min(batch_size, rows_total - done)
            parts = split(n, weights)
            batch = {
                t: [gen.row(t, k) for k in rng.sample(range(1, key_space[t] + 1), parts[t])]
                for t in RAW_TABLES
            }
            c0 = _self_cpu()
            t0 = time.perf_counter()
            with conn.cursor() as cur:
                for table, (_key, cols, types) in RAW_TABLES.items():
                    if not batch[table]:
                        continue
                    with cur.copy(
                        f"COPY _raw_stage_{table} ({', '.join(cols)}) FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.set_types(types)
                        for row in batch[table]:
                            copy.write_row(row)
                    cur.execute(merge[table])
            conn.commit()
            times.append(time.perf_counter() - t0)
            client_cpu += _self_cpu() - c0
            done += n
        cpu1 = services_cpu_s(pids)
    times.sort()
    seconds = sum(times)
    return {
        "rows": rows_total,
        "client_cpu_us_per_row": round(client_cpu / rows_total * 1e6, 1),
        "service_cpu_us_per_row": {
            k: round((cpu1[k] - cpu0.get(k, 0.0)) / rows_total * 1e6, 1) for k in cpu1
        },
        "seconds": round(seconds, 2),
        "per_s": round(rows_total / seconds, 1),
        "batch_ms_p50": round(statistics.median(times) * 1000, 1),
        "batch_ms_p95": round(times[int(0.95 * (len(times) - 1))] * 1000, 1),
    }


# --- worker drains ---------------------------------------------------------------------------


def expected_counts(src_url: str, schema: str) -> dict[str, int]:
    with psycopg.connect(libpq_url(src_url)) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT (SELECT count(*) FROM {c}), "
                "(SELECT count(*) FROM {c} WHERE coalesce(street, city, zip, "
                "nullif(btrim(country), '')) IS NOT NULL), "
                "(SELECT count(*) FROM {o} WHERE lower(btrim(status)) <> 'test')"
            ).format(c=sql.Identifier(schema, "customers"), o=sql.Identifier(schema, "orders"))
        ).fetchone()
    assert row is not None
    return {"customers": row[0], "addresses": row[1], "orders": row[2]}


def target_counts(tgt_url: str, schema: str) -> dict[str, int]:
    with psycopg.connect(libpq_url(tgt_url)) as conn:
        return {
            t: int(
                conn.execute(  # type: ignore[index]
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, t))
                ).fetchone()[0]
            )
            for t in ("customers", "addresses", "orders")
        }


def drain(
    args: argparse.Namespace,
    names: ShopNames,
    urls: tuple[str, str, str],
    outdir: Path,
    batch_size: int,
    label: str,
    tgt_engine: Any,
    expected: dict[str, int],
    profile: bool = False,
) -> dict[str, Any]:
    src_url, tgt_url, bootstrap = urls
    schema = names.target_schema(label)
    install_new_schema(tgt_engine, schema)
    migration = outdir / f"migration-{label}.toml"
    migration.write_text(
        migration_text(
            names, target_schema=schema, source_url=src_url, target_url=tgt_url, bootstrap=bootstrap
        )
    )
    reset_group(bootstrap, names.group)
    with psycopg.connect(libpq_url(tgt_url)) as conn:
        try_checkpoint(conn)
    argv = child_argv(migration, batch_size=batch_size, instrument=profile)
    if profile:
        argv = py_spy_argv(outdir / "profile.txt", args.profile_rate, argv)
    pids = service_pids()
    cpu0 = services_cpu_s(pids)
    load = os.getloadavg()[0]
    print(f"worker drain {label} (batch {batch_size}) ...", file=sys.stderr)
    with stopwatch() as t:
        report = run_child(argv, outdir / f"worker-{label}.log")
    cpu1 = services_cpu_s(pids)
    report["wall_s"] = round(t[0], 2)
    report["loadavg_1m"] = load
    report["batch_size"] = batch_size
    report["service_cpu_s"] = {k: round(cpu1[k] - cpu0.get(k, 0.0), 1) for k in cpu1}
    got = target_counts(tgt_url, schema)
    report["target_rows"] = got
    report["target_rows_ok"] = got == expected
    if got != expected:
        print(f"WARNING: target rows {got} != expected {expected}", file=sys.stderr)
    events = report["consumed"]
    report["events_per_s"] = round(events / report["last_batch_s"], 1)
    first = report["first_batch_events"]
    steady = report["last_batch_s"] - report["first_batch_s"]
    report["steady_events_per_s"] = round((events - first) / steady, 1) if steady > 0 else None
    report["applied_ops_per_s"] = round(report["applied"] / report["last_batch_s"], 1)
    drop_target(tgt_url, schema, names.source_schema)
    return report


# --- stages in isolation ---------------------------------------------------------------------


def applier_variants() -> dict[str, type[Any]]:
    """The project's Applier and two what-if subclasses (measurement only, never used by the
    project): without the version bookkeeping, and with binary COPY into the staging tables."""
    from dualwrite.apply import Applier

    class NoGuard(Applier):
        """Every op wins, nothing written to dualwrite.applied (unsafe: replays would apply)."""

        def _claim(self, newest: Any) -> set[tuple[str, str, str]]:
            return set(newest)

    class BinaryCopy(Applier):
        """Binary COPY (types from the catalog) into _dw_ops and the staging tables."""

        _oids: dict[str, dict[str, int]]

        def _column_oids(self, target: Any) -> dict[str, int]:
            cache = self.__dict__.setdefault("_oids", {})
            name = str(target)
            if name not in cache:
                rows = self.conn.execute(
                    "SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = "
                    "to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                    (sql.Identifier(target.schema, target.name).as_string(None),),
                ).fetchall()
                cache[name] = {r[0]: r[1] for r in rows}
            return cache[name]

        def _claim(self, newest: Any) -> set[tuple[str, str, str]]:
            self.conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _dw_ops (target_table text, target_key text, "
                "source_table text, version bigint, deleted boolean) ON COMMIT DELETE ROWS"
            )
            with self.conn.cursor() as cur:
                with cur.copy("COPY _dw_ops FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "text", "text", "int8", "bool"])
                    for (target, key, source), op in sorted(newest.items()):
                        copy.write_row((target, key, source, op.version, op.is_delete))
                cur.execute(
                    "INSERT INTO dualwrite.applied AS a (target_table, target_key, source_table, "
                    "version, deleted) SELECT target_table, target_key, source_table, version, "
                    "deleted FROM _dw_ops ORDER BY target_table, target_key, source_table "
                    "ON CONFLICT (target_table, target_key, source_table) DO UPDATE SET "
                    "version = EXCLUDED.version, deleted = EXCLUDED.deleted, applied_at = now() "
                    "WHERE a.version < EXCLUDED.version "
                    "RETURNING target_table, target_key, source_table"
                )
                return {(r[0], r[1], r[2]) for r in cur.fetchall()}

        def _stage(self, target: Any, info: Any, columns: Any, rows: Any) -> sql.Composable:
            name = f"_dw_s_{abs(hash((str(target), tuple(columns)))) % 10**12}"
            stage = sql.Identifier(name)
            table = sql.Identifier(target.schema, target.name)
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
            self.conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {} AS SELECT {} FROM {} WITH NO DATA"
                ).format(stage, cols, table)
            )
            self.conn.execute(sql.SQL("TRUNCATE {}").format(stage))
            oids = self._column_oids(target)
            with (
                self.conn.cursor() as cur,
                cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(stage)) as copy,
            ):
                copy.set_types([oids[c] for c in columns])
                for row in rows:
                    copy.write_row(row)
            return stage

    return {"project": Applier, "no_guard": NoGuard, "binary_copy": BinaryCopy}


def stages(
    names: ShopNames,
    urls: tuple[str, str, str],
    tgt_engine: Any,
    sample: int,
    batch: int,
    in_topic: int,
) -> dict[str, Any]:
    """Each stage of the worker alone, in this process, on ``sample`` events of the topic
    (every n-th of the ``in_topic`` events, so the mix is the whole topic's): Kafka read of
    the whole topic (no group), envelope decode (and plain ``json.loads`` for comparison),
    transform, and the Applier on the transformed ops (fresh target schema, one committed
    transaction per ``batch`` events, as the worker's ``_apply_all`` does), also in the two
    what-if variants of :func:`applier_variants`. Rates are events per second."""
    from dualwrite.apply import ensure_bookkeeping
    from dualwrite.envelope import _parse_int, decode_event, parse_json
    from dualwrite.kafka_io import read_topic
    from dualwrite.transform import load_transforms
    from dualwrite.transform._model import key_text
    from dualwrite.worker import _positions

    src_url, tgt_url, bootstrap = urls
    schema = names.target_schema("stages")
    config = make_config(
        migration_text(
            names, target_schema=schema, source_url=src_url, target_url=tgt_url, bootstrap=bootstrap
        )
    )
    transforms = load_transforms(config)
    out: dict[str, Any] = {"sample": sample}
    print(f"stages on {sample:,} events ...", file=sys.stderr)
    stride = max(1, in_topic // sample)
    with stopwatch() as t:
        messages = [
            m
            for i, m in enumerate(
                read_topic([bootstrap], names.changes_topic, max_messages=in_topic)
            )
            if i % stride == 0
        ][:sample]
    out["kafka_read"] = (in_topic, t[0])
    values = [m.value or b"" for m in messages]
    out["value_bytes_mean"] = round(sum(map(len, values)) / len(values), 1)
    docs = [json.loads(v) for v in values[:5000]]
    types_bytes = [len(json.dumps(d["types"], separators=(", ", " : "))) for d in docs]
    out["types_bytes_mean"] = round(sum(types_bytes) / len(types_bytes), 1)
    with stopwatch() as t:
        for v in values:
            json.loads(v)
    out["json_loads_plain"] = (len(values), t[0])
    with stopwatch() as t:
        for v in values:
            parse_json(v)
    out["parse_json_hooks"] = (len(values), t[0])
    decoder = json.JSONDecoder(parse_float=Decimal, parse_int=_parse_int)
    with stopwatch() as t:
        for v in values:
            decoder.decode(v.decode())
    out["json_decoder_reused"] = (len(values), t[0])
    with stopwatch() as t:
        events = [decode_event(v) for v in values]
    out["decode_event"] = (len(values), t[0])
    with stopwatch() as t:
        ops = [transforms.apply(e.source, e.op, e.key, e.row, e.version) for e in events]
    out["transform"] = (len(events), t[0])
    flat = [op for group in ops for op in group]
    with stopwatch() as t:
        for op in flat:
            key_text(op.key)
    out["key_text_per_op"] = (len(flat), t[0])
    with stopwatch() as t:
        for op in flat:
            str(op.target)
    out["target_str_per_op"] = (len(flat), t[0])
    ensure_bookkeeping(tgt_engine)
    for variant, cls in applier_variants().items():
        key = "applier" if variant == "project" else f"applier_{variant}"
        vschema = names.target_schema(f"st_{variant}")
        vconfig = make_config(
            migration_text(
                names,
                target_schema=vschema,
                source_url=src_url,
                target_url=tgt_url,
                bootstrap=bootstrap,
            )
        )
        vtransforms = load_transforms(vconfig)
        vops = [vtransforms.apply(e.source, e.op, e.key, e.row, e.version) for e in events]
        install_new_schema(tgt_engine, vschema)
        print(f"  applier variant {variant} ...", file=sys.stderr)
        with psycopg.connect(libpq_url(tgt_url), options="-c timezone=UTC") as conn:
            try_checkpoint(conn)
            applier = cls(conn, vtransforms)
            times: list[float] = []
            applied = 0
            for start in range(0, len(events), batch):
                chunk_ops = [op for group in vops[start : start + batch] for op in group]
                positions = _positions(events[start : start + batch])
                t0 = time.perf_counter()
                with conn.transaction():
                    applied += applier.apply(chunk_ops, positions).applied
                times.append(time.perf_counter() - t0)
        out[key] = (len(events), sum(times))
        out[f"{key}_ops_applied"] = applied
        out[f"{key}_batch_ms_p50"] = round(statistics.median(times) * 1000, 1)
        drop_target(tgt_url, vschema, names.source_schema)
    for k, v in list(out.items()):
        if isinstance(v, tuple):
            n, sec = v
            out[k] = {
                "n": n,
                "seconds": round(sec, 3),
                "per_s": round(n / sec, 1),
                "us_each": round(sec / n * 1e6, 2),
            }
    serial = sum(out[k]["us_each"] for k in ("kafka_read", "decode_event", "transform", "applier"))
    out["serial_sum_us_per_event"] = round(serial, 1)
    out["serial_events_per_s"] = round(1e6 / serial, 1)
    return out


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--changes", type=int, default=1_000_000, help="change events (1M)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2000, 5000])
    p.add_argument("--baseline-batch-size", type=int, default=2000)
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--profile-batch-size", type=int, default=2000)
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples/s (200)")
    p.add_argument(
        "--stage-sample", type=int, default=100_000, help="events for the stage timings (0: off)"
    )
    p.add_argument("--target-ratio", type=float, default=0.60)
    p.add_argument("--keep", action="store_true", help="keep schemas and topics (debugging)")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if missing_services():
        return run_inside_dev_stack(__file__, sys.argv[1:] if argv is None else list(argv))
    urls = env_urls()
    src_url, tgt_url, bootstrap = urls
    names = ShopNames.new("at")
    outdir = REPO / "bench" / "out" / f"apply_throughput-{names.tag}"
    outdir.mkdir(parents=True, exist_ok=True)
    config = make_config(
        migration_text(
            names,
            target_schema=names.target_schema("fill"),
            source_url=src_url,
            target_url=tgt_url,
            bootstrap=bootstrap,
        )
    )
    src_engine = make_engine(config.source)
    tgt_engine = make_engine(config.target)
    raw_schema = f"raw_{names.tag}"
    info: dict[str, Any] = {"machine": machine_info(), "tag": names.tag, "changes": args.changes}
    started = time.perf_counter()
    try:
        info["fill"] = fill(src_url, src_engine, config, names, args.changes)
        in_topic = topic_messages(bootstrap, names.changes_topic)
        info["messages_in_topic"] = in_topic
        if in_topic != args.changes:
            raise RuntimeError(f"topic holds {in_topic} messages, expected {args.changes}")
        seeded = info["fill"]["seed"]
        by_source = {k.split(".", 1)[1]: v for k, v in info["fill"]["changes_by_source"].items()}
        weights = {
            "customers": by_source["customers"] + by_source["customer_profiles"],
            "addresses": by_source["customers"],
            "orders": by_source["orders"],
        }
        key_space = {
            "customers": seeded["customers"],
            "addresses": seeded["customers"],
            "orders": seeded["orders"],
        }
        expected = expected_counts(src_url, names.source_schema)
        info["expected_target_rows"] = expected

        def baseline(n: int) -> dict[str, Any]:
            with contextlib.suppress(psycopg.Error), psycopg.connect(libpq_url(tgt_url)) as c:
                c.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(raw_schema))
                )
                c.commit()
            install_new_schema(tgt_engine, raw_schema)
            print(f"raw upsert baseline pass {n} ...", file=sys.stderr)
            load = os.getloadavg()[0]
            result = raw_upsert(
                tgt_url,
                raw_schema,
                args.changes,
                args.baseline_batch_size,
                weights,
                key_space,
                seed=n,
            )
            result["loadavg_1m"] = load
            return result

        info["raw"] = [baseline(1)]
        info["drains"] = [
            drain(args, names, urls, outdir, bs, f"b{bs}", tgt_engine, expected)
            for bs in args.batch_sizes
        ]
        if args.stage_sample:
            info["stages"] = stages(
                names,
                urls,
                tgt_engine,
                min(args.stage_sample, args.changes),
                args.batch_sizes[0],
                in_topic,
            )
        info["raw"].append(baseline(2))
        if args.profile:
            prof = drain(
                args,
                names,
                urls,
                outdir,
                args.profile_batch_size,
                "profile",
                tgt_engine,
                expected,
                profile=True,
            )
            prof["py_spy"] = categorise_profile(outdir / "profile.txt")
            info["profile"] = prof
    finally:
        if not args.keep:
            with contextlib.suppress(Exception):
                drop_target(tgt_url, raw_schema, names.source_schema)
            with contextlib.suppress(Exception):
                drop_source(src_engine, config, names)
            with contextlib.suppress(Exception):
                reset_group(bootstrap, names.group)
            delete_topics(bootstrap, names.topics)
        src_engine.dispose()
        tgt_engine.dispose()
    info["total_s"] = round(time.perf_counter() - started, 1)
    report(info, args)
    return 0


def report(info: dict[str, Any], args: argparse.Namespace) -> None:
    raw = info["raw"]
    raw_mean = statistics.mean(r["per_s"] for r in raw)
    fill_info = info["fill"]
    print(
        f"\nfill: {fill_info['seed']}, updates {fill_info['updates_s']} s, changes by source "
        f"{fill_info['changes_by_source']}, relay {fill_info['relay']}"
    )
    print_table(
        f"Raw batched upsert (binary COPY -> temp staging -> INSERT ... ON CONFLICT), "
        f"{args.changes:,} rows, batch {args.baseline_batch_size:,}",
        [
            "pass",
            "rows",
            "seconds",
            "rows/s",
            "batch ms p50",
            "batch ms p95",
            "client CPU us/row",
            "PG CPU us/row",
            "load",
        ],
        [
            (
                i + 1,
                r["rows"],
                r["seconds"],
                r["per_s"],
                r["batch_ms_p50"],
                r["batch_ms_p95"],
                r["client_cpu_us_per_row"],
                r["service_cpu_us_per_row"].get("postgres"),
                r["loadavg_1m"],
            )
            for i, r in enumerate(raw)
        ],
    )
    drains = list(info["drains"]) + ([info["profile"]] if "profile" in info else [])
    print_table(
        f"Worker drains of {args.changes:,} change events (raw mean {raw_mean:,.0f} rows/s)",
        [
            "run",
            "batch",
            "events",
            "ops applied",
            "to last batch s",
            "events/s",
            "steady ev/s",
            "vs raw",
            "ops/s",
            "peak RSS MiB",
            "worker CPU us/ev",
            "PG CPU us/ev",
            "Kafka CPU us/ev",
            "rows ok",
            "load",
        ],
        [
            (
                "profiled" if d is info.get("profile") else "timed",
                d["batch_size"],
                d["consumed"],
                d["applied"],
                d["last_batch_s"],
                d["events_per_s"],
                d["steady_events_per_s"],
                f"{d['events_per_s'] / raw_mean:.0%}",
                d["applied_ops_per_s"],
                d["ru_maxrss_mib"],
                (d["cpu_user_s"] + d["cpu_sys_s"]) / d["consumed"] * 1e6,
                d["service_cpu_s"].get("postgres", 0) / d["consumed"] * 1e6,
                d["service_cpu_s"].get("kafka", 0) / d["consumed"] * 1e6,
                d["target_rows_ok"],
                d["loadavg_1m"],
            )
            for d in drains
        ],
    )
    best = max(d["events_per_s"] for d in info["drains"])
    print(
        f"\nbest worker rate {best:,.0f} events/s = {best / raw_mean:.0%} of the raw upsert "
        f"(target {args.target_ratio:.0%}: {'met' if best / raw_mean >= args.target_ratio else 'MISSED'})"
    )
    if "stages" in info:
        st = info["stages"]
        print_table(
            f"Stages alone on {st['sample']:,} events (this process; envelope "
            f"{st['value_bytes_mean']:.0f} B, of which types {st['types_bytes_mean']:.0f} B)",
            ["stage", "count", "seconds", "per s", "us each"],
            [
                (k, st[k]["n"], st[k]["seconds"], st[k]["per_s"], st[k]["us_each"])
                for k in (
                    "kafka_read",
                    "json_loads_plain",
                    "parse_json_hooks",
                    "json_decoder_reused",
                    "decode_event",
                    "transform",
                    "key_text_per_op",
                    "target_str_per_op",
                    "applier",
                    "applier_no_guard",
                    "applier_binary_copy",
                )
            ],
        )
        ops = st["applier_ops_applied"] / st["sample"]
        print(
            f"{ops:.2f} target ops per event; applier per op: "
            + ", ".join(
                f"{k} {st[k]['us_each'] / ops:.1f} us"
                for k in ("applier", "applier_no_guard", "applier_binary_copy")
            )
            + f" (raw upsert {1e6 / raw_mean:.1f} us per row)"
        )
        print(
            f"serial sum kafka_read + decode_event + transform + applier: "
            f"{st['serial_sum_us_per_event']} us/event = {st['serial_events_per_s']:,.0f} events/s; "
            f"applier alone {st['applier']['per_s'] / raw_mean:.0%} of the raw upsert "
            f"(what-ifs: without bookkeeping {st['applier_no_guard']['per_s'] / raw_mean:.0%}, "
            f"binary COPY {st['applier_binary_copy']['per_s'] / raw_mean:.0%})"
        )
    if "profile" in info:
        prof = info["profile"]
        run_s = prof["run_s"]
        print_table(
            "Profiled drain: wall time per phase (instrumented, exclusive)",
            ["phase (apply thread: concurrent with the main thread)", "seconds", "share of run"],
            [(k, v, f"{v / run_s:.1%}") for k, v in prof["phases_s"].items()],
        )
        spy = prof["py_spy"]
        print_table(
            f"py-spy, main thread ({spy['samples_main_thread']:,} samples at "
            f"{args.profile_rate}/s, idle included)",
            ["category (deepest frame on the stack)", "share", "of which waiting"],
            [(k, f"{v['share']:.1%}", f"{v['waiting_share']:.1%}") for k, v in spy["main"].items()],
        )
        print_table(
            f"py-spy, apply thread ({spy['samples_apply_thread']:,} samples, idle included)",
            ["category (deepest frame on the stack)", "share", "of which waiting"],
            [
                (k, f"{v['share']:.1%}", f"{v['waiting_share']:.1%}")
                for k, v in spy["apply_thread"].items()
            ],
        )
        print_table(
            "py-spy, other threads",
            ["thread (run function)", "samples", "busy (not waiting)"],
            [(k, v["samples"], f"{v['busy_share']:.1%}") for k, v in spy["other_threads"].items()],
        )
    m = info["machine"]
    print(
        f"\nmachine: {m['nproc']} cores {m['cpu_model']}, load {m['loadavg_1m']:.2f}, "
        f"psycopg {m['psycopg']}, kafka-python {m['kafka-python']} "
        f"(crc32c C extension: {m['crc32c_c_extension']}); total {info['total_s']} s"
    )
    if args.json:
        emit_json({"benchmark": "apply_throughput", **info})


if __name__ == "__main__":
    sys.exit(main())
