"""Rollback path: what the loop guard costs, and how fast the round-trip check runs.

1. Trigger cost. One table (``bench_rows``: id, text, numeric, timestamptz, jsonb), rows
   inserted in transactions of ``--batch`` rows, in rounds (A B C D | D C B A, so a slow drift
   of the shared machine cancels out):

   * ``no trigger``: capture uninstalled (the floor);
   * ``trigger, no origin check``: capture installed, then the trigger function replaced by the
     body it had before the origin check existed (the baseline);
   * ``trigger + origin check``: capture as installed now, an application write (captured);
   * ``skipped (toolkit write)``: the same trigger, the transaction marked as the toolkit's own
     (``SET LOCAL dualwrite.origin``): the trigger returns before writing the changelog.

   The changelog is emptied between runs; every run starts from an empty, vacuumed table.

2. Round-trip check. The shop example seeded with ``--customers`` customers on the source
   (profiles and orders follow), then ``round_trip_check`` over every row, against a baseline
   measured in the same run: reading the same rows and running the forward transform only.

Services from DUALWRITE_SOURCE_URL / DUALWRITE_TARGET_URL / DUALWRITE_KAFKA_BOOTSTRAP, or the
dev stack is started and stopped around the run. Kafka is not used.

    .venv/bin/python bench/rollback.py                       # 200,000 rows x 2 rounds, 20,000 customers
    .venv/bin/python bench/rollback.py --rows 20000 --rounds 1 --customers 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from _benchlib import emit_json, libpq_url, machine_info, print_table
from _capturebench import make_config, migration_text, missing_services, run_inside_dev_stack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualwrite.capture import install, uninstall
from dualwrite.db import make_engine
from dualwrite.origin import MARK_TOOLKIT_WRITE
from dualwrite.reverse import round_trip_check
from dualwrite.snapshot import connect, decode_image, iter_rows, source_shape
from dualwrite.transform import load_transforms
from examples.shop.workload import install_new_schema, install_old_schema, seed

MODES = (
    "no trigger",
    "trigger, no origin check",
    "trigger + origin check",
    "skipped (toolkit write)",
)
INSERT = (
    "INSERT INTO {t} (id, name, amount, at, doc) SELECT g, 'name ' || g, g * 1.25, "
    "timestamptz '2024-01-01 00:00+00' + g * interval '1 second', jsonb_build_object('g', g) "
    "FROM generate_series(%s::bigint, %s::bigint) AS g"
)


def _strip_origin_check(conn: psycopg.Connection[Any], schema: str) -> None:
    """Replace every capture function in ``schema`` by its body without the origin check."""
    functions = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n "
        "ON n.oid = p.pronamespace WHERE n.nspname = %s AND p.proname LIKE 'capture\\_%%'",
        (schema,),
    ).fetchall()
    for (fn,) in functions:
        body = conn.execute("SELECT pg_get_functiondef(%s::regprocedure)", (fn,)).fetchone()
        assert body is not None
        text = str(body[0])
        start = text.index("    IF current_setting(")
        end = text.index("END IF;", start) + len("END IF;")
        conn.execute(text[:start] + text[end:])  # type: ignore[arg-type]
    conn.commit()


def trigger_cost(
    args: argparse.Namespace, source_url: str, target_url: str
) -> list[dict[str, Any]]:
    suffix = uuid.uuid4().hex[:8]
    schema, capture_schema = f"bench_rb_{suffix}", f"bench_rb_cap_{suffix}"
    table = f'"{schema}".bench_rows'
    config = make_config(
        migration_text(
            name="bench-rollback",
            source_url=source_url,
            target_url=target_url,
            bootstrap="127.0.0.1:9",
            topic_prefix=f"bench.rollback.{suffix}",
            capture_schema=capture_schema,
            tables=[f"{schema}.bench_rows"],
        )
    )
    engine = make_engine(config.source)
    conn = psycopg.connect(libpq_url(source_url), autocommit=False)
    conn.execute(f'CREATE SCHEMA "{schema}"')  # type: ignore[arg-type]
    conn.execute(
        f"CREATE TABLE {table} (id bigint PRIMARY KEY, name text, amount numeric(14, 2), "  # type: ignore[arg-type]
        "at timestamptz, doc jsonb)"
    )
    conn.commit()
    runs: list[dict[str, Any]] = []
    try:
        for round_no in range(args.rounds):
            order = MODES if round_no % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                uninstall(engine, config, force=True)
                conn.execute(f"TRUNCATE {table}")  # type: ignore[arg-type]
                conn.commit()
                conn.autocommit = True
                conn.execute(f"VACUUM ANALYZE {table}")  # type: ignore[arg-type]
                conn.autocommit = False
                if mode != "no trigger":
                    install(engine, config)
                if mode == "trigger, no origin check":
                    _strip_origin_check(conn, capture_schema)
                t0 = time.perf_counter()
                for first in range(1, args.rows + 1, args.batch):
                    if mode == "skipped (toolkit write)":
                        conn.execute(MARK_TOOLKIT_WRITE)
                    last = min(args.rows, first + args.batch - 1)
                    conn.execute(INSERT.format(t=table), (first, last))  # type: ignore[arg-type]
                    conn.commit()
                elapsed = time.perf_counter() - t0
                captured = 0
                if mode != "no trigger":
                    row = conn.execute(
                        f'SELECT count(*) FROM "{capture_schema}".changelog'  # type: ignore[arg-type]
                    ).fetchone()
                    captured = int(row[0]) if row else 0
                    conn.commit()
                runs.append(
                    {
                        "round": round_no,
                        "mode": mode,
                        "rows": args.rows,
                        "elapsed_s": elapsed,
                        "rows_per_s": args.rows / elapsed,
                        "captured": captured,
                    }
                )
    finally:
        uninstall(engine, config, force=True)
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')  # type: ignore[arg-type]
        conn.commit()
        conn.close()
        engine.dispose()
    return runs


def round_trip(args: argparse.Namespace, source_url: str, target_url: str) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    old, new = f"bench_legacy_{suffix}", f"bench_shop_{suffix}"
    tables = [f"{old}.customers", f"{old}.customer_profiles", f"{old}.orders"]
    text = migration_text(
        name="bench-roundtrip",
        source_url=source_url,
        target_url=target_url,
        bootstrap="127.0.0.1:9",
        topic_prefix=f"bench.roundtrip.{suffix}",
        capture_schema=f"bench_rt_cap_{suffix}",
        tables=tables,
    )
    text = text.replace(f'target = "{old}.', f'target = "{new}.').replace(
        f'target = "{new}.customer_profiles"', f'target = "{new}.customers"'
    )
    text += '[transform]\nmodule = "examples.shop.transform"\n'
    config = make_config(text)
    source, target = make_engine(config.source), make_engine(config.target)
    try:
        install_old_schema(source, old)
        install_new_schema(target, new)
        seeded = seed(source, args.customers, schema=old, rng_seed=1)
        transforms = load_transforms(config)
        # baseline: read every row as capture encodes it and run the forward transform
        t0 = time.perf_counter()
        src = connect(source, "bench-roundtrip")
        baseline_rows = 0
        for table in config.tables:
            shape = source_shape(src, table)
            for chunk in iter_rows(src, shape, 5000):
                for _key, image in chunk:
                    row = decode_image(image, shape.types)
                    transforms.apply(
                        str(table.source), "read", {c: row[c] for c in shape.key}, row, 0
                    )
                    baseline_rows += 1
        src.close()
        baseline_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = round_trip_check(config, seeded.rows, source=source, target=target)
        check_s = time.perf_counter() - t0
    finally:
        with source.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{old}" CASCADE')
        with target.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{new}" CASCADE')
        source.dispose()
        target.dispose()
    return {
        "rows": report.rows_checked,
        "baseline_rows": baseline_rows,
        "baseline_s": baseline_s,
        "check_s": check_s,
        "baseline_rows_per_s": baseline_rows / baseline_s,
        "check_rows_per_s": report.rows_checked / check_s,
        "failures": len(report.failures),
        "normalised": len(report.normalised),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if missing_services():
        return run_inside_dev_stack(__file__, argv)
    import os

    source_url, target_url = os.environ["DUALWRITE_SOURCE_URL"], os.environ["DUALWRITE_TARGET_URL"]
    load = os.getloadavg()[0]
    runs = trigger_cost(args, source_url, target_url)
    rt = round_trip(args, source_url, target_url)
    by_mode = {m: statistics.median(r["rows_per_s"] for r in runs if r["mode"] == m) for m in MODES}
    base = by_mode["trigger, no origin check"]
    print(f"load average at start: {load:.1f}")
    print_table(
        f"Trigger cost: {args.rows:,} rows in transactions of {args.batch}, {args.rounds} round(s), median",
        ["mode", "rows/s", "vs no origin check", "changelog rows"],
        [
            [
                m,
                round(by_mode[m]),
                round(by_mode[m] / base, 3),
                next(r["captured"] for r in runs if r["mode"] == m),
            ]
            for m in MODES
        ],
    )
    print_table(
        "Round-trip check over every row of the seeded shop",
        ["what", "rows", "seconds", "rows/s", "vs baseline"],
        [
            [
                "read + forward transform (baseline)",
                rt["baseline_rows"],
                round(rt["baseline_s"], 2),
                round(rt["baseline_rows_per_s"]),
                1.0,
            ],
            [
                "round_trip_check",
                rt["rows"],
                round(rt["check_s"], 2),
                round(rt["check_rows_per_s"]),
                round(rt["check_rows_per_s"] / rt["baseline_rows_per_s"], 3),
            ],
        ],
    )
    print(f"round trip: {rt['failures']} failure(s), {rt['normalised']} normalised row(s)")
    if args.json:
        emit_json({"machine": machine_info(), "load": load, "trigger_runs": runs, "round_trip": rt})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
