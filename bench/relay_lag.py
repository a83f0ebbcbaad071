"""Relay lag: time from a change's source COMMIT to its Kafka acknowledgement, at a steady rate.

Three processes, so that none of them takes the others' Python GIL:

* a writer process paces ``--rate`` changes/s (default 2,000: every 100 ms, 20 transactions
  of 10 rows, spread over 2 connections, 80% inserts of new rows and 20% updates of rows it
  inserted earlier) into a captured table of realistic shape for ``--seconds`` (60). Every
  change carries a unique token in its ``note`` column; right after ``COMMIT`` returns the
  writer records the wall-clock time for every token of that transaction (commit time);
* this process runs ``run_relay`` (not until-idle; stopped with its ``stop`` event at the end)
  with the migration's relay settings (batch_size 5000, idle_poll_ms 50 unless changed) and a
  producer wrapper that adds a callback to every send: kafka-python calls it in its I/O thread
  when the broker's acknowledgement (acks=all) arrives, and it records that time (ack time).
  ``on_batch``, called after the relay committed the DELETE of a batch, gives a second time
  per change (batch committed, when the change is gone from the changelog);
* a consumer process reads the topic and records when each token arrives (end to end).

Lag per change = ack time - commit time (the figure the target is about), and likewise for
"relay batch committed" and "consumer received". All clocks are the same machine's
``time.time()``.

Services come from DUALWRITE_SOURCE_URL / DUALWRITE_TARGET_URL / DUALWRITE_KAFKA_BOOTSTRAP;
without them the dev stack is started and stopped around the run. The table, capture schema
and topic have unique names and are removed at the end.

    .venv/bin/python bench/relay_lag.py                       # 2,000 changes/s for 60 s
    .venv/bin/python bench/relay_lag.py --seconds 10 --rate 500
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import re
import resource
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from _benchlib import emit_json, libpq_url, machine_info, print_table, table_ddl
from _capturebench import (
    delete_topics,
    make_config,
    migration_text,
    missing_services,
    percentile,
    run_inside_dev_stack,
)

from dualwrite.capture import install, uninstall
from dualwrite.config import MigrationConfig
from dualwrite.db import make_engine
from dualwrite.kafka_io import Producer, ensure_topic
from dualwrite.relay import relay_metrics, run_relay

TOKEN = re.compile(rb'"note":"chg:(\d+) ')

# --- writer process --------------------------------------------------------------------------


@dataclass(frozen=True)
class WriterPlan:
    url: str
    table: str
    seconds: float
    tick_s: float
    connections: int
    txns_per_tick: int  # over all connections
    rows_per_txn: int
    update_share: float
    start_at: float  # time.time() of the first tick
    out: str


def writer_main(plan: WriterPlan) -> None:
    results: list[dict[str, Any]] = [{} for _ in range(plan.connections)]
    threads = [
        threading.Thread(target=writer_thread, args=(plan, i, results[i]), daemon=True)
        for i in range(plan.connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    commits: dict[str, float] = {}
    late: list[float] = []
    kinds = {"insert": 0, "update": 0}
    for r in results:
        commits.update(r["commits"])
        late += r["late"]
        for k in kinds:
            kinds[k] += r[k]
    Path(plan.out).write_text(json.dumps({"commits": commits, "late": late, **kinds}))


def writer_thread(plan: WriterPlan, index: int, out: dict[str, Any]) -> None:
    """Connection ``index``: its share of the transactions of every tick, paced by the clock."""
    n_conn = plan.connections
    txns = plan.txns_per_tick // n_conn + (1 if index < plan.txns_per_tick % n_conn else 0)
    n_updates = round(plan.rows_per_txn * plan.update_share)
    n_inserts = plan.rows_per_txn - n_updates
    commits: dict[str, float] = {}
    late: list[float] = []
    inserted: list[int] = []
    counts = {"insert": 0, "update": 0}
    next_id = index + 1  # ids index+1, index+1+n_conn, ... never collide between threads
    token = index
    filler = "x" * 60
    insert_sql = (
        f"INSERT INTO {plan.table} (id, email, full_name, status, note, amount, updated_at) "
        "VALUES (%s, %s, %s, 'active', %s, %s, now())"
    )
    update_sql = (
        f"UPDATE {plan.table} SET note = %s, amount = amount + 1, updated_at = now() WHERE id = %s"
    )
    ticks = int(plan.seconds / plan.tick_s)
    with psycopg.connect(plan.url) as conn:
        for tick in range(ticks):
            due = plan.start_at + tick * plan.tick_s
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            else:
                late.append(-delay)
            for _ in range(txns):
                tokens: list[str] = []
                rows = []
                for _ in range(n_inserts):
                    tokens.append(str(token))
                    rows.append(
                        (
                            next_id,
                            f"user{next_id}@example.com",
                            f"Name{next_id % 9973} Surname{next_id % 7919}",
                            f"chg:{token} {filler}",
                            next_id % 100000 / 100,
                        )
                    )
                    inserted.append(next_id)
                    next_id += n_conn
                    token += n_conn
                updates = []
                for j in range(n_updates if len(inserted) > 4 * n_updates else 0):
                    tokens.append(str(token))
                    updates.append((f"chg:{token} {filler}", inserted[-(n_inserts + 1 + 7 * j)]))
                    token += n_conn
                with conn.cursor() as cur:
                    cur.executemany(insert_sql, rows)
                    if updates:
                        cur.executemany(update_sql, updates)
                conn.commit()
                now = time.time()
                for t in tokens:
                    commits[t] = now
                counts["insert"] += len(rows)
                counts["update"] += len(updates)
    out.update(commits=commits, late=late, **counts)


# --- consumer process ------------------------------------------------------------------------


def consumer_main(bootstrap: str, topic: str, ready: Any, stop: Any, out: str) -> None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","), enable_auto_commit=False, fetch_max_wait_ms=10
    )
    received: dict[str, float] = {}
    unparsed = 0
    try:
        parts = None
        while not parts:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.1)
        assigned = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        consumer.poll(timeout_ms=100)
        ready.set()
        idle_since: float | None = None
        while True:
            batches = consumer.poll(timeout_ms=50)
            now = time.time()
            if batches:
                idle_since = None
            elif stop.is_set():
                idle_since = idle_since or now
                if now - idle_since > 2.0:
                    break
            for records in batches.values():
                for record in records:
                    match = TOKEN.search(record.value or b"")
                    if match is None:
                        unparsed += 1
                    else:
                        received.setdefault(match.group(1).decode(), now)
    finally:
        consumer.close()
    Path(out).write_text(json.dumps({"received": received, "unparsed": unparsed}))


# --- relay (this process) --------------------------------------------------------------------


class AckTimingProducer(Producer):
    """Records, for every record, when kafka-python saw the broker's acknowledgement, and the
    number of the relay batch it belongs to."""

    def __init__(self, bootstrap: Sequence[str]) -> None:
        super().__init__(bootstrap, client_id="bench-relay-lag")
        self.acks: list[tuple[bytes, float]] = []
        self.sent: list[tuple[bytes, int]] = []
        self.batch_no = 0

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> Any:
        future = super().send(topic, key, value)
        self.sent.append((value or b"", self.batch_no))
        future.add_callback(self._acked, value or b"")
        return future

    def _acked(self, value: bytes, _metadata: Any) -> None:
        self.acks.append((value, time.time()))


def summarise(name: str, lags_ms: list[float]) -> dict[str, Any]:
    lags_ms.sort()
    return {
        "what": name,
        "n": len(lags_ms),
        "p50_ms": percentile(lags_ms, 50),
        "p95_ms": percentile(lags_ms, 95),
        "p99_ms": percentile(lags_ms, 99),
        "max_ms": lags_ms[-1] if lags_ms else float("nan"),
        "min_ms": lags_ms[0] if lags_ms else float("nan"),
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        suffix = uuid.uuid4().hex[:8]
        self.table = f"public.bench_lag_{suffix}"  # qualified: a `dualwrite` schema on the source would catch "$user"
        self.bootstrap = os.environ["DUALWRITE_KAFKA_BOOTSTRAP"]
        self.url = libpq_url(os.environ["DUALWRITE_SOURCE_URL"])
        self.config: MigrationConfig = make_config(
            migration_text(
                name="bench-relay-lag",
                source_url=os.environ["DUALWRITE_SOURCE_URL"],
                target_url=os.environ["DUALWRITE_TARGET_URL"],
                bootstrap=self.bootstrap,
                topic_prefix=f"bench.relay-lag.{suffix}",
                capture_schema=f"bench_lag_cap_{suffix}",
                tables=[self.table],
                batch_size=args.relay_batch_size,
                idle_poll_ms=args.idle_poll_ms,
                partitions=args.partitions,
            )
        )
        self.engine = make_engine(self.config.source)
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-relay-lag-"))
        self.installed = False

    def run(self) -> dict[str, Any]:
        args = self.args
        with psycopg.connect(self.url) as conn:
            conn.execute(table_ddl(self.table))
        install(self.engine, self.config)
        self.installed = True
        ensure_topic(
            [self.bootstrap],
            self.config.changes_topic,
            partitions=self.config.relay.topic_partitions,
        )
        ctx = mp.get_context("spawn")
        ready, consumer_stop = ctx.Event(), ctx.Event()
        consumer_out = str(self.tmp / "consumer.json")
        consumer = ctx.Process(
            target=consumer_main,
            args=(self.bootstrap, self.config.changes_topic, ready, consumer_stop, consumer_out),
        )
        consumer.start()

        holder: list[AckTimingProducer] = []
        batch_times: list[float] = []

        def factory() -> Producer:
            producer = AckTimingProducer([self.bootstrap])
            holder.append(producer)
            return producer

        def on_batch(_n: int) -> None:
            batch_times.append(time.time())
            holder[-1].batch_no += 1

        stop = threading.Event()
        metrics = relay_metrics()
        result: list[Any] = []
        relay = threading.Thread(
            target=lambda: result.append(
                run_relay(
                    self.engine,
                    self.config,
                    stop=stop,
                    metrics=metrics,
                    producer_factory=factory,
                    on_batch=on_batch,
                )
            ),
            daemon=True,
        )
        relay.start()
        if not ready.wait(60):
            raise RuntimeError("the consumer did not start")
        while not holder:
            time.sleep(0.05)

        total_rate = args.rate
        txns_per_tick = round(total_rate * args.tick_ms / 1000 / args.rows_per_txn)
        plan = WriterPlan(
            url=self.url,
            table=self.table,
            seconds=args.seconds,
            tick_s=args.tick_ms / 1000,
            connections=args.connections,
            txns_per_tick=txns_per_tick,
            rows_per_txn=args.rows_per_txn,
            update_share=args.update_share,
            start_at=time.time() + 2.0,
            out=str(self.tmp / "writer.json"),
        )
        print(
            f"writing {txns_per_tick} txns x {args.rows_per_txn} rows every {args.tick_ms} ms "
            f"for {args.seconds} s over {args.connections} connections ...",
            file=sys.stderr,
        )
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        writer = ctx.Process(target=writer_main, args=(plan,))
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            raise RuntimeError(f"the writer failed (exit code {writer.exitcode})")
        written = json.loads(Path(plan.out).read_text())
        commits: dict[str, float] = written["commits"]
        producer = holder[-1]
        deadline = time.time() + 120
        while len(producer.acks) < len(commits) and time.time() < deadline:
            time.sleep(0.1)
        stop.set()
        relay.join(timeout=120)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        consumer_stop.set()
        consumer.join(timeout=120)
        received: dict[str, float] = json.loads(Path(consumer_out).read_text())["received"]

        acks = {
            m.group(1).decode(): t
            for value, t in producer.acks
            if (m := TOKEN.search(value)) is not None
        }
        batch_of = {
            m.group(1).decode(): b
            for value, b in producer.sent
            if (m := TOKEN.search(value)) is not None
        }
        lag_ack = [(acks[k] - c) * 1000 for k, c in commits.items() if k in acks]
        lag_batch = [
            (batch_times[batch_of[k]] - c) * 1000
            for k, c in commits.items()
            if k in batch_of and batch_of[k] < len(batch_times)
        ]
        lag_consumer = [(received[k] - c) * 1000 for k, c in commits.items() if k in received]
        # p99 of the ack lag per 10-second window of commit time, to show it is steady.
        t_first = min(commits.values()) if commits else 0.0
        windows: dict[int, list[float]] = {}
        for k, c in commits.items():
            if k in acks:
                windows.setdefault(int((c - t_first) // 10), []).append((acks[k] - c) * 1000)
        late = sorted(written["late"])
        span = max(commits.values()) - min(commits.values()) if commits else 0.0
        relay_result = result[0] if result else None
        return {
            "changes_written": len(commits),
            "inserts": written["insert"],
            "updates": written["update"],
            "rate_target": total_rate,
            # over the span of commit times: when the writer falls behind its schedule (a
            # starved machine), it catches up in bursts and the span grows past --seconds
            "writer_span_s": round(span, 1),
            "rate_achieved": len(commits) / span if span > 0 else float("nan"),
            "writer_ticks_late": len(late),
            "writer_late_max_ms": round(late[-1] * 1000, 1) if late else 0.0,
            "acked": len(acks),
            "received": len(received),
            "missing_ack": len(commits) - len(lag_ack),
            "relay_batches": len(batch_times),
            "relay_retries": relay_result.retries if relay_result else None,
            "relay_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
            "lags": [
                summarise("Kafka ack (producer callback)", lag_ack),
                summarise("relay batch committed (on_batch)", lag_batch),
                summarise("consumer received", lag_consumer),
            ],
            "ack_windows": [
                {
                    "from_s": w * 10,
                    "n": len(v),
                    "p50_ms": percentile(sorted(v), 50),
                    "p99_ms": percentile(sorted(v), 99),
                    "max_ms": max(v),
                }
                for w, v in sorted(windows.items())
            ],
        }

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            if self.installed:
                uninstall(self.engine, self.config, force=True)
        with contextlib.suppress(Exception), psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {self.table}")
        self.engine.dispose()
        delete_topics(self.bootstrap, [self.config.changes_topic])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=int, default=2000, help="changes per second (2000)")
    p.add_argument("--seconds", type=float, default=60, help="how long the writer runs (60)")
    p.add_argument("--tick-ms", type=int, default=100, help="pacing period (100)")
    p.add_argument("--rows-per-txn", type=int, default=10)
    p.add_argument("--connections", type=int, default=2)
    p.add_argument("--update-share", type=float, default=0.2)
    p.add_argument("--relay-batch-size", type=int, default=5000)
    p.add_argument("--idle-poll-ms", type=int, default=50)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--target-p99-ms", type=float, default=500.0)
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if missing_services():
        return run_inside_dev_stack(__file__, sys.argv[1:] if argv is None else list(argv))
    bench = Bench(args)
    t0 = time.perf_counter()
    try:
        report = bench.run()
    finally:
        bench.cleanup()
    print_table(
        f"Lag from source COMMIT, {report['changes_written']:,} changes at "
        f"{report['rate_achieved']:,.0f}/s over {report['writer_span_s']} s (target {args.rate:,}/s "
        f"for {args.seconds:g} s); relay batch_size "
        f"{args.relay_batch_size}, idle_poll_ms {args.idle_poll_ms} (lower is better)",
        ["lag to", "changes", "p50 ms", "p95 ms", "p99 ms", "max ms", "min ms"],
        [
            (s["what"], s["n"], s["p50_ms"], s["p95_ms"], s["p99_ms"], s["max_ms"], s["min_ms"])
            for s in report["lags"]
        ],
    )
    print_table(
        "Kafka-ack lag per 10 s of commit time",
        ["from s", "changes", "p50 ms", "p99 ms", "max ms"],
        [
            (w["from_s"], w["n"], w["p50_ms"], w["p99_ms"], w["max_ms"])
            for w in report["ack_windows"]
        ],
    )
    ack_p99 = report["lags"][0]["p99_ms"]
    print(
        f"\ntarget p99 <= {args.target_p99_ms:.0f} ms: "
        f"{'met' if ack_p99 <= args.target_p99_ms else 'MISSED'} ({ack_p99:.0f} ms); "
        f"{report['inserts']:,} inserts + {report['updates']:,} updates; acked {report['acked']:,}, "
        f"consumed {report['received']:,}; {report['relay_batches']} relay batches, "
        f"{report['relay_retries']} retries, relay CPU {report['relay_cpu_s']} s; "
        f"writer ticks late: {report['writer_ticks_late']} (max {report['writer_late_max_ms']} ms)"
    )
    m = machine_info()
    print(
        f"machine: {m['nproc']} cores {m['cpu_model']}, load {m['loadavg_1m']:.2f}, "
        f"kafka-python {m['kafka-python']} (crc32c C extension: {m['crc32c_c_extension']}); "
        f"total {time.perf_counter() - t0:.0f}s"
    )
    if args.json:
        emit_json({"benchmark": "relay_lag", "machine": m, "args": vars(args), **report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
