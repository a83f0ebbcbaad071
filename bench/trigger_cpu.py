"""Trigger CPU: PostgreSQL backend CPU per TPC-B transaction with and without capture triggers.

``capture_overhead.py`` measures what the issue asks (pgbench TPS), but on a shared machine its
TPS moves with other people's disk and CPU use by more than the triggers cost. This script
measures the triggers' own cost in a way that load barely moves: one session runs pgbench's
TPC-B transaction (3 UPDATEs, 1 SELECT, 1 INSERT, prepared) ``--transactions`` times with
``synchronous_commit = off``, and the CPU time its PostgreSQL backend used is read from
``/proc/<pid>/stat`` (so the machine must be the database host, as with the dev stack).
Modes alternate in rounds, order reversed on odd rounds:

* ``none``: the capture triggers disabled (``ALTER TABLE ... DISABLE TRIGGER``);
* ``capture``: the triggers enabled (4 change records per transaction).

A fresh database (``bench_trigger_cpu``, dropped at the end) gets ``pgbench -i -s SCALE``,
``pgbench_history`` a primary key, and ``capture install`` on the four tables.

    .venv/bin/python bench/trigger_cpu.py                  # scale 10, 6 rounds of 3,000 txns
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from _benchlib import emit_json, libpq_url, machine_info, print_table
from _capturebench import (
    make_config,
    migration_text,
    missing_services,
    run_inside_dev_stack,
    with_database,
)

from dualwrite.capture import install
from dualwrite.capture._ddl import trigger_name
from dualwrite.db import make_engine

TABLES = ("pgbench_accounts", "pgbench_tellers", "pgbench_branches", "pgbench_history")
SCHEMA = "dualwrite_trigger_cpu"
TPCB = (
    "UPDATE pgbench_accounts SET abalance = abalance + %(d)s WHERE aid = %(a)s",
    "SELECT abalance FROM pgbench_accounts WHERE aid = %(a)s",
    "UPDATE pgbench_tellers SET tbalance = tbalance + %(d)s WHERE tid = %(t)s",
    "UPDATE pgbench_branches SET bbalance = bbalance + %(d)s WHERE bid = %(b)s",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
    "VALUES (%(t)s, %(b)s, %(a)s, %(d)s, CURRENT_TIMESTAMP)",
)


def backend_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def setup(args: argparse.Namespace, url: str, sa_url: str) -> None:
    admin = libpq_url(os.environ["DUALWRITE_SOURCE_URL"])
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {args.database}")
        conn.execute(f"CREATE DATABASE {args.database}")
    info = psycopg.conninfo.conninfo_to_dict(url)
    env = dict(os.environ, PGPASSWORD=str(info.get("password", "")))
    base = ["-h", str(info["host"]), "-p", str(info["port"]), "-U", str(info["user"])]
    subprocess.run(
        [args.pgbench, *base, "-i", "-q", "-s", str(args.scale), args.database],
        env=env,
        check=True,
        capture_output=True,
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")
    config = make_config(
        migration_text(
            name="trigger-cpu",
            source_url=sa_url,
            target_url=sa_url,
            bootstrap="127.0.0.1:9",
            topic_prefix="trigger-cpu",
            capture_schema=SCHEMA,
            tables=[f"public.{t}" for t in TABLES],
        )
    )
    engine = make_engine(config.source)
    try:
        install(engine, config)
    finally:
        engine.dispose()


def run(args: argparse.Namespace, url: str, mode: str, round_no: int) -> float:
    """Backend CPU µs per transaction."""
    action = "DISABLE" if mode == "none" else "ENABLE"
    with psycopg.connect(url, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"ALTER TABLE {table} {action} TRIGGER {trigger_name(SCHEMA)}")
        conn.execute(f"DELETE FROM {SCHEMA}.changelog")
        conn.execute(f"VACUUM ANALYZE pgbench_branches, pgbench_tellers, {SCHEMA}.changelog")
        conn.execute("CHECKPOINT")
    rnd = random.Random(round_no)
    scale = args.scale
    with psycopg.connect(url, options="-c synchronous_commit=off") as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        pid = int(row[0]) if row else 0
        conn.commit()

        def transaction() -> None:
            p: dict[str, Any] = {
                "a": rnd.randint(1, 100_000 * scale),
                "t": rnd.randint(1, 10 * scale),
                "b": rnd.randint(1, scale),
                "d": rnd.randint(-5000, 5000),
            }
            with conn.transaction():
                for statement in TPCB:
                    conn.execute(statement, p, prepare=True)

        for _ in range(args.warmup):
            transaction()
        cpu0 = backend_cpu_s(pid)
        for _ in range(args.transactions):
            transaction()
        return (backend_cpu_s(pid) - cpu0) / args.transactions * 1e6


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s (10)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--transactions", type=int, default=3000, help="measured per run (3000)")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--database", default="bench_trigger_cpu", help="created and dropped (!)")
    p.add_argument("--pgbench", default="/usr/lib/postgresql/15/bin/pgbench")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if missing_services():
        return run_inside_dev_stack(__file__, sys.argv[1:] if argv is None else list(argv))
    sa_url = with_database(os.environ["DUALWRITE_SOURCE_URL"], args.database)
    url = libpq_url(sa_url)
    t0 = time.perf_counter()
    setup(args, url, sa_url)
    runs: dict[str, list[float]] = {"none": [], "capture": []}
    try:
        for round_no in range(args.rounds):
            order = ["none", "capture"] if round_no % 2 == 0 else ["capture", "none"]
            for mode in order:
                us = run(args, url, mode, round_no)
                runs[mode].append(us)
                print(f"round {round_no} {mode}: {us:.0f} µs/txn", file=sys.stderr)
    finally:
        admin = libpq_url(os.environ["DUALWRITE_SOURCE_URL"])
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {args.database}")
    none, capture = statistics.median(runs["none"]), statistics.median(runs["capture"])
    print_table(
        f"Backend CPU per TPC-B transaction, scale {args.scale}, {args.transactions:,} "
        "transactions per run (lower is better)",
        ["mode", "runs (µs/txn)", "median µs/txn", "ratio to none", "trigger µs per row"],
        [
            ["none", " / ".join(f"{x:.0f}" for x in runs["none"]), f"{none:.0f}", "1.00", "-"],
            [
                "capture",
                " / ".join(f"{x:.0f}" for x in runs["capture"]),
                f"{capture:.0f}",
                f"{capture / none:.2f}",
                f"{(capture - none) / 4:.1f}",
            ],
        ],
    )
    machine = machine_info()
    print(
        f"machine: load {machine.get('loadavg_1m', 0):.2f}; total {time.perf_counter() - t0:.0f}s"
    )
    if args.json:
        emit_json(
            {
                "benchmark": "trigger_cpu",
                "args": vars(args),
                "machine": machine,
                "runs_us_per_txn": runs,
                "summary": {
                    "none_us": none,
                    "capture_us": capture,
                    "ratio": capture / none,
                    "trigger_us_per_row": (capture - none) / 4,
                },
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
