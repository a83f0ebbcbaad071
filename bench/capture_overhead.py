"""Capture overhead: pgbench TPC-B throughput without and with dualwrite's row triggers.

A dedicated database (``bench_pgbench`` by default, dropped and recreated) is initialised with
``pgbench -i -s SCALE``; ``pgbench_history`` gets a primary key (``hid bigserial``) in every
run, since capture needs one, so both sides run on tables of the same shape. Then pgbench runs
``-c 4 -j 2 -T 30 -M prepared -n`` in rounds, each round running every mode once, the order
reversed on odd rounds (A B C | C B A) so that a slow drift of the shared machine cancels out:

* ``none``: no triggers (capture uninstalled);
* ``capture+relay``: capture installed on the four tables and ``dualwrite relay`` running as a
  separate process against a migration file, draining the changelog to Kafka as in
  production (it shares the machine's cores with pgbench, PostgreSQL and Kafka);
* ``capture``: triggers only, no relay: the changelog just grows (the trigger's own cost);
* ``floor-trigger``: an empty PL/pgSQL row trigger (``RETURN NULL``) on the four tables: what
  calling any row trigger costs;
* ``floor-row``: a PL/pgSQL row trigger that writes one row per change and nothing else
  (``INSERT INTO ... (payload) VALUES (NEW::text)`` into a table keyed by an identity
  column): the least any capture that makes each change durable in the writing transaction
  can cost, a trigger or an application's outbox row alike. Capture's loss minus this loss
  is what dualwrite's trigger adds on top of persisting the change at all.

Before each run: capture uninstalled, ``pgbench_history`` truncated, the four tables
vacuumed and analysed, a CHECKPOINT; then capture installed for the capture modes. pgbench
runs with ``-n`` because its own pre-run TRUNCATE of pgbench_history is refused by capture.
After a capture+relay run the relay is stopped (SIGTERM), the rest of the changelog drained
in-process, and the changes captured read from the relay's counters.

Services come from DUALWRITE_SOURCE_URL / DUALWRITE_TARGET_URL / DUALWRITE_KAFKA_BOOTSTRAP
(the benchmark database is created next to the source database); without them the dev stack
is started and stopped around the run.

    .venv/bin/python bench/capture_overhead.py                 # scale 10, 2 rounds of 30 s
    .venv/bin/python bench/capture_overhead.py --scale 1 --seconds 5 --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from _benchlib import emit_json, libpq_url, machine_info, print_table, tool_version
from _capturebench import (
    delete_topics,
    make_config,
    migration_text,
    missing_services,
    proc_cpu_s,
    run_inside_dev_stack,
    service_pids,
    services_cpu_s,
    with_database,
)
from sqlalchemy.engine import make_url

from dualwrite.capture import install, uninstall
from dualwrite.config import MigrationConfig
from dualwrite.db import make_engine
from dualwrite.relay import run_relay

PGBENCH_TABLES = ("pgbench_accounts", "pgbench_tellers", "pgbench_branches", "pgbench_history")
MODES = ("none", "capture+relay", "capture", "floor-trigger", "floor-row")
CAPTURE_SCHEMA = "dualwrite_bench"
FLOOR_SCHEMA = "dualwrite_bench_floor"
FLOOR_BODIES = {
    "floor-trigger": "RETURN NULL;",
    "floor-row": (
        f"INSERT INTO {FLOOR_SCHEMA}.changes (payload) VALUES "
        "(CASE WHEN TG_OP = 'DELETE' THEN OLD::text ELSE NEW::text END); RETURN NULL;"
    ),
}


@dataclass
class Run:
    round: int
    mode: str
    tps: float
    latency_ms: float
    transactions: int
    failed: int = 0
    changes_captured: int | None = None
    max_backlog: int | None = None
    relay_relayed: int | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)
    waits: dict[str, int] = field(default_factory=dict)
    db: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        source_url = os.environ["DUALWRITE_SOURCE_URL"]
        self.admin_url = libpq_url(source_url)
        self.db_url = libpq_url(with_database(source_url, args.database))
        url = make_url(source_url)
        self.pg_env = {
            **os.environ,
            "PGHOST": url.host or "127.0.0.1",
            "PGPORT": str(url.port or 5432),
            "PGUSER": url.username or "",
            "PGPASSWORD": url.password or "",
            "PGDATABASE": args.database,
        }
        self.bootstrap = os.environ["DUALWRITE_KAFKA_BOOTSTRAP"]
        suffix = uuid.uuid4().hex[:8]
        self.topic_prefix = f"bench.capture-overhead.{suffix}"
        self.text = migration_text(
            name="bench-capture-overhead",
            source_url=with_database(source_url, args.database),
            target_url=os.environ["DUALWRITE_TARGET_URL"],
            bootstrap=self.bootstrap,
            topic_prefix=self.topic_prefix,
            capture_schema=CAPTURE_SCHEMA,
            tables=[f"public.{t}" for t in PGBENCH_TABLES],
            batch_size=args.relay_batch_size,
            partitions=args.partitions,
        )
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-capture-overhead-"))
        self.migration_file = self.tmp / "migration.toml"
        self.migration_file.write_text(self.text)
        self.config: MigrationConfig = make_config(self.text, str(self.migration_file))
        self.engine = make_engine(self.config.source)
        self.installed = False
        self.pids = service_pids()

    # --- setup --------------------------------------------------------------------------

    def create_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.args.database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.args.database}"')
        print(f"pgbench -i -s {self.args.scale} ...", file=sys.stderr)
        self.pgbench(["-i", "-q", "-s", str(self.args.scale)])
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")

    def drop_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.args.database}" WITH (FORCE)')

    def pgbench(self, extra: Sequence[str]) -> str:
        result = subprocess.run(
            [self.args.pgbench, *extra],
            env=self.pg_env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pgbench {' '.join(extra)} failed:\n{result.stderr[-2000:]}")
        return result.stdout + result.stderr

    def prepare(self, mode: str) -> None:
        if self.installed:
            uninstall(self.engine, self.config, force=True)
            self.installed = False
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {FLOOR_SCHEMA} CASCADE")  # and its triggers
            conn.execute("TRUNCATE pgbench_history")
            conn.execute(f"VACUUM (ANALYZE) {', '.join(PGBENCH_TABLES)}")
            if mode in FLOOR_BODIES:
                self.install_floor(conn, FLOOR_BODIES[mode])
            conn.execute("CHECKPOINT")
        if mode.startswith("capture"):
            install(self.engine, self.config)
            self.installed = True

    @staticmethod
    def install_floor(conn: psycopg.Connection[Any], body: str) -> None:
        conn.execute(
            f"CREATE SCHEMA {FLOOR_SCHEMA}; "
            f"CREATE TABLE {FLOOR_SCHEMA}.changes ("
            "seq bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY, payload text NOT NULL); "
            f"CREATE FUNCTION {FLOOR_SCHEMA}.floor() RETURNS trigger LANGUAGE plpgsql "
            f"AS $fn$ BEGIN {body} END $fn$"
        )
        for table in PGBENCH_TABLES:
            conn.execute(
                f"CREATE TRIGGER dualwrite_bench_floor AFTER INSERT OR UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {FLOOR_SCHEMA}.floor()"
            )

    # --- one run ------------------------------------------------------------------------

    def run(self, round_no: int, mode: str) -> Run:
        self.prepare(mode)
        relay: subprocess.Popen[str] | None = None
        if mode == "capture+relay":
            relay = self.start_relay()
        sampler = Sampler(self.db_url, backlog=mode.startswith("capture"))
        sampler.start()
        print(f"round {round_no} {mode}: pgbench -T {self.args.seconds} ...", file=sys.stderr)
        db0 = self.db_counters()
        cpu0 = services_cpu_s(self.pids)
        relay_cpu0 = proc_cpu_s(relay.pid) if relay is not None else 0.0
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            out = self.pgbench(
                [
                    "-n",
                    "-M",
                    "prepared",
                    "-c",
                    str(self.args.clients),
                    "-j",
                    str(self.args.threads),
                    "-T",
                    str(self.args.seconds),
                ]
            )
        finally:
            sampler.stop()
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1 = services_cpu_s(self.pids)
        db1 = self.db_counters()
        relay_cpu1 = proc_cpu_s(relay.pid) if relay is not None else 0.0
        run = parse_pgbench(out, round_no, mode)
        run.cpu_s = {name: round(cpu1[name] - cpu0.get(name, 0.0), 2) for name in cpu1}
        run.cpu_s["pgbench"] = round(
            children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime, 2
        )
        if relay is not None:
            run.cpu_s["relay"] = round(relay_cpu1 - relay_cpu0, 2)
        run.db = {k: db1[k] - db0[k] for k in db1}
        run.waits = dict(sorted(sampler.waits.items(), key=lambda kv: -kv[1]))
        if mode.startswith("capture"):
            run.max_backlog = sampler.max_backlog
        if relay is not None:
            run.relay_relayed = self.stop_relay(relay)
            rest = run_relay(self.engine, self.config, until_idle=True)
            run.extra["drained_after_s"] = round(rest.elapsed_s, 2)
            run.extra["drained_after"] = rest.relayed
        if mode.startswith("capture"):
            run.changes_captured = self.changes_captured()
        elif mode == "floor-row":
            with psycopg.connect(self.db_url) as conn:
                row = conn.execute(f"SELECT count(*) FROM {FLOOR_SCHEMA}.changes").fetchone()
            run.changes_captured = int(row[0]) if row else None
        return run

    def start_relay(self) -> subprocess.Popen[str]:
        log = open(self.tmp / "relay.log", "a")  # noqa: SIM115 (the child owns it)
        proc = subprocess.Popen(
            [self.args.dualwrite, "relay", str(self.migration_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                    "WHERE l.locktype = 'advisory' AND l.granted "
                    "AND a.application_name = 'dualwrite-relay' AND a.datname = %s",
                    (self.args.database,),
                ).fetchone()
                if row and row[0]:
                    return proc
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        proc.kill()
        raise RuntimeError(f"the relay did not start; see {self.tmp / 'relay.log'}")

    def stop_relay(self, proc: subprocess.Popen[str]) -> int | None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        text = (self.tmp / "relay.log").read_text()
        found = re.findall(r"relayed (\d+) change", text)
        return int(found[-1]) if found else None

    def db_counters(self) -> dict[str, float]:
        """Cluster-wide WAL counters (pg_stat_wal) and this database's commits."""
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT w.wal_records, w.wal_fpi, w.wal_bytes, w.wal_sync, d.xact_commit, "
                "d.tup_inserted, d.tup_deleted FROM pg_stat_wal w, pg_stat_database d "
                "WHERE d.datname = current_database()"
            ).fetchone()
        assert row is not None
        names = ("wal_records", "wal_fpi", "wal_bytes", "wal_syncs", "commits", "ins", "del")
        return {k: float(v) for k, v in zip(names, row, strict=True)}

    def changes_captured(self) -> int:
        """Everything the triggers wrote in this run: relayed plus still in the changelog."""
        with psycopg.connect(self.db_url) as conn:
            row = conn.execute(
                f"SELECT (SELECT relayed_total FROM {CAPTURE_SCHEMA}.relay_state), "
                f"(SELECT count(*) FROM {CAPTURE_SCHEMA}.changelog)"
            ).fetchone()
        assert row is not None
        return int(row[0]) + int(row[1])

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            if self.installed:
                uninstall(self.engine, self.config, force=True)
        self.engine.dispose()
        delete_topics(self.bootstrap, [self.config.changes_topic])
        with contextlib.suppress(Exception), psycopg.connect(self.db_url, autocommit=True) as c:
            c.execute(f"DROP SCHEMA IF EXISTS {FLOOR_SCHEMA} CASCADE")
        if not self.args.keep_database:
            with contextlib.suppress(Exception):
                self.drop_database()


class Sampler(threading.Thread):
    """Every 0.25 s: what pgbench's backends wait on (pg_stat_activity wait events; "CPU"
    when running) and, with ``backlog``, the changelog's span of sequence numbers (the
    relay's backlog, an upper bound of it)."""

    def __init__(self, url: str, backlog: bool) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.backlog = backlog
        self.max_backlog = 0
        self.waits: dict[str, int] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop_event.wait(0.25):
                for event, n in conn.execute(
                    "SELECT COALESCE(wait_event_type || ':' || wait_event, 'CPU'), count(*) "
                    "FROM pg_stat_activity WHERE application_name = 'pgbench' "
                    "AND state = 'active' GROUP BY 1"
                ).fetchall():
                    self.waits[event] = self.waits.get(event, 0) + int(n)
                if not self.backlog:
                    continue
                row = conn.execute(
                    f"SELECT COALESCE((SELECT max(seq) FROM {CAPTURE_SCHEMA}.changelog), 0) - "
                    f"COALESCE((SELECT min(seq) FROM {CAPTURE_SCHEMA}.changelog), 0)"
                ).fetchone()
                if row is not None:
                    self.max_backlog = max(self.max_backlog, int(row[0]))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def parse_pgbench(out: str, round_no: int, mode: str) -> Run:
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    done = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if not (tps and lat and done):
        raise RuntimeError(f"cannot parse pgbench output:\n{out}")
    return Run(
        round_no,
        mode,
        float(tps.group(1)),
        float(lat.group(1)),
        int(done.group(1)),
        int(failed.group(1)) if failed else 0,
    )


def top_waits(waits: dict[str, int], n: int = 5) -> str:
    total = sum(waits.values()) or 1
    return ", ".join(f"{k} {v / total:.0%}" for k, v in list(waits.items())[:n])


def summarise(runs: Sequence[Run]) -> dict[str, Any]:
    by_mode: dict[str, list[float]] = {}
    for r in runs:
        by_mode.setdefault(r.mode, []).append(r.tps)
    summary: dict[str, Any] = {
        m: {"runs": len(v), "mean_tps": statistics.fmean(v), "median_tps": statistics.median(v)}
        for m, v in by_mode.items()
    }
    base = summary.get("none", {}).get("mean_tps")
    for s in summary.values():
        s["ratio_to_none"] = s["mean_tps"] / base if base else None
        s["tps_loss_pct"] = (1 - s["mean_tps"] / base) * 100 if base else None
    per_change = [
        r.changes_captured / r.transactions for r in runs if r.changes_captured and r.transactions
    ]
    if per_change:
        summary["changes_per_transaction"] = statistics.fmean(per_change)
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s (10 = 1M accounts)")
    p.add_argument("--seconds", type=int, default=30, help="pgbench -T per run (30)")
    p.add_argument("--clients", type=int, default=4, help="pgbench -c (4)")
    p.add_argument("--threads", type=int, default=2, help="pgbench -j (2)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every mode (2)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--relay-batch-size", type=int, default=5000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--database", default="bench_pgbench", help="created and dropped (!)")
    p.add_argument("--keep-database", action="store_true")
    p.add_argument("--pgbench", default="/usr/lib/postgresql/15/bin/pgbench")
    p.add_argument(
        "--dualwrite",
        default=str(Path(sys.executable).with_name("dualwrite")),
        help="the dualwrite CLI that runs the relay",
    )
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if missing_services():
        return run_inside_dev_stack(__file__, sys.argv[1:] if argv is None else list(argv))
    bench = Bench(args)
    runs: list[Run] = []
    t0 = time.perf_counter()
    try:
        bench.create_database()
        for round_no in range(args.rounds):
            order = args.modes if round_no % 2 == 0 else list(reversed(args.modes))
            for mode in order:
                runs.append(bench.run(round_no, mode))
    finally:
        bench.cleanup()
    summary = summarise(runs)
    print_table(
        f"pgbench TPC-B, scale {args.scale}, -c {args.clients} -j {args.threads} "
        f"-T {args.seconds} -M prepared (higher TPS is better)",
        ["round", "mode", "TPS", "latency ms", "transactions", "changes", "max backlog"],
        [
            (
                r.round,
                r.mode,
                r.tps,
                r.latency_ms,
                r.transactions,
                r.changes_captured,
                r.max_backlog,
            )
            for r in runs
        ],
    )
    components = sorted({c for r in runs for c in r.cpu_s})
    print_table(
        "CPU seconds used during each pgbench run (cores busy = CPU s / run s)",
        ["round", "mode", *components, "total", "cores busy"],
        [
            (
                r.round,
                r.mode,
                *[r.cpu_s.get(c) for c in components],
                sum(r.cpu_s.values()),
                sum(r.cpu_s.values()) / args.seconds,
            )
            for r in runs
        ],
    )
    print_table(
        "PostgreSQL during each run: WAL (whole cluster) and commits (benchmark database)",
        [
            "round",
            "mode",
            "commits",
            "WAL syncs",
            "WAL MiB",
            "WAL records",
            "full pages",
            "WAL B / pgbench txn",
        ],
        [
            (
                r.round,
                r.mode,
                int(r.db.get("commits", 0)),
                int(r.db.get("wal_syncs", 0)),
                r.db.get("wal_bytes", 0) / 1024 / 1024,
                int(r.db.get("wal_records", 0)),
                int(r.db.get("wal_fpi", 0)),
                r.db.get("wal_bytes", 0) / max(1, r.transactions),
            )
            for r in runs
        ],
    )
    print_table(
        "What pgbench's backends were doing (share of 4-per-second samples)",
        ["round", "mode", "top wait events"],
        [(r.round, r.mode, top_waits(r.waits)) for r in runs],
    )
    print_table(
        "Summary (ratio = mean TPS / mean TPS without triggers)",
        ["mode", "runs", "mean TPS", "median TPS", "ratio", "TPS loss %"],
        [
            (m, s["runs"], s["mean_tps"], s["median_tps"], s["ratio_to_none"], s["tps_loss_pct"])
            for m, s in summary.items()
            if isinstance(s, dict)
        ],
    )
    if "changes_per_transaction" in summary:
        print(
            f"\nchanges captured per pgbench transaction: {summary['changes_per_transaction']:.3f}"
        )
    m = machine_info()
    print(
        f"machine: {m['nproc']} cores {m['cpu_model']}, load {m['loadavg_1m']:.2f}; "
        f"{tool_version([args.pgbench, '--version'])}; total {time.perf_counter() - t0:.0f}s"
    )
    if args.json:
        emit_json(
            {
                "benchmark": "capture_overhead",
                "machine": m,
                "args": vars(args),
                "runs": [asdict(r) for r in runs],
                "summary": summary,
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
