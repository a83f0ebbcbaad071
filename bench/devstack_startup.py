"""How long ``dualwrite dev up`` takes, and how much memory the two services hold.

Runs the real CLI (``dualwrite dev up --json``) as a subprocess and measures its wall time:

(a) cold, empty jar cache: a fresh DUALWRITE_CACHE_DIR, so Maven downloads the Kafka broker
    jars (and the maven-dependency-plugin it needs) from Maven Central, plus initdb and
    Kafka storage format;
(b) cold, jar cache present: a fresh DUALWRITE_DEV_DIR each time, so initdb and the Kafka
    format still run, but no download;
(c) warm: ``up`` again while both services run (a health check that starts nothing).

Each run also reads the resident memory (VmRSS from /proc/<pid>/status; for PostgreSQL the
postmaster and all its children summed, with PSS beside it since the sum counts shared buffers
once per process) right after start, and on the last (b) run again after a light load: a COPY,
an UPDATE of every row and a Kafka produce/consume round. ``dualwrite dev down --wipe`` is timed
too. Everything started here is stopped in a ``finally``; the temporary folders are deleted.

Ports come from DUALWRITE_PG_PORT / DUALWRITE_KAFKA_PORT / DUALWRITE_KAFKA_CONTROLLER_PORT and
must be free (stop any stack on them first). ``OS page cache`` is not dropped: "cold" means a
fresh state folder, not cold disks.

    .venv/bin/python bench/devstack_startup.py                 # 1 (a), 3 (b), 5 (c) runs
    .venv/bin/python bench/devstack_startup.py --cold-cache-runs 0 --cached-runs 1 --warm-runs 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
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
from _benchlib import (
    TABLE_COLUMNS,
    Memory,
    RowFactory,
    emit_json,
    libpq_url,
    machine_info,
    median,
    print_table,
    stopwatch,
    table_ddl,
    tree_memory,
)
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from dualwrite.devstack import DevStackSettings

PG_TYPES = ["int8", "text", "text", "text", "text", "numeric", "timestamptz"]


@dataclass
class UpRun:
    """One timed ``dualwrite dev up``."""

    kind: str  # cold-empty-cache | cold-cached | warm
    wall_s: float
    reported_s: float | None  # the ``elapsed_s`` that ``up --json`` itself reports
    started: list[str]
    phases: dict[str, float] = field(default_factory=dict)
    down_s: float | None = None
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)


class Stack:
    """One dev stack in its own state folder, driven through the CLI."""

    def __init__(self, dualwrite: str, state_dir: Path, cache_dir: Path) -> None:
        self.dualwrite = dualwrite
        self.state_dir, self.cache_dir = state_dir, cache_dir
        self.env = {
            **os.environ,
            "DUALWRITE_DEV_DIR": str(state_dir),
            "DUALWRITE_CACHE_DIR": str(cache_dir),
        }
        for var in ("DUALWRITE_SOURCE_URL", "DUALWRITE_TARGET_URL", "DUALWRITE_KAFKA_BOOTSTRAP"):
            self.env.pop(var, None)
        self.settings = DevStackSettings.from_env(self.env)

    def up(self, kind: str) -> UpRun:
        """Run ``dualwrite dev up --json``; time it and the gaps between its progress lines."""
        t0, wall_t0 = time.perf_counter(), time.time()
        proc = subprocess.Popen(
            [self.dualwrite, "dev", "up", "--json"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stderr is not None and proc.stdout is not None
        marks: list[tuple[float, str]] = []
        for line in proc.stderr:
            marks.append((time.perf_counter() - t0, line.strip()))
        stdout = proc.stdout.read()
        code = proc.wait()
        wall = time.perf_counter() - t0
        if code != 0:
            log = "\n".join(m for _, m in marks)
            raise RuntimeError(f"dualwrite dev up failed (exit {code}):\n{log}\n{stdout}")
        result = json.loads(stdout)
        return UpRun(
            kind=kind,
            wall_s=wall,
            reported_s=result.get("elapsed_s"),
            started=list(result.get("started", [])),
            phases={**_phases(marks, wall), **self._milestones(wall_t0)},
        )

    def _milestones(self, wall_t0: float) -> dict[str, float]:
        """Seconds from the start of ``up`` to files that mark the end of each one-off step,
        when ``up`` wrote them during this call: the Maven fetch's ``.complete`` marker, the
        ``postgresql.conf`` that is appended right after initdb, Kafka's ``meta.properties``."""
        location = self.state_dir / "postgres.location"
        pg_home = (
            Path(location.read_text().strip()) if location.exists() else self.state_dir / "postgres"
        )
        files = {
            "jars_fetched_at_s": self.cache_dir
            / f"kafka-{self.settings.kafka_version}"
            / ".complete",
            "initdb_done_at_s": pg_home / "data" / "postgresql.conf",
            "kafka_formatted_at_s": self.state_dir / "kafka" / "data" / "meta.properties",
        }
        out: dict[str, float] = {}
        for name, path in files.items():
            with contextlib.suppress(OSError):
                at = path.stat().st_mtime - wall_t0
                if at >= 0:
                    out[name] = round(at, 2)
        return out

    def down(self, wipe: bool = True) -> float:
        argv = [self.dualwrite, "dev", "down"] + (["--wipe"] if wipe else [])
        with stopwatch() as t:
            subprocess.run(argv, env=self.env, capture_output=True, check=False)
        return t[0]

    def pids(self) -> dict[str, int]:
        result = subprocess.run(
            [self.dualwrite, "dev", "status", "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        services = json.loads(result.stdout)["services"]
        return {s["name"]: int(s["pid"]) for s in services if s.get("pid")}

    def memory(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(tree_memory(pid)) for name, pid in self.pids().items()}


def _phases(marks: Sequence[tuple[float, str]], wall: float) -> dict[str, float]:
    """Split the wall time at the CLI's progress lines (``postgres: starting``, ``kafka: ...``)."""
    t_pg = next((t for t, m in marks if m.startswith("postgres:")), None)
    t_kafka = next((t for t, m in marks if m.startswith("kafka:")), None)
    if t_pg is None or t_kafka is None:
        return {}
    return {
        "cli_start_s": round(t_pg, 2),
        "postgres_s": round(t_kafka - t_pg, 2),
        "kafka_s": round(wall - t_kafka, 2),
    }


def light_load(
    stack: Stack, rows: int, messages: int
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """A small realistic load: COPY + UPDATE in PostgreSQL, produce + consume in Kafka.

    Returns the load's durations and the memory read at its end, while the PostgreSQL
    connection is still open (so that its backend process is counted).
    """
    settings = stack.settings
    suffix = uuid.uuid4().hex[:8]
    table, topic = f"bench_startup_{suffix}", f"bench.startup.{suffix}"
    timings: dict[str, float] = {}
    data = RowFactory().rows(range(1, rows + 1))
    with psycopg.connect(libpq_url(settings.database_url("source"))) as conn:
        try:
            conn.execute(table_ddl(table))
            with stopwatch() as t, conn.cursor() as cur:
                with cur.copy(f"COPY {table} ({TABLE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(PG_TYPES)
                    for row in data:
                        cp.write_row(row)
                conn.commit()
                cur.execute(f"UPDATE {table} SET amount = amount + 1, updated_at = now()")
                conn.commit()
                cur.execute(f"SELECT count(*), sum(amount) FROM {table}")
                cur.fetchone()
                conn.commit()
            timings["pg_copy_update_s"] = round(t[0], 2)
            timings["kafka_produce_consume_s"] = round(_kafka_round(settings, topic, messages), 2)
            memory = stack.memory()
        finally:
            conn.rollback()
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.commit()
    return timings, memory


def _kafka_round(settings: DevStackSettings, topic: str, messages: int) -> float:
    servers = [settings.kafka_bootstrap]
    admin = KafkaAdminClient(bootstrap_servers=servers, client_id="bench-startup")
    try:
        admin.create_topics([NewTopic(topic, 4, 1)], timeout_ms=30_000, wait_for_metadata=True)
        with stopwatch() as t:
            producer = KafkaProducer(
                bootstrap_servers=servers, acks="all", enable_idempotence=True, linger_ms=10
            )
            value = os.urandom(200)
            for i in range(messages):
                producer.send(topic, key=i.to_bytes(8, "big"), value=value)
            producer.flush(timeout=300)
            producer.close()
            consumer = KafkaConsumer(
                topic,
                bootstrap_servers=servers,
                group_id=f"{topic}-group",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            seen, deadline = 0, time.monotonic() + 300
            while seen < messages and time.monotonic() < deadline:
                seen += sum(len(r) for r in consumer.poll(timeout_ms=1000).values())
            consumer.commit()
            consumer.close()
        return t[0]
    finally:
        with contextlib.suppress(Exception):
            admin.delete_topics([topic], timeout_ms=30_000)
        admin.close()


def cache_mib(cache_dir: Path) -> float:
    total = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file())
    return round(total / 1024 / 1024, 1)


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def find_dualwrite() -> str:
    beside = Path(sys.executable).with_name("dualwrite")
    if beside.exists():
        return str(beside)
    found = shutil.which("dualwrite")
    if found is None:
        raise SystemExit("cannot find the `dualwrite` command (install the project first)")
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cold-cache-runs", type=int, default=1, help="(a) runs, empty jar cache (1)")
    p.add_argument("--cached-runs", type=int, default=3, help="(b) runs, jar cache present (3)")
    p.add_argument("--warm-runs", type=int, default=5, help="(c) `up` on a running stack (5)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="populated jar cache for (b); default: the one (a) just filled, else "
        "DUALWRITE_CACHE_DIR",
    )
    p.add_argument("--tmp-root", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--load-rows", type=int, default=200_000, help="light load: rows (200k)")
    p.add_argument("--load-messages", type=int, default=100_000, help="light load: msgs (100k)")
    p.add_argument("--skip-load", action="store_true")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dualwrite = find_dualwrite()
    base = DevStackSettings.from_env()
    busy = [
        port
        for port in (base.pg_port, base.kafka_port, base.kafka_controller_port)
        if port_in_use(port)
    ]
    if busy:
        print(f"ports {busy} are in use; stop that stack or set DUALWRITE_*_PORT", file=sys.stderr)
        return 2

    runs: list[UpRun] = []
    info: dict[str, Any] = {
        "machine": machine_info(),
        "ports": [base.pg_port, base.kafka_port, base.kafka_controller_port],
        "kafka_heap_mb": base.kafka_heap_mb,
    }
    temp_dirs: list[Path] = []
    stacks: list[Stack] = []

    def fresh(prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=args.tmp_root))
        temp_dirs.append(path)
        return path

    def one_cold(kind: str, cache_dir: Path, last: bool) -> None:
        stack = Stack(dualwrite, fresh("bench-startup-dev-"), cache_dir)
        stacks.append(stack)
        print(f"{kind}: dualwrite dev up (state {stack.state_dir}) ...", file=sys.stderr)
        run = stack.up(kind)
        if sorted(run.started) != ["kafka", "postgres"]:
            raise RuntimeError(f"expected a cold start of both services, got {run.started}")
        run.memory["after_start"] = stack.memory()
        runs.append(run)
        if last:
            for _ in range(args.warm_runs):
                warm = stack.up("warm")
                if warm.started:
                    raise RuntimeError(f"warm `up` started {warm.started}")
                runs.append(warm)
            if not args.skip_load:
                print("light load ...", file=sys.stderr)
                info["light_load"], run.memory["after_light_load"] = light_load(
                    stack, args.load_rows, args.load_messages
                )
        run.down_s = stack.down(wipe=True)
        stacks.remove(stack)

    try:
        cache_dir: Path | None = args.cache_dir
        for i in range(args.cold_cache_runs):
            cold_cache = fresh("bench-startup-cache-")
            last = args.cached_runs == 0 and i == args.cold_cache_runs - 1
            one_cold("cold-empty-cache", cold_cache, last)
            info["downloaded_cache_mib"] = cache_mib(cold_cache)
            if cache_dir is None and i == args.cold_cache_runs - 1:
                cache_dir = cold_cache
        if cache_dir is None:
            cache_dir = base.cache_dir
        info["cached_runs_cache_dir"] = str(cache_dir)
        for i in range(args.cached_runs):
            one_cold("cold-cached", cache_dir, i == args.cached_runs - 1)
    finally:
        for stack in stacks:
            with contextlib.suppress(Exception):
                stack.down(wipe=True)
        for path in temp_dirs:
            shutil.rmtree(path, ignore_errors=True)

    report(runs, info)
    if args.json:
        emit_json({"benchmark": "devstack_startup", **info, "runs": [asdict(r) for r in runs]})
    return 0


def report(runs: Sequence[UpRun], info: dict[str, Any]) -> None:
    rows: list[tuple[object, ...]] = []
    for r in runs:
        cold = r.kind != "warm"
        ph = r.phases
        rows.append(
            (
                r.kind,
                r.wall_s,
                r.reported_s,
                ph.get("cli_start_s"),
                ph.get("postgres_s") if cold else None,
                ph.get("initdb_done_at_s") if cold else None,
                ph.get("kafka_s") if cold else None,
                ph.get("jars_fetched_at_s") if cold else None,
                ph.get("kafka_formatted_at_s") if cold else None,
                r.down_s,
            )
        )
    print_table(
        "dualwrite dev up: seconds (phases split at the CLI's progress lines; '@' columns are "
        "seconds since the start at which a step's output file appeared)",
        [
            "run",
            "wall",
            "up's own",
            "CLI start",
            "postgres",
            "@initdb done",
            "kafka",
            "@jars fetched",
            "@kafka formatted",
            "down --wipe",
        ],
        rows,
    )
    summary = []
    for kind in ("cold-empty-cache", "cold-cached", "warm"):
        walls = [r.wall_s for r in runs if r.kind == kind]
        if walls:
            summary.append((kind, len(walls), min(walls), median(walls), max(walls)))
    print_table("summary", ["run", "n", "min s", "median s", "max s"], summary)

    mem_rows: list[tuple[object, ...]] = []
    for r in runs:
        for moment, services in r.memory.items():
            for name, m in services.items():
                mem = Memory(**m)
                mem_rows.append((r.kind, moment, name, mem.processes, mem.rss_mib, mem.pss_mib))
    print_table(
        "resident memory in MiB (postgres = postmaster + children; PSS splits shared pages)",
        ["run", "when", "service", "procs", "RSS MiB", "PSS MiB"],
        mem_rows,
    )
    extra = {k: v for k, v in info.items() if k != "machine"}
    print(f"\ndetails: {extra}")


if __name__ == "__main__":
    sys.exit(main())
