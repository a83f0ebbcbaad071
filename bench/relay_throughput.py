"""Relay throughput: how fast ``run_relay(until_idle=True)`` drains a full changelog to Kafka,
against the raw kafka-python producer sending messages of the same size in the same run.

For each relay batch size (1000 / 5000 / 20000 by default):

1. fill: ``INSERT ... SELECT generate_series`` into a captured table of realistic shape
   (``id bigint`` key, e-mail, name, status, a note, numeric amount, timestamptz; ~170 bytes of
   ``row_to_json``), in committed chunks of 100k rows, so the changelog holds N changes; then
   VACUUM (ANALYZE) of the changelog and a CHECKPOINT;
2. raw producer: N messages cycling through 1,000 real envelopes of this changelog (read with
   the relay's own batch statement in a rolled-back transaction), to a topic with the same
   number of partitions, with ``dualwrite.kafka_io.Producer``'s settings (idempotent,
   acks=all, its linger_ms / batch_size / compression) -- once sending everything then
   flushing, once flushing every ``batch size`` messages as the relay does, and once more
   sending everything right after the drain (the machine's load drifts; the last ratio is
   against the mean of the runs before and after);
3. drain: ``run_relay(until_idle=True)`` with that batch size, timed; a wrapping producer
   records the per-batch phases (SQL = DELETE ... RETURNING the columns, fetching them and
   putting the envelopes together in Python, send loop, flush = waiting for every acknowledgement, commit), and the CPU seconds of this
   process, PostgreSQL and Kafka are read around it.

Then (``--profile``) one more drain runs under py-spy (all threads, idle samples included)
and the DELETE share of the SQL phase is measured by running the batch statement and two
reduced variants (DELETE returning only ``seq``; SELECT of the same columns without DELETE)
in rolled-back transactions.

Services come from DUALWRITE_SOURCE_URL / DUALWRITE_TARGET_URL / DUALWRITE_KAFKA_BOOTSTRAP;
without them the dev stack is started and stopped around the run. The table, capture schema
and topics have unique names and are removed at the end.

    .venv/bin/python bench/relay_throughput.py                   # 1M changes per batch size
    .venv/bin/python bench/relay_throughput.py --changes 50000 --batch-sizes 5000 --no-profile
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from _benchlib import emit_json, libpq_url, machine_info, print_table, table_ddl
from _capturebench import (
    ROW_SELECT,
    delete_topics,
    make_config,
    migration_text,
    missing_services,
    producer_defaults,
    run_inside_dev_stack,
    service_pids,
    services_cpu_s,
)
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from dualwrite.capture import install, uninstall
from dualwrite.config import MigrationConfig
from dualwrite.db import make_engine
from dualwrite.kafka_io import Producer, ensure_topic
from dualwrite.relay import _batch_sql, _Envelopes, _fetch_batch, _registry_sql, run_relay


@dataclass
class Drain:
    batch_size: int
    changes: int
    seconds: float
    batches: int
    fill_s: float
    producer_all_per_s: float
    producer_flush_per_s: float
    phases_s: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    value_bytes_avg: float = 0.0
    key_bytes_avg: float = 0.0
    producer_all_after_per_s: float = 0.0  # the raw producer again, right after the drain

    @property
    def per_s(self) -> float:
        return self.changes / self.seconds if self.seconds > 0 else float("nan")


class PhaseProducer(Producer):
    """``Producer`` that times the relay's phases batch by batch: the first ``send`` of a
    batch ends the SQL phase, the ``flush`` call is the acknowledgement wait, and the
    ``on_batch`` callback (after the commit) ends the batch."""

    def __init__(self, bootstrap: Sequence[str], phases: dict[str, float]) -> None:
        super().__init__(bootstrap, client_id="bench-relay")
        self.phases = phases
        self.mark = time.perf_counter()
        self.in_send = False

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> Any:
        if not self.in_send:
            now = time.perf_counter()
            self.phases["sql"] += now - self.mark
            self.mark, self.in_send = now, True
        return super().send(topic, key, value)

    def flush(self, timeout_s: float | None = None) -> None:
        now = time.perf_counter()
        self.phases["send"] += now - self.mark
        super().flush(timeout_s)
        self.mark = time.perf_counter()
        self.phases["flush"] += self.mark - now

    def batch_done(self, _n: int) -> None:
        now = time.perf_counter()
        self.phases["commit"] += now - self.mark
        self.mark, self.in_send = now, False


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.suffix = uuid.uuid4().hex[:8]
        self.table = f"public.bench_relay_{self.suffix}"  # qualified: a `dualwrite` schema on the source would catch "$user"
        self.schema = f"bench_relay_cap_{self.suffix}"
        self.topic_prefix = f"bench.relay-throughput.{self.suffix}"
        self.raw_topic = f"{self.topic_prefix}.raw"
        self.bootstrap = os.environ["DUALWRITE_KAFKA_BOOTSTRAP"]
        self.url = libpq_url(os.environ["DUALWRITE_SOURCE_URL"])
        self.next_id = 1
        self.pids = service_pids()
        self.configs: dict[int, MigrationConfig] = {}
        self.engine = make_engine(self.config(5000).source)
        self.installed = False

    def config(self, batch_size: int) -> MigrationConfig:
        if batch_size not in self.configs:
            self.configs[batch_size] = make_config(
                migration_text(
                    name="bench-relay-throughput",
                    source_url=os.environ["DUALWRITE_SOURCE_URL"],
                    target_url=os.environ["DUALWRITE_TARGET_URL"],
                    bootstrap=self.bootstrap,
                    topic_prefix=self.topic_prefix,
                    capture_schema=self.schema,
                    tables=[self.table],
                    batch_size=batch_size,
                    partitions=self.args.partitions,
                )
            )
        return self.configs[batch_size]

    # --- setup and fill -------------------------------------------------------------------

    def setup(self) -> None:
        with psycopg.connect(self.url) as conn:
            conn.execute(table_ddl(self.table))
        install(self.engine, self.config(5000))
        self.installed = True
        ensure_topic([self.bootstrap], self.raw_topic, partitions=self.args.partitions)

    def fill(self, n: int) -> float:
        """Insert ``n`` new rows (so ``n`` changes) in committed chunks; return seconds."""
        t0 = time.perf_counter()
        with psycopg.connect(self.url) as conn:
            done = 0
            while done < n:
                k = min(self.args.chunk, n - done)
                first = self.next_id
                conn.execute(
                    f"INSERT INTO {self.table} {ROW_SELECT} "
                    f"FROM generate_series({first}::bigint, {first + k - 1}::bigint) AS g"
                )
                conn.commit()
                self.next_id += k
                done += k
        seconds = time.perf_counter() - t0
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"VACUUM (ANALYZE) {self.schema}.changelog")
            conn.execute("CHECKPOINT")
        return seconds

    def sample_envelopes(self, n: int = 1000) -> list[tuple[bytes, bytes]]:
        """Real (key, value) pairs: the relay's batch statement, rolled back."""
        with psycopg.connect(self.url, options="-c timezone=UTC") as conn:
            envelopes = _Envelopes(_registry_sql(self.schema))
            batch = _fetch_batch(conn, _batch_sql(self.schema, n), envelopes)
            conn.rollback()
        rows = batch.rows if batch is not None else []
        return [(key.encode(), value.encode()) for _seq, key, value in rows]

    def backlog(self) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(f"SELECT count(*) FROM {self.schema}.changelog").fetchone()
        return int(row[0]) if row else 0

    # --- raw producer -------------------------------------------------------------------

    def raw_produce(self, pool: Sequence[tuple[bytes, bytes]], n: int, flush_every: int) -> float:
        """Messages per second; ``flush_every`` 0 = flush once at the end."""
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap.split(","),
            client_id="bench-raw-producer",
            acks="all",
            enable_idempotence=True,
            max_block_ms=120_000,
            **producer_defaults(),
        )
        try:
            producer.partitions_for(self.raw_topic)
            send, topic, size = producer.send, self.raw_topic, len(pool)
            t0 = time.perf_counter()
            for i in range(n):
                key, value = pool[i % size]
                send(topic, key=key, value=value)
                if flush_every and (i + 1) % flush_every == 0:
                    producer.flush(timeout=120)
            producer.flush(timeout=600)
            seconds = time.perf_counter() - t0
        finally:
            producer.close(timeout=30)
        return n / seconds

    # --- drain --------------------------------------------------------------------------

    def drain(self, batch_size: int) -> tuple[int, int, float, dict[str, float], dict[str, float]]:
        phases = {"sql": 0.0, "send": 0.0, "flush": 0.0, "commit": 0.0}
        holder: list[PhaseProducer] = []

        def factory() -> Producer:
            producer = PhaseProducer([self.bootstrap], phases)
            holder.append(producer)
            return producer

        def on_batch(n: int) -> None:
            holder[-1].batch_done(n)

        config = self.config(batch_size)
        cpu0 = services_cpu_s(self.pids)
        self_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        result = run_relay(
            self.engine, config, until_idle=True, producer_factory=factory, on_batch=on_batch
        )
        seconds = time.perf_counter() - t0
        self_cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu1 = services_cpu_s(self.pids)
        cpu = {k: round(cpu1[k] - cpu0.get(k, 0.0), 2) for k in cpu1}
        cpu["relay (this process)"] = round(
            self_cpu1.ru_utime + self_cpu1.ru_stime - self_cpu0.ru_utime - self_cpu0.ru_stime, 2
        )
        phases["setup+idle"] = seconds - sum(phases.values())
        return result.relayed, result.batches, seconds, phases, cpu

    def topic_total(self, topic: str) -> int:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap.split(","))
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
            return int(sum(ends.values()))
        finally:
            consumer.close()

    def measure(self, batch_size: int) -> Drain:
        n = self.args.changes
        print(f"batch {batch_size}: filling {n:,} changes ...", file=sys.stderr)
        fill_s = self.fill(n)
        pool = self.sample_envelopes()
        print(f"batch {batch_size}: raw producer x2 ...", file=sys.stderr)
        raw_all = self.raw_produce(pool, n, 0)
        raw_flush = self.raw_produce(pool, n, batch_size)
        before = self.topic_total(self.config(batch_size).changes_topic)
        print(f"batch {batch_size}: draining ...", file=sys.stderr)
        relayed, batches, seconds, phases, cpu = self.drain(batch_size)
        after = self.topic_total(self.config(batch_size).changes_topic)
        if relayed != n or after - before != n or self.backlog() != 0:
            raise RuntimeError(
                f"relayed {relayed}, topic grew by {after - before}, expected {n}; "
                f"{self.backlog()} left in the changelog"
            )
        print(f"batch {batch_size}: raw producer again ...", file=sys.stderr)
        raw_after = self.raw_produce(pool, n, 0)
        return Drain(
            batch_size,
            relayed,
            seconds,
            batches,
            fill_s,
            raw_all,
            raw_flush,
            {k: round(v, 2) for k, v in phases.items()},
            cpu,
            statistics.fmean(len(v) for _k, v in pool),
            statistics.fmean(len(k) for k, _v in pool),
            raw_after,
        )

    # --- profile ------------------------------------------------------------------------

    def sql_breakdown(self, batch_size: int, repeats: int = 3) -> dict[str, float]:
        """Median ms of the batch statement and two reduced variants, rolled back each time."""
        changelog = f"{self.schema}.changelog"
        full = _batch_sql(self.schema, batch_size)
        columns = full.as_string(None).split("RETURNING", 1)[1]
        oldest = f"c.seq IN (SELECT seq FROM {changelog} ORDER BY seq LIMIT {batch_size})"
        variants: dict[str, Any] = {
            "delete_returning_columns": full,
            "delete_returning_seq_only": f"DELETE FROM {changelog} AS c WHERE {oldest} "
            "RETURNING c.seq",
            "select_columns_no_delete": f"SELECT {columns} FROM {changelog} AS c WHERE {oldest}",
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        with psycopg.connect(self.url, options="-c timezone=UTC") as conn:
            for _ in range(repeats):
                for name, statement in variants.items():
                    t0 = time.perf_counter()
                    conn.execute(statement).fetchall()
                    times[name].append((time.perf_counter() - t0) * 1000)
                    conn.rollback()
        return {k: round(statistics.median(v), 1) for k, v in times.items()}

    def profile(self, batch_size: int, n: int, out_dir: Path) -> dict[str, Any]:
        print(f"profile: filling {n:,} changes ...", file=sys.stderr)
        self.fill(n)
        sql_ms = self.sql_breakdown(batch_size)
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        raw = out_dir / "relay-drain.pyspy.txt"
        command = [spy, "record", "--pid", str(os.getpid()), "--threads", "--idle"]
        command += ["--rate", "200", "--format", "raw", "--output", str(raw), "--nonblocking"]
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)
        print(f"profile: draining {n:,} changes under py-spy ...", file=sys.stderr)
        relayed, _batches, seconds, phases, cpu = self.drain(batch_size)
        proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        _out, err = proc.communicate(timeout=60)
        report: dict[str, Any] = {
            "batch_size": batch_size,
            "changes": relayed,
            "seconds": round(seconds, 2),
            "per_s": round(relayed / seconds, 1),
            "phases_s": {k: round(v, 2) for k, v in phases.items()},
            "cpu_s": cpu,
            "sql_ms_per_batch": sql_ms,
            "pyspy_file": str(raw),
        }
        if raw.exists():
            report["pyspy"] = summarise_pyspy(raw.read_text())
        else:
            report["pyspy_error"] = err.strip()[-500:]
        return report

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            if self.installed:
                uninstall(self.engine, self.config(5000), force=True)
        with contextlib.suppress(Exception), psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {self.table}")
        self.engine.dispose()
        delete_topics(self.bootstrap, [self.config(5000).changes_topic, self.raw_topic])


# --- py-spy ---------------------------------------------------------------------------------

# Inclusive buckets, first match wins, tested against each sample's stack from the leaf up.
MAIN_BUCKETS = (
    ("producer.flush (waiting for acks)", ("flush (kafka/producer/kafka.py",)),
    ("producer.send (record accumulator)", ("send (kafka/producer/kafka.py",)),
    ("encode key/value + future list", ("_publish (dualwrite/relay.py",)),
    ("SQL: DELETE ... RETURNING + fetch", ("fetchall (psycopg", "execute (psycopg")),
    ("_Batch sort", ("__init__ (dualwrite/relay.py",)),
    (
        "envelope assembly (Python)",
        ("envelope (dualwrite/relay.py", "_fetch_batch (dualwrite/relay.py"),
    ),
)
SENDER_BUCKETS = (
    ("crc32c (pure Python)", ("crc32c", "crc_update")),
    ("record batch build/close", ("build (kafka/record", "close (kafka/record")),
    ("network I/O (send/recv/select)", ("select (selectors", "poll (kafka/client", "recv")),
)


def summarise_pyspy(text: str, top: int = 12) -> dict[str, Any]:
    """Per thread: samples, bucketed inclusive shares and the hottest leaf frames."""
    threads: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        name = re.sub(r"^thread \(\d+\): ", "", frames[0])
        name = re.sub(r"-\d+$", "", name)
        frames = frames[1:]
        t = threads.setdefault(name, {"samples": 0, "buckets": {}, "leaves": {}})
        t["samples"] += count
        if name == "MainThread" and not any("run_relay" in f for f in frames):
            bucket = "outside run_relay"
        else:
            buckets = MAIN_BUCKETS if name == "MainThread" else SENDER_BUCKETS
            bucket = "other"
            for label, needles in buckets:
                if any(n in f for f in frames for n in needles):
                    bucket = label
                    break
        t["buckets"][bucket] = t["buckets"].get(bucket, 0) + count
        leaf = re.sub(r":\d+\)$", ")", frames[-1]) if frames else "(idle)"
        t["leaves"][leaf] = t["leaves"].get(leaf, 0) + count
    out: dict[str, Any] = {}
    for name, t in threads.items():
        # The main thread's shares are of its samples inside run_relay (the profiler starts
        # a little before the drain); the I/O thread's are of all its samples.
        total = (t["samples"] - t["buckets"].get("outside run_relay", 0)) or 1
        t["buckets"].pop("outside run_relay", None)
        label = "main (run_relay)" if name == "MainThread" else f"kafka-python I/O ({name})"
        out[label] = {
            "samples": t["samples"],
            "buckets_pct": {
                k: round(100 * v / total, 1)
                for k, v in sorted(t["buckets"].items(), key=lambda kv: -kv[1])
            },
            "top_leaves_pct": {
                k: round(100 * v / total, 1)
                for k, v in sorted(t["leaves"].items(), key=lambda kv: -kv[1])[:top]
            },
        }
    return out


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--changes", type=int, default=1_000_000, help="changes per drain (1M)")
    p.add_argument("--chunk", type=int, default=100_000, help="rows per fill INSERT (100k)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    p.add_argument("--partitions", type=int, default=8, help="topic partitions (8)")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--profile-batch-size", type=int, default=5000)
    p.add_argument("--profile-changes", type=int, default=300_000)
    p.add_argument("--out-dir", default=None, help="where py-spy's raw output goes")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if missing_services():
        return run_inside_dev_stack(__file__, sys.argv[1:] if argv is None else list(argv))
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="bench-relay-throughput-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    drains: list[Drain] = []
    profile: dict[str, Any] | None = None
    t0 = time.perf_counter()
    try:
        bench.setup()
        for batch_size in args.batch_sizes:
            drains.append(bench.measure(batch_size))
        if args.profile:
            profile = bench.profile(args.profile_batch_size, args.profile_changes, out_dir)
    finally:
        bench.cleanup()

    print_table(
        "Relay drain vs raw kafka-python producer, same run (higher is better)",
        [
            "batch",
            "changes",
            "drain s",
            "changes/s",
            "raw prod/s",
            "ratio",
            "raw flush/batch /s",
            "ratio",
            "raw after /s",
            "ratio to mean before/after",
            "fill rows/s",
        ],
        [
            (
                d.batch_size,
                d.changes,
                d.seconds,
                d.per_s,
                d.producer_all_per_s,
                d.per_s / d.producer_all_per_s,
                d.producer_flush_per_s,
                d.per_s / d.producer_flush_per_s,
                d.producer_all_after_per_s,
                d.per_s / ((d.producer_all_per_s + d.producer_all_after_per_s) / 2),
                d.changes / d.fill_s,
            )
            for d in drains
        ],
    )
    phase_names = ["sql", "send", "flush", "commit", "setup+idle"]
    print_table(
        "Where a drain's wall time goes (seconds; per-batch phases summed)",
        ["batch", "batches", *phase_names, "CPU s: relay", "postgres", "kafka", "relay µs/chg"],
        [
            (
                d.batch_size,
                d.batches,
                *[d.phases_s.get(k) for k in phase_names],
                d.cpu_s.get("relay (this process)"),
                d.cpu_s.get("postgres"),
                d.cpu_s.get("kafka"),
                d.cpu_s.get("relay (this process)", 0.0) * 1e6 / max(1, d.changes),
            )
            for d in drains
        ],
    )
    if drains:
        d = drains[0]
        print(
            f"\nmessage size: value {d.value_bytes_avg:.0f} B, key {d.key_bytes_avg:.0f} B; "
            f"producer settings {producer_defaults()}; {args.partitions} partitions"
        )
    if profile is not None:
        print(
            f"\nprofiled drain: batch {profile['batch_size']}, {profile['changes']:,} changes, "
            f"{profile['per_s']:,.0f}/s under py-spy; phases {profile['phases_s']}; "
            f"CPU s {profile['cpu_s']}"
        )
        print(f"SQL per batch of {profile['batch_size']}, ms: {profile['sql_ms_per_batch']}")
        for thread, t in profile.get("pyspy", {}).items():
            print_table(
                f"py-spy, thread {thread}, {t['samples']} samples at 200/s, waits included",
                ["bucket (inclusive)", "%"],
                list(t["buckets_pct"].items()),
            )
            print_table(
                f"py-spy, thread {thread}: hottest leaf frames (where the thread was)",
                ["frame", "%"],
                list(t["top_leaves_pct"].items()),
            )
        if "pyspy_error" in profile:
            print(f"py-spy failed: {profile['pyspy_error']}")
    m = machine_info()
    print(
        f"\nmachine: {m['nproc']} cores {m['cpu_model']}, load {m['loadavg_1m']:.2f}, "
        f"kafka-python {m['kafka-python']} (crc32c C extension: {m['crc32c_c_extension']}); "
        f"total {time.perf_counter() - t0:.0f}s"
    )
    if args.json:
        emit_json(
            {
                "benchmark": "relay_throughput",
                "machine": m,
                "args": vars(args),
                "drains": [{**asdict(d), "per_s": round(d.per_s, 1)} for d in drains],
                "profile": profile,
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
