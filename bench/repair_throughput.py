"""Repair throughput (issue 6): keys re-sent into the changelog per second, against the
floor of the trigger path itself.

A source table of ``--rows`` rows (int key, text, numeric, timestamptz) with trigger capture
installed. For ``--keys`` keys scattered over the table, interleaved ``--repeats`` times:

- baseline: ``UPDATE t SET v = v WHERE id = ANY(batch)`` per ``--batch-keys`` keys, one
  commit per batch: the capture trigger writes one changelog record per key, exactly what a
  repair adds, so this is the cost of "touch every key" done by the application itself;
- repair (present keys): ``reconcile.repair`` of the same keys as ``mismatch`` differences
  (a snapshot image per key under ``FOR SHARE``);
- repair (absent keys): the same number of keys not in the table, as ``extra`` differences
  (delete images, the wait for concurrent transactions, then the check for present rows);
- dry run of the present keys (reads only).

The changelog is emptied between runs (nothing is relayed). Services from
DUALWRITE_SOURCE_URL / _TARGET_URL / _KAFKA_BOOTSTRAP, else the dev stack is started.

    .venv/bin/python bench/repair_throughput.py                    # 200k rows, 20k keys
    .venv/bin/python bench/repair_throughput.py --rows 20000 --keys 2000 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
from _benchlib import emit_json, machine_info, median, print_table, stopwatch
from _capturebench import make_config, migration_text, missing_services, run_inside_dev_stack
from sqlalchemy import create_engine

from dualwrite import capture
from dualwrite.transform import load_transforms
from reconcile import Difference, repair


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--batch-keys", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if missing_services():
        return run_inside_dev_stack(__file__, sys.argv[1:])

    source_url = os.environ["DUALWRITE_SOURCE_URL"]
    schema = f"bench_repair_{uuid.uuid4().hex[:8]}"
    table = f"{schema}.t"
    text = migration_text(
        name="bench-repair",
        source_url=source_url,
        target_url=os.environ["DUALWRITE_TARGET_URL"],
        bootstrap=os.environ["DUALWRITE_KAFKA_BOOTSTRAP"],
        topic_prefix=f"bench.repair.{schema}",
        capture_schema=f"cap_{schema}",
        tables=[table],
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "migration.toml"
        path.write_text(text)
        config = make_config(text, str(path))
        engine = create_engine(source_url)
        libpq = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
            conn.execute(
                f'CREATE TABLE "{schema}".t (id int PRIMARY KEY, v text, amount numeric(12,2), ts timestamptz)'
            )
            conn.execute(
                f'INSERT INTO "{schema}".t SELECT g, md5(g::text), g / 7.0, '
                f"timestamptz '2024-01-01' + g * interval '1 s' FROM generate_series(1, {args.rows}) g"
            )
            conn.execute(f'VACUUM ANALYZE "{schema}".t')
        capture.install(engine, config)
        transforms = load_transforms(config)
        rng = random.Random(6)
        present = rng.sample(range(1, args.rows + 1), args.keys)
        absent = [args.rows + 1 + i * 3 for i in range(args.keys)]
        target = f"{schema}.t"
        mismatch = [Difference(target, f"[{k}]", "mismatch") for k in present]
        extra = [Difference(target, f"[{k}]", "extra") for k in absent]
        changelog = f'"cap_{schema}".changelog'
        times: dict[str, list[float]] = {
            "baseline: UPDATE (trigger)": [],
            "repair: present keys": [],
            "repair: absent keys": [],
            "repair --dry-run": [],
        }

        def clear() -> None:
            with psycopg.connect(libpq, autocommit=True) as conn:
                conn.execute(f"DELETE FROM {changelog}")
                conn.execute(f"VACUUM {changelog}")

        def count() -> int:
            with psycopg.connect(libpq) as conn:
                row = conn.execute(f"SELECT count(*) FROM {changelog}").fetchone()
                return int(row[0]) if row else 0

        try:
            for _ in range(args.repeats):
                clear()
                with psycopg.connect(libpq) as conn, stopwatch() as t:
                    for i in range(0, len(present), args.batch_keys):
                        conn.execute(
                            f'UPDATE "{schema}".t SET v = v WHERE id = ANY(%s)',
                            (present[i : i + args.batch_keys],),
                        )
                        conn.commit()
                times["baseline: UPDATE (trigger)"].append(t[0])
                assert count() == args.keys
                clear()
                with stopwatch() as t:
                    r = repair(engine, config, transforms, mismatch, batch_keys=args.batch_keys)
                times["repair: present keys"].append(t[0])
                assert r.snapshots == args.keys and count() == args.keys, r
                clear()
                with stopwatch() as t:
                    r = repair(engine, config, transforms, extra, batch_keys=args.batch_keys)
                times["repair: absent keys"].append(t[0])
                assert r.deletes == args.keys and count() == args.keys, r
                clear()
                with stopwatch() as t:
                    repair(
                        engine,
                        config,
                        transforms,
                        mismatch,
                        batch_keys=args.batch_keys,
                        dry_run=True,
                    )
                times["repair --dry-run"].append(t[0])
        finally:
            capture.uninstall(engine, config, force=True)
            with psycopg.connect(libpq, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            engine.dispose()

    base = median(times["baseline: UPDATE (trigger)"])
    rows = [
        [name, median(ts), args.keys / median(ts), median(ts) / base] for name, ts in times.items()
    ]
    print_table(
        f"repair of {args.keys:,} keys of a {args.rows:,}-row table, {args.batch_keys} keys per "
        f"transaction, median of {args.repeats}",
        ["method", "seconds", "keys/s", "x baseline time"],
        rows,
    )
    if args.json:
        emit_json({"machine": machine_info(), "args": vars(args), "times": times})
    return 0


if __name__ == "__main__":
    sys.exit(main())
