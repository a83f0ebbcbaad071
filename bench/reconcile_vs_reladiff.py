"""Reconcile against reladiff 0.6.0 (hashdiff) and against the floor of reading both tables
with COPY, all in one run, on two tables in two different databases of one server.

Cases: the same schema on both sides, then a declared transform (rename, drop, constant,
cents -> numeric, lower, local time -> UTC); each with 10 differing rows and with 1% of the
rows differing, scattered over the key space (updates, deletes and inserts). For reladiff the
transform is a view on the source that computes the target's columns (what a reladiff user
would write). Each tool runs as its own process: wall time includes start-up; peak memory is
that process's maximum RSS. The COPY floor reads both tables to nowhere (``COPY ... TO
STDOUT``), one after the other and both at once.

    .venv/bin/python bench/reconcile_vs_reladiff.py                       # 1M rows
    .venv/bin/python bench/reconcile_vs_reladiff.py --rows 10000000 --skip-reladiff
    .venv/bin/python bench/reconcile_vs_reladiff.py --rows 20000 --json   # a quick check

Needs DUALWRITE_SOURCE_URL (its server gets two scratch databases, dropped at the end unless
--keep) and DUALWRITE_KAFKA_BOOTSTRAP, and reladiff 0.6.0 with psycopg2 in the virtualenv
(``.venv/bin/pip install reladiff==0.6.0 psycopg2-binary``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchlib import emit_json, libpq_url, machine_info, print_table

DB_A, DB_B = "dw_bench_reconcile_a", "dw_bench_reconcile_b"
CHILD = Path(__file__).with_name("_reconcile_child.py")  # imports only what reconcile needs
BERLIN = "Europe/Berlin"

SAME = {
    "ddl": "CREATE TABLE {t} (id bigint PRIMARY KEY, customer_id integer NOT NULL, "
    "amount numeric(12,2), status text, email text, created_at timestamptz, flag boolean)",
    "fill": "INSERT INTO {t} SELECT g, (g * 7919) % 100000, ((g * 31) % 1000000) / 100.0, "
    "(ARRAY['new','paid','shipped','cancelled'])[1 + g % 4], 'user' || g || '@example.com', "
    "timestamptz '2024-01-01 00:00:00+00' + g * interval '17 second', g % 3 = 0 "
    "FROM generate_series({lo}::bigint, {hi}) g",
    "columns": ["customer_id", "amount", "status", "email", "created_at", "flag"],
    "touch": "status",
}
LEGACY = {
    "ddl": "CREATE TABLE {t} (id bigint PRIMARY KEY, customer_id integer NOT NULL, "
    "amount_cents bigint, status text, email text, placed_at timestamp, internal_note text)",
    "fill": "INSERT INTO {t} SELECT g, (g * 7919) % 100000, (g * 31) % 1000000, "
    "(ARRAY['new','paid','shipped','cancelled'])[1 + g % 4], 'User' || g || '@Example.com', "
    "timestamp '2024-01-01 00:00:00' + g * interval '17 second', 'note ' || g "
    "FROM generate_series({lo}::bigint, {hi}) g",
}
NEW = {
    "ddl": "CREATE TABLE {t} (id bigint PRIMARY KEY, customer_id integer NOT NULL, "
    "amount numeric(12,2), status text, email text, placed_at_utc timestamptz, currency text)",
    "fill": "INSERT INTO {t} SELECT g, (g * 7919) % 100000, ((g * 31) % 1000000) / 100.0, "
    "(ARRAY['new','paid','shipped','cancelled'])[1 + g % 4], lower('User' || g || '@Example.com'), "
    f"(timestamp '2024-01-01 00:00:00' + g * interval '17 second') AT TIME ZONE '{BERLIN}', 'EUR' "
    "FROM generate_series({lo}::bigint, {hi}) g",
    "columns": ["customer_id", "amount", "status", "email", "placed_at_utc", "currency"],
    "touch": "status",
}
VIEW = (
    "CREATE VIEW legacy_orders_v AS SELECT id, customer_id, "
    "(amount_cents::numeric / 100)::numeric(12,2) AS amount, status, lower(email) AS email, "
    f"placed_at AT TIME ZONE '{BERLIN}' AS placed_at_utc, 'EUR'::text AS currency FROM legacy_orders"
)
DECLARED = """rename = { amount_cents = "amount", placed_at = "placed_at_utc" }
drop = ["internal_note"]
constants = { currency = "EUR" }
convert = { amount_cents = "cents_to_numeric", email = "lower", placed_at = "zone:Europe/Berlin" }
"""


def url_for(base: str, db: str) -> str:
    return re.sub(r"/[^/?]*(\?|$)", f"/{db}\\1", libpq_url(base), count=1)


def admin(base: str, statement: str) -> None:
    with psycopg.connect(libpq_url(base), autocommit=True) as conn:
        conn.execute(statement)


def load(url: str, table: str, spec: dict[str, Any], rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(spec["ddl"].format(t=table).replace("PRIMARY KEY", "NOT NULL"))
        step = 2_000_000
        for lo in range(1, rows + 1, step):
            conn.execute(spec["fill"].format(t=table, lo=lo, hi=min(rows, lo + step - 1)))
        conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
        conn.execute(f"VACUUM (ANALYZE) {table}")


def seed_drift(url: str, table: str, touch: str, ids: list[int], rows: int) -> dict[str, int]:
    """Scattered drift on the target: 80% updates, 10% deletes, 10% inserts past the end."""
    n = len(ids)
    deletes, inserts = max(1, n // 10), max(1, n // 10)
    updates = ids[: n - deletes - inserts]
    gone = ids[n - deletes - inserts : n - inserts]
    with psycopg.connect(url) as conn:
        conn.execute(f"UPDATE {table} SET {touch} = {touch} || '~' WHERE id = ANY(%s)", (updates,))
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS drift_saved AS SELECT * FROM {table} WITH NO DATA"
        )
        conn.execute(f"INSERT INTO drift_saved SELECT * FROM {table} WHERE id = ANY(%s)", (gone,))
        conn.execute(f"DELETE FROM {table} WHERE id = ANY(%s)", (gone,))
        others = conn.execute(
            "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped AND attname <> 'id'",
            (table,),
        ).fetchone()[0]
        conn.execute(
            f"INSERT INTO {table} SELECT id + %s, {others} FROM {table} WHERE id = ANY(%s)",
            (rows + 10, updates[:inserts]),
        )
        conn.commit()
        conn.autocommit = True
        conn.execute(f"VACUUM (ANALYZE) {table}")
    return {"mismatch": len(updates), "missing": len(gone), "extra": inserts}


def undo_drift(url: str, table: str, touch: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET {touch} = left({touch}, -1) WHERE {touch} LIKE '%~'")
        conn.execute(f"DELETE FROM {table} WHERE id > %s", (rows,))
        conn.execute(f"INSERT INTO {table} SELECT * FROM drift_saved")
        conn.execute("DROP TABLE drift_saved")
        conn.execute(f"VACUUM (ANALYZE) {table}")


def copy_floor(url_a: str, table_a: str, url_b: str, table_b: str) -> tuple[float, float]:
    """Seconds to COPY both tables out to nowhere: one after the other, and both at once."""

    def read(url: str, table: str) -> None:
        with (
            psycopg.connect(url) as conn,
            conn.cursor() as cur,
            cur.copy(f"COPY (SELECT * FROM {table}) TO STDOUT") as copy,
        ):
            for _ in copy:
                pass

    t0 = time.perf_counter()
    read(url_a, table_a)
    read(url_b, table_b)
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    other = threading.Thread(target=read, args=(url_a, table_a))
    other.start()
    read(url_b, table_b)
    other.join()
    return sequential, time.perf_counter() - t0


def run_ours(config: Path, workers: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(CHILD), str(config), str(workers)],
        capture_output=True,
        text=True,
        check=False,
    )
    if os.environ.get("BENCH_DEBUG") or out.returncode != 0:
        sys.stderr.write(out.stderr)
    out.check_returncode()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


def run_reladiff(
    url_a: str, table_a: str, url_b: str, table_b: str, columns: list[str], threads: int
) -> dict[str, Any]:
    reladiff = Path(sys.executable).with_name("reladiff")
    argv = [
        str(reladiff),
        url_a,
        table_a,
        url_b,
        table_b,
        "-k",
        "id",
        "-a",
        "hashdiff",
        "-s",
        "-j",
        str(threads),
    ]
    for c in columns:
        argv += ["-c", c]
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    text = out.stdout + out.stderr
    found = {}
    for label, pattern in (
        ("exclusive_a", r"(\d+) rows exclusive to table A"),
        ("exclusive_b", r"(\d+) rows exclusive to table B"),
        ("updated", r"(\d+) rows updated"),
    ):
        m = re.search(pattern, text)
        found[label] = int(m.group(1)) if m else None
    return {
        "wall_s": wall,
        "found": found,
        "returncode": out.returncode,
        "tail": text.strip().splitlines()[-8:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--reladiff-threads", type=int, default=4)
    parser.add_argument("--skip-reladiff", action="store_true")
    parser.add_argument("--cases", default="same,transform")
    parser.add_argument("--drift", default="10,1%")
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = os.environ["DUALWRITE_SOURCE_URL"]
    kafka = os.environ["DUALWRITE_KAFKA_BOOTSTRAP"]
    url_a, url_b = url_for(base, DB_A), url_for(base, DB_B)
    for db in (DB_A, DB_B):
        admin(base, f"DROP DATABASE IF EXISTS {db}")
        admin(base, f"CREATE DATABASE {db}")
    rows_out: list[list[Any]] = []
    payload: dict[str, Any] = {"machine": machine_info(), "rows": args.rows, "results": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    try:
        for case in args.cases.split(","):
            t0 = time.perf_counter()
            if case == "same":
                load(url_a, "orders", SAME, args.rows)
                load(url_b, "orders", SAME, args.rows)
                a_table, b_table, view, spec, extra = "orders", "orders", "orders", SAME, ""
            else:
                load(url_a, "legacy_orders", LEGACY, args.rows)
                load(url_b, "orders_new", NEW, args.rows)
                with psycopg.connect(url_a, autocommit=True) as conn:
                    conn.execute(VIEW)
                a_table, b_table, view, spec, extra = (
                    "legacy_orders",
                    "orders_new",
                    "legacy_orders_v",
                    NEW,
                    DECLARED,
                )
            load_s = time.perf_counter() - t0
            config = tmp / f"{case}.toml"
            config.write_text(
                f'name = "bench-{case}"\n[source]\nurl = "{url_a}"\n[target]\nurl = "{url_b}"\n'
                f'[kafka]\nbootstrap_servers = ["{kafka}"]\ntopic_prefix = "bench.reconcile.{case}"\n'
                f'[capture]\nschema = "dw_bench_{case}"\n'
                f'[[tables]]\nsource = "public.{a_table}"\ntarget = "public.{b_table}"\nkey = ["id"]\n{extra}'
            )
            from dualwrite import capture, load_migration, make_engine

            engine = make_engine(load_migration(config).source)
            capture.install(engine, load_migration(config))
            engine.dispose()
            for drift in args.drift.split(","):
                n = int(args.rows * float(drift[:-1]) / 100) if drift.endswith("%") else int(drift)
                ids = random.Random(7).sample(range(1, args.rows + 1), n)
                seeded = seed_drift(url_b, b_table, spec["touch"], ids, args.rows)
                floor_seq, floor_par = copy_floor(url_a, a_table, url_b, b_table)
                ours = run_ours(config, args.workers)
                theirs = (
                    None
                    if args.skip_reladiff
                    else run_reladiff(
                        url_a, view, url_b, b_table, spec["columns"], args.reladiff_threads
                    )
                )
                undo_drift(url_b, b_table, spec["touch"], args.rows)
                found = ours["counts"]
                ok = (found["mismatch"], found["missing"], found["extra"]) == (
                    seeded["mismatch"],
                    seeded["missing"],
                    seeded["extra"],
                )
                rd = theirs["wall_s"] if theirs else None
                rows_out.append(
                    [
                        case,
                        drift,
                        ours["wall_s"],
                        ours["call_s"],
                        rd,
                        floor_seq,
                        floor_par,
                        None if rd is None else rd / ours["wall_s"],
                        ours["wall_s"] / floor_par,
                        ours["wall_s"] / floor_seq,
                        ours["maxrss_mib"],
                        "yes" if ok else f"NO {found}",
                        None if theirs is None else json.dumps(theirs["found"]),
                    ]
                )
                payload["results"].append(
                    {
                        "case": case,
                        "drift": drift,
                        "seeded": seeded,
                        "load_s": load_s,
                        "ours": ours,
                        "reladiff": theirs,
                        "copy_sequential_s": floor_seq,
                        "copy_parallel_s": floor_par,
                    }
                )
                print(
                    f"# {case} {drift}: ours {ours['wall_s']:.2f}s ({ours['methods']}), reladiff "
                    f"{rd if rd is None else round(rd, 2)}s, COPY {floor_seq:.2f}/{floor_par:.2f}s, "
                    f"RSS {ours['maxrss_mib']:.0f} MiB, exact={ok}",
                    flush=True,
                )
    finally:
        if not args.keep:
            for db in (DB_A, DB_B):
                admin(base, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    print_table(
        f"reconcile vs reladiff 0.6.0 (hashdiff) vs COPY floor, {args.rows:,} rows, "
        f"workers {args.workers}, reladiff -j {args.reladiff_threads}",
        [
            "case",
            "drift",
            "ours s",
            "ours call s",
            "reladiff s",
            "COPY seq s",
            "COPY par s",
            "reladiff/ours",
            "ours/COPY par",
            "ours/COPY seq",
            "ours peak RSS MiB",
            "ours exact",
            "reladiff found",
        ],
        rows_out,
    )
    if args.json:
        emit_json(payload)


if __name__ == "__main__":
    main()
