"""End-to-end lag on the shop example: source commit -> target commit, per change, while a
writer runs at a steady rate with the relay and a worker running beside it.

Set-up: the shop example's legacy schema under a unique name on the source with capture
installed, seeded with ``examples.shop.workload.seed`` (``--seed-customers``), the shop
target schema on the target; the relay (``dualwrite relay FILE``) and one worker
(bench/_worker_child.py in ``e2e`` mode, ``run_worker`` with the default batch size 2000 and
linger 100 ms) run as subprocesses and first drain the seed.

Then, for each rate of ``--rates`` (highest first), ``--writers`` writer threads in this
process (one connection each, disjoint key ranges, the rate split evenly) commit
transactions of ``--tx-changes`` row changes each (inserts of customers, their profiles and
orders, updates of customers / orders / profiles, deletes of orders it inserted earlier:
one statement of data-modifying CTEs in autocommit mode, exact row counts) on a fixed
schedule for ``--duration`` seconds (it stops at the end of the period even when it fell
behind). For every transaction it records its ``pg_current_xact_id()`` and the wall time
right after the statement (hence the COMMIT) returned. The worker child writes, after each
batch's target commit, the wall time and the transaction ids in the batch (with their event
counts and newest Kafka timestamp).
Lag of a change = target commit time of its batch - commit time of its source transaction;
the Kafka timestamp (set by the relay's producer) splits it into relay and worker parts.

A rate counts as sustained when the writer kept to its schedule (>= 97 % of the rate), every
change arrived, and the median lag of the changes written in the last fifth of the phase is
at most ``--steady-p50-s`` (1 s): no backlog building up. By default the sweep stops at the
first sustained rate.

Services come from DUALWRITE_SOURCE_URL / DUALWRITE_TARGET_URL / DUALWRITE_KAFKA_BOOTSTRAP;
without them the dev stack is started and stopped around the run. Schemas, topics and the
consumer group have unique names and are removed at the end.

    .venv/bin/python bench/e2e_lag.py --all-rates                  # 8 rates, 45 s each
    .venv/bin/python bench/e2e_lag.py --rates 1000 --duration 10 --seed-customers 2000
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from _benchlib import emit_json, libpq_url, machine_info, print_table, stopwatch
from _capturebench import (
    delete_topics,
    make_config,
    missing_services,
    percentile,
    proc_cpu_s,
    run_inside_dev_stack,
    service_pids,
    services_cpu_s,
)
from _shopbench import (
    REPO,
    ShopNames,
    child_argv,
    drop_source,
    drop_target,
    env_urls,
    migration_text,
    repo_on_path,
    reset_group,
    split,
)
from psycopg import sql

repo_on_path()

from dualwrite.capture import install  # noqa: E402
from dualwrite.db import make_engine  # noqa: E402
from examples.shop.workload import install_new_schema, install_old_schema, seed  # noqa: E402

# Share of each operation in a transaction's row changes.
MIX = {
    "insert_customers": 2,
    "insert_profiles": 2,
    "insert_orders": 4,
    "update_customers": 3,
    "update_orders": 6,
    "update_profiles": 2,
    "delete_orders": 1,
}

BERLIN_NOW = "(now() AT TIME ZONE 'Europe/Berlin')"


WRITE_SQL = """
WITH c AS (
    INSERT INTO {s}.customers (first_name, last_name, email, phone, street, city, zip, country,
                               created_at, updated_at)
    SELECT 'Bench', 'Writer ' || g, ' Writer.' || g || '@Example.COM', '030/' || g,
           'Hauptstraße ' || g, 'Berlin', '10115', 'de ', {now}, {now}
    FROM generate_series(1, %(n_c)s) AS g
    RETURNING id
), p AS (
    INSERT INTO {s}.customer_profiles (customer_id, loyalty_tier, marketing_opt_in)
    SELECT id, 'gold', true FROM c ORDER BY id LIMIT %(n_p)s
    RETURNING 1
), o AS (
    INSERT INTO {s}.orders (customer_id, amount_cents, currency, status, placed_at)
    SELECT c.id, 1999, 'eur', 'Pending', {now}
    FROM c CROSS JOIN generate_series(1, %(per)s) LIMIT %(n_o)s
    RETURNING id
), uc AS (
    UPDATE {s}.customers SET email = ' Upd.' || id || '@Example.COM', updated_at = {now}
    WHERE id = ANY(%(uc)s) RETURNING 1
), uo AS (
    UPDATE {s}.orders SET amount_cents = amount_cents + 1,
           status = (ARRAY['pending', 'Shipped ', 'CANCELLED'])[1 + mod(id, 3)::int]
    WHERE id = ANY(%(uo)s) RETURNING 1
), up AS (
    UPDATE {s}.customer_profiles SET marketing_opt_in = NOT marketing_opt_in,
           loyalty_tier = 'silver'
    WHERE customer_id = ANY(%(up)s) RETURNING 1
), d AS (
    DELETE FROM {s}.orders WHERE id = ANY(%(d)s) RETURNING 1
)
SELECT pg_current_xact_id()::text,
       (SELECT array_agg(id) FROM c),
       (SELECT array_agg(id) FROM o),
       (SELECT count(*) FROM p) + (SELECT count(*) FROM uc) + (SELECT count(*) FROM uo)
       + (SELECT count(*) FROM up) + (SELECT count(*) FROM d)
"""
"""One source transaction: one statement in autocommit mode (data-modifying CTEs), so the
writer needs one round trip per transaction. The row triggers capture every row change."""


@dataclass
class Tx:
    txid: str
    committed: float  # time.time() right after the transaction's statement returned
    changes: int


@dataclass
class Writer:
    """Commits transactions of exact row-change counts on the shop's legacy tables."""

    conn: psycopg.Connection[Any]  # autocommit
    schema: str
    customer_ids: int  # seeded customers 1..n (never deleted)
    order_ids: int  # seeded orders 1..n (never deleted)
    profile_ids: list[int]  # customers with a profile
    part: int = 0  # writer ``part`` of ``parts`` touches only ids with id % parts == part,
    parts: int = 1  # so concurrent writers never wait for each other's row locks
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    new_orders: collections.deque[int] = field(default_factory=collections.deque)

    def __post_init__(self) -> None:
        self.statement = sql.SQL(WRITE_SQL).format(  # type: ignore[arg-type]
            s=sql.Identifier(self.schema), now=sql.SQL(BERLIN_NOW)
        )
        self.rng = random.Random(7 + self.part)
        self.customer_pool = range(1 + self.part, self.customer_ids + 1, self.parts)
        self.order_pool = range(1 + self.part, self.order_ids + 1, self.parts)
        self.profile_pool = [i for i in self.profile_ids if i % self.parts == self.part]

    def transaction(self, changes: int) -> Tx:
        counts = split(changes, MIX)
        # deletes need orders this writer inserted earlier; otherwise update instead
        deletes = min(counts["delete_orders"], len(self.new_orders))
        counts["update_orders"] += counts["delete_orders"] - deletes
        n_c = counts["insert_customers"]
        params = {
            "n_c": n_c,
            "n_p": counts["insert_profiles"],
            "n_o": counts["insert_orders"],
            "per": -(-counts["insert_orders"] // n_c),
            "uc": self.rng.sample(self.customer_pool, counts["update_customers"]),
            "uo": self.rng.sample(self.order_pool, counts["update_orders"]),
            "up": self.rng.sample(self.profile_pool, counts["update_profiles"]),
            "d": [self.new_orders.popleft() for _ in range(deletes)],
        }
        row = self.conn.execute(self.statement, params).fetchone()
        committed = time.time()
        assert row is not None
        txid, customers, orders, others = row
        self.new_orders.extend(orders or [])
        done = len(customers or []) + len(orders or []) + int(others)
        return Tx(txid, committed, done)


def cpu_snapshot(services: dict[str, int], procs: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of the services (process trees), the relay and worker processes, and
    this process (the writer; its own usage only, not its children's)."""
    out = services_cpu_s(services)
    out.update({name: proc_cpu_s(pid) for name, pid in procs.items()})
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["writer"] = usage.ru_utime + usage.ru_stime
    return out


class BatchLog:
    """Reads the worker child's per-batch lines as they are appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        # txid -> [(target commit time, events, newest Kafka timestamp ms, poll return time)]
        self.seen: dict[str, list[tuple[float, int, int, float]]] = collections.defaultdict(list)
        self.events = 0
        self.batches: list[tuple[float, int]] = []

    def read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            rec = json.loads(line)
            self.events += rec["n"]
            self.batches.append((rec["t"], rec["n"]))
            for txid, (count, ts_ms) in rec["tx"].items():
                self.seen[txid].append((rec["t"], count, ts_ms, rec.get("tp", rec["t"])))

    def wait_events(self, total: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.read()
            if self.events >= total:
                return True
            time.sleep(0.2)
        return False

    def arrived(self, txs: Sequence[Tx]) -> int:
        return sum(min(tx.changes, sum(e[1] for e in self.seen.get(tx.txid, ()))) for tx in txs)


def phase_stats(txs: list[Tx], log: BatchLog, duration: float) -> dict[str, Any]:
    lags: list[float] = []
    relay: list[float] = []
    worker: list[float] = []
    fetch: list[float] = []
    apply: list[float] = []
    tail_lags: list[float] = []
    t_start = txs[0].committed if txs else 0.0
    tail_from = t_start + duration * 0.8
    per_second: dict[int, list[float]] = collections.defaultdict(list)
    for tx in txs:
        for t, count, ts_ms, tp in log.seen.get(tx.txid, ()):
            lag = t - tx.committed
            lags.extend([lag] * count)
            relay.extend([ts_ms / 1000 - tx.committed] * count)
            worker.extend([t - ts_ms / 1000] * count)
            fetch.extend([tp - ts_ms / 1000] * count)
            apply.extend([t - tp] * count)
            per_second[int(tx.committed - t_start)].extend([lag] * count)
            if tx.committed >= tail_from:
                tail_lags.extend([lag] * count)
    lags.sort()
    relay.sort()
    worker.sort()
    fetch.sort()
    apply.sort()
    tail_lags.sort()

    def q(values: list[float], p: float) -> float | None:
        return round(percentile(values, p), 3) if values else None

    return {
        "changes_lagged": len(lags),
        "p50_s": q(lags, 50),
        "p95_s": q(lags, 95),
        "p99_s": q(lags, 99),
        "max_s": round(lags[-1], 3) if lags else None,
        "relay_p50_s": q(relay, 50),
        "relay_p99_s": q(relay, 99),
        "worker_p50_s": q(worker, 50),
        "worker_p99_s": q(worker, 99),
        "kafka_to_polled_p50_s": q(fetch, 50),
        "kafka_to_polled_p99_s": q(fetch, 99),
        "polled_to_commit_p50_s": q(apply, 50),
        "polled_to_commit_p99_s": q(apply, 99),
        "tail_p50_s": q(tail_lags, 50),
        "per_second_p99_s": {
            s: round(percentile(sorted(v), 99), 3) for s, v in sorted(per_second.items())
        },
    }


def write_on_schedule(
    writer: Writer, rate: float, tx_changes: int, duration: float, start: float, out: list[Any]
) -> None:
    """Commit transactions at ``rate`` changes/s from ``start`` for ``duration`` seconds;
    appends the transactions, then the largest delay behind schedule, to ``out``."""
    interval = tx_changes / rate
    behind = 0.0
    i = 0
    txs: list[Tx] = []
    while True:
        due = start + i * interval
        now = time.monotonic()
        if now - start >= duration or due - start >= duration:
            break
        if due > now:
            time.sleep(due - now)
        else:
            behind = max(behind, now - due)
        txs.append(writer.transaction(tx_changes))
        i += 1
    out.append((txs, behind))


def run_phase(
    writers: list[Writer],
    log: BatchLog,
    rate: float,
    args: argparse.Namespace,
    services: dict[str, int],
    procs: dict[str, int],
) -> dict[str, Any]:
    log.read()
    events_before = log.events
    cpu0 = cpu_snapshot(services, procs)
    load = os.getloadavg()[0]
    print(f"writer at {rate:,.0f} changes/s for {args.duration} s ...", file=sys.stderr)
    t0 = time.monotonic()
    share = rate / len(writers)
    results: list[Any] = []
    threads = [
        threading.Thread(
            target=write_on_schedule,
            args=(
                w,
                share,
                args.tx_changes,
                args.duration,
                t0 + k / len(writers) * args.tx_changes / share,
                results,
            ),
        )
        for k, w in enumerate(writers)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    write_s = time.monotonic() - t0
    txs = sorted((tx for got, _b in results for tx in got), key=lambda tx: tx.committed)
    behind = max(b for _got, b in results)
    written = sum(tx.changes for tx in txs)
    with stopwatch() as t:
        complete = log.wait_events(events_before + written, args.drain_timeout_s)
    cpu1 = cpu_snapshot(services, procs)
    stats = phase_stats(txs, log, args.duration)
    achieved = written / write_s
    sustained = (
        complete
        and achieved >= 0.97 * rate
        and stats["tail_p50_s"] is not None
        and stats["tail_p50_s"] <= args.steady_p50_s
    )
    return {
        "rate": rate,
        "transactions": len(txs),
        "changes": written,
        "write_s": round(write_s, 2),
        "achieved_per_s": round(achieved, 1),
        "writer_max_behind_s": round(behind, 3),
        "drain_after_stop_s": round(t[0], 2),
        "all_arrived": complete,
        "arrived": log.arrived(txs),
        "sustained": sustained,
        "loadavg_1m": load,
        "cpu_s": {k: round(cpu1[k] - cpu0.get(k, 0.0), 1) for k in cpu1},
        **stats,
    }


def diagnose(proc: subprocess.Popen[str], outdir: Path) -> str:
    """The worker's state when it did not drain: its exit code, or a py-spy dump of its
    threads written to ``worker-stuck.txt``."""
    code = proc.poll()
    if code is not None:
        return f"exited with code {code} (see worker.log)"
    spy = Path(sys.executable).parent / "py-spy"
    dump = subprocess.run(
        [str(spy), "dump", "--pid", str(proc.pid)], capture_output=True, text=True, check=False
    )
    (outdir / "worker-stuck.txt").write_text(dump.stdout + dump.stderr)
    return "alive; its stacks are in worker-stuck.txt"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--rates", type=float, nargs="+", default=[5000, 3000, 2000, 1500, 1000, 750, 500, 250]
    )
    p.add_argument("--all-rates", action="store_true", help="do not stop at the first sustained")
    p.add_argument("--duration", type=float, default=45.0, help="seconds per rate (45)")
    p.add_argument("--tx-changes", type=int, default=20, help="row changes per transaction")
    p.add_argument(
        "--writers", type=int, default=4, help="concurrent writer connections (threads), 4"
    )
    p.add_argument("--seed-customers", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=2000, help="worker batch size")
    p.add_argument("--linger-ms", type=int, default=100, help="worker linger")
    p.add_argument("--steady-p50-s", type=float, default=1.0)
    p.add_argument("--target-p99-s", type=float, default=1.0)
    p.add_argument("--drain-timeout-s", type=float, default=300.0)
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tx_changes < 10:
        parser_error = "--tx-changes must be 10 or more (each transaction inserts a customer)"
        raise SystemExit(parser_error)
    if missing_services():
        return run_inside_dev_stack(__file__, sys.argv[1:] if argv is None else list(argv))
    src_url, tgt_url, bootstrap = env_urls()
    names = ShopNames.new("e2e")
    schema = names.target_schema()
    outdir = REPO / "bench" / "out" / f"e2e_lag-{names.tag}"
    outdir.mkdir(parents=True, exist_ok=True)
    text = migration_text(
        names, target_schema=schema, source_url=src_url, target_url=tgt_url, bootstrap=bootstrap
    )
    migration = outdir / "migration.toml"
    migration.write_text(text)
    config = make_config(text)
    src_engine = make_engine(config.source)
    tgt_engine = make_engine(config.target)
    info: dict[str, Any] = {"machine": machine_info(), "tag": names.tag, "args": vars(args)}
    procs: dict[str, subprocess.Popen[str]] = {}
    started = time.perf_counter()
    phases: list[dict[str, Any]] = []
    try:
        install_old_schema(src_engine, names.source_schema)
        install(src_engine, config)
        install_new_schema(tgt_engine, schema)
        print(f"seeding {args.seed_customers:,} customers (captured) ...", file=sys.stderr)
        seeded = seed(src_engine, args.seed_customers, schema=names.source_schema, rng_seed=5)
        info["seed"] = {"customers": seeded.customers, "orders": seeded.orders, "rows": seeded.rows}
        batches = outdir / "batches.jsonl"
        dualwrite = str(Path(sys.executable).parent / "dualwrite")
        procs["relay"] = subprocess.Popen(
            [dualwrite, "relay", str(migration)],
            cwd=REPO,
            stdout=(outdir / "relay.out").open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs["worker"] = subprocess.Popen(
            child_argv(
                migration,
                batch_size=args.batch_size,
                linger_ms=args.linger_ms,
                mode="e2e",
                out=batches,
            ),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=(outdir / "worker.log").open("w"),
            text=True,
        )
        log = BatchLog(batches)
        print(f"draining the seed ({seeded.rows:,} changes) ...", file=sys.stderr)
        with stopwatch() as t:
            if not log.wait_events(seeded.rows, args.drain_timeout_s):
                worker_state = diagnose(procs["worker"], outdir)
                raise RuntimeError(
                    f"seed not drained: {log.events} of {seeded.rows} events; worker {worker_state}"
                )
        info["seed"]["drain_s"] = round(t[0], 1)
        conns = [psycopg.connect(libpq_url(src_url), autocommit=True) for _ in range(args.writers)]
        with contextlib.ExitStack() as stack:
            for conn in conns:
                stack.enter_context(conn)
            profile_ids = [
                r[0]
                for r in conns[0].execute(
                    sql.SQL("SELECT customer_id FROM {}").format(
                        sql.Identifier(names.source_schema, "customer_profiles")
                    )
                )
            ]
            writers = [
                Writer(
                    conn,
                    names.source_schema,
                    seeded.customers,
                    seeded.orders,
                    profile_ids,
                    part=k,
                    parts=len(conns),
                )
                for k, conn in enumerate(conns)
            ]
            services = service_pids()
            children = {name: p.pid for name, p in procs.items()}
            time.sleep(2)
            for rate in sorted(args.rates, reverse=True):
                phase = run_phase(writers, log, rate, args, services, children)
                phases.append(phase)
                print(
                    f"  {rate:,.0f}/s: achieved {phase['achieved_per_s']:,.0f}/s, "
                    f"p50 {phase['p50_s']} p99 {phase['p99_s']} max {phase['max_s']} s, "
                    f"sustained {phase['sustained']}",
                    file=sys.stderr,
                )
                if phase["sustained"] and not args.all_rates:
                    break
                time.sleep(3)
        info["phases"] = phases
        worker = procs.pop("worker")
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=120)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        info["worker"] = json.loads(lines[-1]) if lines else {}
    finally:
        for name, proc in procs.items():
            with contextlib.suppress(Exception):
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            if proc.poll() is None:
                proc.kill()
            print(f"stopped {name}", file=sys.stderr)
        with contextlib.suppress(Exception):
            drop_target(tgt_url, schema, names.source_schema)
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
    phases = info["phases"]
    print(
        f"\nseed: {info['seed']}; {args.writers} writers, {args.tx_changes} changes per "
        f"transaction; worker batch "
        f"{args.batch_size}, linger {args.linger_ms} ms"
    )
    print_table(
        "End-to-end lag, source COMMIT -> target COMMIT of the change's batch (seconds)",
        [
            "rate", "achieved/s", "changes", "p50", "p95", "p99", "max", "relay p50",
            "relay p99", "worker p50", "worker p99", "last-fifth p50", "drain after stop s",
            "sustained", "load",
        ],
        [
            (
                p["rate"], p["achieved_per_s"], p["changes"], p["p50_s"], p["p95_s"],
                p["p99_s"], p["max_s"], p["relay_p50_s"], p["relay_p99_s"], p["worker_p50_s"],
                p["worker_p99_s"], p["tail_p50_s"], p["drain_after_stop_s"], p["sustained"],
                p["loadavg_1m"],
            )
            for p in phases
        ],
    )  # fmt: skip
    print_table(
        "Worker part split: Kafka append -> poll returned (fetch + linger) and poll returned -> "
        "target COMMIT (decode, transform, apply)",
        ["rate", "fetch p50", "fetch p99", "process p50", "process p99"],
        [
            (
                p["rate"],
                p["kafka_to_polled_p50_s"],
                p["kafka_to_polled_p99_s"],
                p["polled_to_commit_p50_s"],
                p["polled_to_commit_p99_s"],
            )
            for p in phases
        ],
    )
    print_table(
        "CPU seconds per phase",
        ["rate", *(sorted(phases[0]["cpu_s"]) if phases else [])],
        [(p["rate"], *(p["cpu_s"][k] for k in sorted(p["cpu_s"]))) for p in phases],
    )
    w = info.get("worker", {})
    print(
        f"\nworker: {w.get('consumed')} events in {w.get('batches')} batches, peak RSS "
        f"{w.get('ru_maxrss_mib')} MiB, CPU {w.get('cpu_user_s')} + {w.get('cpu_sys_s')} s"
    )
    best = [p for p in phases if p["sustained"]]
    if best:
        b = max(best, key=lambda p: p["rate"])
        ok = b["p99_s"] is not None and b["p99_s"] <= args.target_p99_s
        print(
            f"highest sustained rate {b['rate']:,.0f}/s: p99 {b['p99_s']} s "
            f"(target <= {args.target_p99_s} s: {'met' if ok else 'MISSED'})"
        )
    else:
        print("no rate was sustained")
    m = info["machine"]
    print(
        f"machine: {m['nproc']} cores {m['cpu_model']}, load {m['loadavg_1m']:.2f}; "
        f"total {info['total_s']} s"
    )
    if args.json:
        emit_json({"benchmark": "e2e_lag", **info})


if __name__ == "__main__":
    sys.exit(main())
