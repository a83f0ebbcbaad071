"""Raw ceilings: what psycopg 3 and kafka-python reach on this machine without the project.

Later benchmarks of the project's own code compare against these figures:

* PostgreSQL COPY-in rows/s into a realistic table (three ways of feeding ``cursor.copy()``);
* COPY-out rows/s from the loaded table (raw text blocks, and typed rows from binary COPY);
* batched upsert rows/s with random keys into that table (four methods, interleaved batch by
  batch so that the machine's noise spreads evenly over them);
* kafka-python producer msgs/s (acks=all, idempotent) and consumer-group msgs/s.

Services come from DUALWRITE_SOURCE_URL / DUALWRITE_TARGET_URL / DUALWRITE_KAFKA_BOOTSTRAP.
When they are not set the script starts the dev stack with ``dualwrite.devstack`` (using the
DUALWRITE_DEV_DIR / _CACHE_DIR / _*_PORT variables), runs itself inside it and stops what it
started. Every table and topic it creates has a unique name and is dropped at the end.

    .venv/bin/python bench/ceilings.py                       # full size (1M rows, 1M messages)
    .venv/bin/python bench/ceilings.py --rows 20000 --upsert-rows 10000 --messages 20000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import struct
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from _benchlib import (
    TABLE_COLUMNS,
    UPSERT_SET,
    Row,
    RowFactory,
    copy_text,
    emit_json,
    libpq_url,
    machine_info,
    median,
    print_table,
    stopwatch,
    table_ddl,
)
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

SERVICE_VARS = ("DUALWRITE_SOURCE_URL", "DUALWRITE_TARGET_URL", "DUALWRITE_KAFKA_BOOTSTRAP")
PG_TYPES = ["int8", "text", "text", "text", "text", "numeric", "timestamptz"]
UPSERT_METHODS = ("executemany", "values", "unnest", "copy_staging")


@dataclass
class Figure:
    """One measured figure: ``count`` items in ``seconds``."""

    name: str
    method: str
    count: int
    seconds: float
    nbytes: int = 0
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("nan")

    @property
    def mib_per_s(self) -> float:
        return self.nbytes / 1024 / 1024 / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "per_s": round(self.per_s, 1),
            "mib_per_s": round(self.mib_per_s, 2),
        }


# --- PostgreSQL ----------------------------------------------------------------------------


def try_checkpoint(conn: psycopg.Connection[Any]) -> None:
    """Flush dirty buffers before a timed step so that one step's WAL does not slow the next
    (needs superuser or pg_checkpoint; skipped silently without it)."""
    try:
        conn.execute("CHECKPOINT")
        conn.commit()
    except psycopg.Error:
        conn.rollback()


def copy_in(
    conn: psycopg.Connection[Any], table: str, method: str, rows: Sequence[Row], text: bytes
) -> float:
    """Load ``rows`` into the empty ``table`` with one COPY and commit; return seconds."""
    with stopwatch() as t, conn.cursor() as cur:
        if method == "text_write_row":
            with cur.copy(f"COPY {table} ({TABLE_COLUMNS}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        elif method == "binary_write_row":
            with cur.copy(f"COPY {table} ({TABLE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(PG_TYPES)
                for row in rows:
                    copy.write_row(row)
        elif method == "text_preformatted":
            view = memoryview(text)
            chunk = 1 << 20
            with cur.copy(f"COPY {table} ({TABLE_COLUMNS}) FROM STDIN") as copy:
                for start in range(0, len(view), chunk):
                    copy.write(view[start : start + chunk])
        else:
            raise ValueError(method)
        conn.commit()
    return t[0]


def copy_out(conn: psycopg.Connection[Any], table: str, method: str) -> tuple[int, int, float]:
    """COPY the whole table out; return (rows, bytes, seconds)."""
    rows = nbytes = 0
    query = f"COPY (SELECT {TABLE_COLUMNS} FROM {table}) TO STDOUT"
    with stopwatch() as t, conn.cursor() as cur:
        if method == "text_blocks":
            with cur.copy(query) as copy:
                for block in copy:
                    nbytes += len(block)
                    rows += bytes(block).count(b"\n")
        elif method == "binary_typed_rows":
            with cur.copy(query + " (FORMAT BINARY)") as copy:
                copy.set_types(PG_TYPES)
                for _row in copy.rows():
                    rows += 1
        else:
            raise ValueError(method)
        conn.commit()
    return rows, nbytes, t[0]


class Upserter:
    """The upsert methods; each takes a batch of rows with distinct keys and commits it."""

    def __init__(self, conn: psycopg.Connection[Any], table: str, batch_size: int) -> None:
        self.conn, self.table = conn, table
        placeholders = "(%s, %s, %s, %s, %s, %s, %s)"
        conflict = f"ON CONFLICT (id) DO UPDATE SET {UPSERT_SET}"
        self.sql_one = f"INSERT INTO {table} ({TABLE_COLUMNS}) VALUES {placeholders} {conflict}"
        self.sql_values = (
            f"INSERT INTO {table} ({TABLE_COLUMNS}) VALUES "
            + ", ".join([placeholders] * batch_size)
            + f" {conflict}"
        )
        self.batch_size = batch_size
        self.sql_unnest = (
            f"INSERT INTO {table} ({TABLE_COLUMNS}) SELECT * FROM unnest("
            "%s::int8[], %s::text[], %s::text[], %s::text[], %s::text[], %s::numeric[], "
            f"%s::timestamptz[]) {conflict}"
        )
        self.stage = f"{table}_stage"
        conn.execute(
            f"CREATE TEMP TABLE {self.stage} (LIKE {table} INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS"
        )
        conn.commit()
        self.sql_merge = (
            f"INSERT INTO {table} ({TABLE_COLUMNS}) SELECT {TABLE_COLUMNS} FROM {self.stage} "
            f"{conflict}"
        )

    def method(self, name: str) -> Callable[[Sequence[Row]], None]:
        methods: dict[str, Callable[[Sequence[Row]], None]] = {
            "executemany": self.executemany,
            "values": self.values,
            "unnest": self.unnest,
            "copy_staging": self.copy_staging,
        }
        return methods[name]

    def executemany(self, batch: Sequence[Row]) -> None:
        """One INSERT per row, sent in psycopg's pipeline mode by ``executemany``."""
        with self.conn.cursor() as cur:
            cur.executemany(self.sql_one, batch)
        self.conn.commit()

    def values(self, batch: Sequence[Row]) -> None:
        """One INSERT with a multi-row VALUES list (7 parameters per row)."""
        sql = self.sql_values
        if len(batch) != self.batch_size:
            sql = (
                f"INSERT INTO {self.table} ({TABLE_COLUMNS}) VALUES "
                + ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(batch))
                + f" ON CONFLICT (id) DO UPDATE SET {UPSERT_SET}"
            )
        params = [value for row in batch for value in row]
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
        self.conn.commit()

    def unnest(self, batch: Sequence[Row]) -> None:
        """One INSERT ... SELECT FROM unnest() of seven array parameters (binary)."""
        columns = [list(col) for col in zip(*batch, strict=True)]
        with self.conn.cursor(binary=True) as cur:
            cur.execute(self.sql_unnest, columns)
        self.conn.commit()

    def copy_staging(self, batch: Sequence[Row]) -> None:
        """Binary COPY into a temp table, then INSERT ... SELECT ... ON CONFLICT."""
        with self.conn.cursor() as cur:
            with cur.copy(
                f"COPY {self.stage} ({TABLE_COLUMNS}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(PG_TYPES)
                for row in batch:
                    copy.write_row(row)
            cur.execute(self.sql_merge)
        self.conn.commit()


def pg_ceilings(url: str, args: argparse.Namespace) -> tuple[list[Figure], dict[str, Any]]:
    figures: list[Figure] = []
    info: dict[str, Any] = {}
    factory = RowFactory(seed=args.seed)
    suffix = uuid.uuid4().hex[:8]
    tables: list[str] = []
    print(f"generating {args.rows:,} rows ...", file=sys.stderr)
    rows = factory.rows(range(1, args.rows + 1))
    text = copy_text(rows)
    info["copy_text_bytes_per_row"] = round(len(text) / max(1, len(rows)), 1)

    with psycopg.connect(url) as conn:
        for setting in ("server_version", "shared_buffers", "synchronous_commit", "max_wal_size"):
            value = conn.execute(f"SHOW {setting}").fetchone()
            info[setting] = value[0] if value else None
        conn.commit()
        try:
            # COPY-in: the last method's table stays as the 1M-row table for the rest.
            main_table = ""
            for method in args.copy_methods:
                table = f"bench_ceil_{suffix}_{method}"
                tables.append(table)
                conn.execute(table_ddl(table))
                conn.commit()
                try_checkpoint(conn)
                print(f"COPY-in {method} ...", file=sys.stderr)
                seconds = copy_in(conn, table, method, rows, text)
                figures.append(Figure("copy_in", method, len(rows), seconds, len(text)))
                if main_table:
                    conn.execute(f"DROP TABLE {main_table}")
                    conn.commit()
                    tables.remove(main_table)
                main_table = table
            del text

            conn.autocommit = True
            conn.execute(f"VACUUM (ANALYZE) {main_table}")
            conn.autocommit = False
            size = conn.execute(
                f"SELECT avg(pg_column_size(t.*))::int, pg_total_relation_size('{main_table}') "
                f"FROM {main_table} t"
            ).fetchone()
            conn.commit()
            if size is not None:
                info["tuple_bytes_avg"], info["table_total_bytes"] = size

            for method in ("text_blocks", "binary_typed_rows"):
                try_checkpoint(conn)
                print(f"COPY-out {method} ...", file=sys.stderr)
                n, nbytes, seconds = copy_out(conn, main_table, method)
                figures.append(Figure("copy_out", method, n, seconds, nbytes))

            figures.extend(upserts(conn, main_table, factory, rows, args))
        finally:
            conn.rollback()
            for table in tables:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
                    conn.commit()
    return figures, info


def upserts(
    conn: psycopg.Connection[Any],
    table: str,
    factory: RowFactory,
    loaded: Sequence[Row],
    args: argparse.Namespace,
) -> list[Figure]:
    """Run every upsert method over its own random batches, interleaved batch by batch."""
    methods: list[str] = list(args.upsert_methods)
    key_space = int(len(loaded) * (1 + args.insert_share))
    n_batches = max(1, args.upsert_rows // args.batch_size)
    print(f"generating {n_batches * len(methods)} upsert batches ...", file=sys.stderr)
    rng = factory.rng
    batches = {
        m: [
            factory.rows(rng.sample(range(1, key_space + 1), args.batch_size))
            for _ in range(n_batches)
        ]
        for m in methods
    }
    upserter = Upserter(conn, table, args.batch_size)
    try_checkpoint(conn)
    timings: dict[str, list[float]] = {m: [] for m in methods}
    # Warm-up: one batch per method, untimed (prepares statements, loads the catalog cache).
    for m in methods:
        upserter.method(m)(factory.rows(rng.sample(range(1, key_space + 1), args.batch_size)))
    print(f"upserts: {n_batches} batches x {len(methods)} methods ...", file=sys.stderr)
    for i in range(n_batches):
        order = methods[i % len(methods) :] + methods[: i % len(methods)]
        for m in order:
            run = upserter.method(m)
            t0 = time.perf_counter()
            run(batches[m][i])
            timings[m].append(time.perf_counter() - t0)
    figures = []
    for m in methods:
        times = sorted(timings[m])
        figures.append(
            Figure(
                "upsert",
                m,
                n_batches * args.batch_size,
                sum(times),
                note=f"batch {args.batch_size:,}",
                extra={
                    "batch_ms_p50": round(median(times) * 1000, 1),
                    "batch_ms_p95": round(times[int(0.95 * (len(times) - 1))] * 1000, 1),
                },
            )
        )
    return figures


# --- Kafka ---------------------------------------------------------------------------------


def kafka_ceilings(bootstrap: str, args: argparse.Namespace) -> tuple[list[Figure], dict[str, Any]]:
    suffix = uuid.uuid4().hex[:8]
    topic, group = f"bench.ceilings.{suffix}", f"bench-ceilings-{suffix}"
    servers = bootstrap.split(",")
    admin = KafkaAdminClient(bootstrap_servers=servers, client_id="bench-admin")
    figures: list[Figure] = []
    info: dict[str, Any] = {"topic_partitions": args.partitions}
    try:
        admin.create_topics(
            [NewTopic(topic, args.partitions, 1)], timeout_ms=30_000, wait_for_metadata=True
        )
        figures.append(produce(servers, topic, args))
        end = end_offsets(servers, topic, args.partitions)
        info["messages_in_topic"] = end
        if end != args.messages:
            raise RuntimeError(f"topic holds {end} messages after flush, expected {args.messages}")
        figures.append(consume(servers, topic, group, args))
    finally:
        with contextlib.suppress(Exception):
            admin.delete_groups([group])
        with contextlib.suppress(Exception):
            admin.delete_topics([topic], timeout_ms=30_000)
        admin.close()
    return figures, info


def produce(servers: list[str], topic: str, args: argparse.Namespace) -> Figure:
    rng = RowFactory(seed=args.seed).rng
    pool = [rng.randbytes(args.message_bytes) for _ in range(1024)]
    keys = struct.Struct(">q")
    producer = KafkaProducer(
        bootstrap_servers=servers,
        client_id="bench-producer",
        acks="all",
        enable_idempotence=True,
        linger_ms=args.linger_ms,
        batch_size=args.producer_batch_bytes,
        max_block_ms=120_000,
    )
    try:
        producer.partitions_for(topic)  # metadata fetched before the clock starts
        print(f"producing {args.messages:,} messages ...", file=sys.stderr)
        t0 = time.perf_counter()
        send = producer.send
        for i in range(args.messages):
            send(topic, key=keys.pack(i), value=pool[i & 1023])
        queued = time.perf_counter() - t0
        producer.flush(timeout=600)
        seconds = time.perf_counter() - t0
    finally:
        producer.close(timeout=30)
    return Figure(
        "kafka_produce",
        f"acks=all idempotent linger={args.linger_ms}ms "
        f"batch={args.producer_batch_bytes // 1024}KiB",
        args.messages,
        seconds,
        args.messages * (args.message_bytes + 8),
        note=f"{args.message_bytes} B value + 8 B key",
        extra={"send_loop_s": round(queued, 2)},
    )


def end_offsets(servers: list[str], topic: str, partitions: int) -> int:
    consumer = KafkaConsumer(bootstrap_servers=servers, client_id="bench-offsets")
    try:
        offsets = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return int(sum(offsets.values()))
    finally:
        consumer.close()


def consume(servers: list[str], topic: str, group: str, args: argparse.Namespace) -> Figure:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=servers,
        client_id="bench-consumer",
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=args.max_poll_records,
    )
    count = nbytes = 0
    first: float | None = None
    try:
        print(f"consuming {args.messages:,} messages ...", file=sys.stderr)
        t0 = time.perf_counter()
        deadline = t0 + args.consume_timeout_s
        while count < args.messages and time.perf_counter() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                if first is None:
                    first = time.perf_counter()
                count += len(records)
                for record in records:
                    nbytes += len(record.value)
        consumer.commit()
        seconds = time.perf_counter() - t0
    finally:
        consumer.close()
    if count < args.messages:
        raise RuntimeError(f"consumed {count} of {args.messages} messages before the time-out")
    join = (first - t0) if first is not None else 0.0
    return Figure(
        "kafka_consume",
        f"group, max_poll_records={args.max_poll_records}, manual commit",
        count,
        seconds,
        nbytes,
        note="incl. group join",
        extra={
            "join_to_first_record_s": round(join, 2),
            "after_first_record_per_s": round(count / (seconds - join), 1)
            if seconds > join
            else float("nan"),
        },
    )


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows per COPY-in (default 1M)")
    p.add_argument(
        "--copy-methods",
        nargs="+",
        default=["text_write_row", "binary_write_row", "text_preformatted"],
        choices=["text_write_row", "binary_write_row", "text_preformatted"],
        help="COPY-in variants; the last one's table is kept for COPY-out and the upserts",
    )
    p.add_argument(
        "--upsert-rows", type=int, default=250_000, help="rows upserted per method (250k)"
    )
    p.add_argument("--batch-size", type=int, default=5_000, help="upsert batch size (5000)")
    p.add_argument(
        "--upsert-methods", nargs="+", default=list(UPSERT_METHODS), choices=UPSERT_METHODS
    )
    p.add_argument(
        "--insert-share",
        type=float,
        default=0.05,
        help="keys drawn from 1..rows*(1+share), so about this share are inserts (0.05)",
    )
    p.add_argument("--messages", type=int, default=1_000_000, help="Kafka messages (1M)")
    p.add_argument("--message-bytes", type=int, default=200)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--linger-ms", type=int, default=10)
    p.add_argument("--producer-batch-bytes", type=int, default=256 * 1024)
    p.add_argument("--max-poll-records", type=int, default=500)
    p.add_argument("--consume-timeout-s", type=float, default=900.0)
    p.add_argument("--skip-pg", action="store_true")
    p.add_argument("--skip-kafka", action="store_true")
    p.add_argument(
        "--database",
        choices=["source", "target"],
        default="target",
        help="which of the two databases to use (default target; one cluster holds both)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    return p.parse_args(argv)


def run_inside_dev_stack(argv: Sequence[str]) -> int:
    """Start the dev stack with the library, rerun this script inside it, stop what started."""
    from dualwrite.devstack import DevStackSettings, run_with_stack

    settings = DevStackSettings.from_env()
    print(
        f"no service URLs in the environment: starting the dev stack in {settings.state_dir}",
        file=sys.stderr,
    )
    return run_with_stack(
        settings,
        [sys.executable, os.path.abspath(__file__), *argv],
        progress=lambda msg: print(msg, file=sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    needed = [v for v in SERVICE_VARS if not os.environ.get(v)]
    if needed:
        return run_inside_dev_stack(sys.argv[1:] if argv is None else list(argv))

    figures: list[Figure] = []
    info: dict[str, Any] = {"machine": machine_info()}
    t0 = time.perf_counter()
    if not args.skip_pg:
        url = libpq_url(os.environ[f"DUALWRITE_{args.database.upper()}_URL"])
        pg_figures, info["postgres"] = pg_ceilings(url, args)
        figures += pg_figures
    if not args.skip_kafka:
        kafka_figures, info["kafka"] = kafka_ceilings(os.environ["DUALWRITE_KAFKA_BOOTSTRAP"], args)
        figures += kafka_figures
    info["total_s"] = round(time.perf_counter() - t0, 1)

    print_table(
        "Raw ceilings (higher is better)",
        ["what", "method", "count", "seconds", "per s", "MiB/s", "notes"],
        [
            (
                f.name,
                f.method,
                f.count,
                f.seconds,
                f.per_s,
                f.mib_per_s if f.nbytes else None,
                "; ".join([f.note] * bool(f.note) + [f"{k}={v}" for k, v in f.extra.items()]),
            )
            for f in figures
        ],
    )
    details = {k: v for k, v in info.items() if k != "machine"}
    print(f"\ndetails: {details}")
    m = info["machine"]
    print(
        f"machine: {m['nproc']} cores {m['cpu_model']}, load {m['loadavg_1m']:.2f}, "
        f"psycopg {m['psycopg']}, kafka-python {m['kafka-python']} "
        f"(crc32c C extension: {m['crc32c_c_extension']})"
    )
    if args.json:
        emit_json({"benchmark": "ceilings", **info, "figures": [f.as_dict() for f in figures]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
