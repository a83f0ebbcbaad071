"""Helpers shared by the worker benchmarks on the shop example (apply_throughput, e2e_lag):
unique schema names, a throw-away migration file, setting up and removing the source and
target schemas, resetting the worker's consumer group, and running a worker child process.

Not part of the ``dualwrite`` package; the scripts import it as a sibling module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from _benchlib import libpq_url
from psycopg import sql
from sqlalchemy import Engine

REPO = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "_worker_child.py"


def repo_on_path() -> None:
    """``examples.shop`` is imported relative to the repository root (as the CLI does)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class ShopNames:
    """Unique names for one benchmark run: schemas, capture schema, topic prefix."""

    tag: str
    source_schema: str
    capture_schema: str
    topic_prefix: str

    @classmethod
    def new(cls, prefix: str) -> ShopNames:
        tag = f"{prefix}_{uuid.uuid4().hex[:6]}"
        return cls(tag, f"legacy_{tag}", f"dwcap_{tag}", f"bench.{tag}")

    def target_schema(self, variant: str = "") -> str:
        return f"shop_{self.tag}{'_' + variant if variant else ''}"

    @property
    def changes_topic(self) -> str:
        return f"{self.topic_prefix}.changes"

    @property
    def group(self) -> str:
        return f"{self.topic_prefix}.worker"

    @property
    def topics(self) -> list[str]:
        return [self.changes_topic, f"{self.topic_prefix}.dlq"]


def migration_text(
    names: ShopNames,
    *,
    target_schema: str,
    source_url: str,
    target_url: str,
    bootstrap: str,
    relay_batch_size: int = 5000,
    idle_poll_ms: int = 50,
    partitions: int = 8,
) -> str:
    """The shop example's migration file (examples/shop/migration.toml) with unique names."""
    repo_on_path()
    from examples.shop.workload import tables_toml

    servers = ", ".join(f'"{s}"' for s in bootstrap.split(","))
    src, tgt = names.source_schema, target_schema
    return f"""name = "{names.tag}"
[source]
url = "{source_url}"
[target]
url = "{target_url}"
[kafka]
bootstrap_servers = [{servers}]
topic_prefix = "{names.topic_prefix}"
[transform]
module = "examples.shop.transform"
[capture]
schema = "{names.capture_schema}"
[relay]
batch_size = {relay_batch_size}
idle_poll_ms = {idle_poll_ms}
topic_partitions = {partitions}
{tables_toml(src, tgt)}"""


def drop_target(url: str, schema: str, source_schema: str) -> None:
    """Drop a target schema and its rows of the worker's bookkeeping, then vacuum those."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        if conn.execute("SELECT to_regclass('dualwrite.applied')").fetchone() != (None,):
            conn.execute(
                "DELETE FROM dualwrite.applied WHERE target_table LIKE %s", (f"{schema}.%",)
            )
            conn.execute(
                "DELETE FROM dualwrite.source_positions WHERE source_table LIKE %s",
                (f"{source_schema}.%",),
            )
            conn.execute("VACUUM (ANALYZE) dualwrite.applied")


def drop_source(engine: Engine, config: Any, names: ShopNames) -> None:
    from dualwrite.capture import uninstall

    with contextlib.suppress(Exception):
        uninstall(engine, config, force=True)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{names.source_schema}" CASCADE')
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{names.capture_schema}" CASCADE')


def reset_group(bootstrap: str, group: str) -> None:
    """Delete the worker's consumer group, so the next worker starts at the earliest offsets."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="bench-admin")
    try:
        with contextlib.suppress(Exception):
            admin.delete_groups([group])
    finally:
        admin.close()


def topic_messages(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), client_id="bench-offsets")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return int(sum(ends.values()))
    finally:
        consumer.close()


def split(total: int, weights: dict[str, float]) -> dict[str, int]:
    """``total`` split by ``weights`` with cumulative rounding (the parts add up exactly)."""
    out: dict[str, int] = {}
    acc, given, whole = 0.0, 0, sum(weights.values())
    for name, w in weights.items():
        acc += w / whole * total
        out[name] = round(acc) - given
        given += out[name]
    return out


# --- the worker child process ----------------------------------------------------------------


def child_argv(
    migration: Path,
    *,
    batch_size: int,
    mode: str = "drain",
    out: Path | None = None,
    instrument: bool = False,
    linger_ms: int = 100,
) -> list[str]:
    argv = [
        sys.executable,
        str(CHILD),
        str(migration),
        "--batch-size",
        str(batch_size),
        "--linger-ms",
        str(linger_ms),
        "--mode",
        mode,
    ]
    if out is not None:
        argv += ["--out", str(out)]
    if instrument:
        argv.append("--instrument")
    return argv


def py_spy_argv(profile_out: Path, rate: int, argv: Sequence[str]) -> list[str]:
    """``py-spy record`` around ``argv``: raw collapsed stacks, idle samples included."""
    spy = Path(sys.executable).parent / "py-spy"
    return [
        str(spy),
        "record",
        "--format",
        "raw",
        "--idle",
        "--nonblocking",
        "--rate",
        str(rate),
        "--output",
        str(profile_out),
        "--",
        *argv,
    ]


def run_child(argv: Sequence[str], log_path: Path) -> dict[str, Any]:
    """Run a worker child to completion; its last stdout line is its JSON report."""
    with log_path.open("w") as err:
        proc = subprocess.run(
            list(argv), stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO, check=False
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"worker child failed (exit {proc.returncode}):\n{tail}")
    report: dict[str, Any] = json.loads(lines[-1])
    return report


# --- py-spy collapsed stacks -> where the time goes ------------------------------------------

# (category, regex on one frame "function (file:line)"); the deepest matching frame decides.
PROFILE_CATEGORIES: list[tuple[str, str]] = [
    ("worker: other (loop, metrics, per-batch Python)", r"^run_worker \("),
    ("Kafka: poll (fetch wait, record decoding, Message objects)", r"^_poll \(.*worker\.py"),
    ("Kafka: offset commit", r"^Consumer\.commit \("),
    (
        "Kafka: idle check (group_lag) + close",
        r"^(_group_caught_up|Consumer\.close|Producer\.close) \(",
    ),
    ("worker: waiting for the apply thread", r"^Future\.result \("),
    ("Kafka: dead letters + offset commit", r"^_publish_and_commit \(.*worker\.py"),
    ("worker: prepare loop (keys, results)", r"^_prepare \(.*worker\.py"),
    ("worker: batch prep (quarantine SELECT, keys, parking)", r"^_process \(.*worker\.py"),
    ("envelope: validation + ChangeEvent", r"^decode_event \("),
    ("envelope: JSON parse (json.loads + number hooks)", r"^parse_json \("),
    ("envelope: typed value decoding (_decode_row)", r"^_decode_row \("),
    ("transform (registry + examples/shop/transform.py)", r"^Transforms\.apply \("),
    ("apply: op list, positions, COMMIT", r"^(_apply_all|_positions) \(.*worker\.py"),
    ("apply: collapse newest per key, sort, key_text", r"^Applier\.(apply|_apply) \("),
    ("bookkeeping: COPY _dw_ops + upsert dualwrite.applied", r"^Applier\._claim \("),
    ("bookkeeping: source_positions upsert", r"^Applier\._record_positions \("),
    (
        "target: INSERT ... ON CONFLICT / DELETE statements",
        r"^Applier\.(_write|_delete_owned|_info) \(",
    ),
    ("target: COPY into staging (incl. CREATE/TRUNCATE)", r"^Applier\._stage \("),
    ("target: value adaptation (_adapt)", r"^_adapt \(.*apply\.py"),
]
"""(category, regex on one frame ``Class.function (file:line)``); the deepest match decides."""

WAIT_LEAVES = re.compile(
    r"^(Condition\.wait|Event\.wait|EpollSelector\.select|Connection\.wait|select|sleep|"
    r"Connection\._wait_gen|wait_c|wait) \("
)
"""Leaf frames where the thread waits (GIL released): I/O, the server, another thread."""


def categorise_profile(path: Path) -> dict[str, Any]:
    """Samples per category of the main thread's stacks (those under ``run_worker``) and of
    the apply thread's (under ``_Target.process``), each split into waiting (leaf frame
    blocks: server, network, another thread) and running Python; plus how busy the other
    threads (kafka-python's network thread) were."""
    compiled = [(name, re.compile(rx)) for name, rx in PROFILE_CATEGORIES]
    per: dict[str, list[int]] = {}
    main = total = apply_thread = 0
    threads: dict[str, list[int]] = {}
    on_apply: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or not stack.strip():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        waiting = bool(WAIT_LEAVES.search(frames[-1]))
        if any(f.startswith("_Target.process (") for f in frames):
            apply_thread += count
            category = "apply thread: other"
            for frame in frames:
                for name, rx in compiled:
                    if rx.search(frame):
                        category = f"apply thread: {name}"
            entry = on_apply.setdefault(category, [0, 0])
            entry[0] += count
            entry[1] += count if waiting else 0
            continue
        if not any(f.startswith("run_worker (") for f in frames):
            if frames[0].startswith("<module>"):
                root = "main thread outside run_worker (imports, set-up)"
            else:
                root = next(
                    (f.split(" (")[0] for f in frames if "run" in f and "Thread." not in f),
                    "truncated stacks",
                )
            entry = threads.setdefault(root, [0, 0])
            entry[0] += count
            entry[1] += 0 if waiting else count
            continue
        main += count
        category = "outside run_worker"
        for frame in frames:
            for name, rx in compiled:
                if rx.search(frame):
                    category = name
        entry = per.setdefault(category, [0, 0])
        entry[0] += count
        entry[1] += count if waiting else 0
    return {
        "samples_main_thread": main,
        "samples_all": total,
        "main": {
            k: {"share": round(v[0] / main, 4), "waiting_share": round(v[1] / main, 4)}
            for k, v in sorted(per.items(), key=lambda kv: -kv[1][0])
        },
        "samples_apply_thread": apply_thread,
        "apply_thread": {
            k: {
                "share": round(v[0] / apply_thread, 4),
                "waiting_share": round(v[1] / apply_thread, 4),
            }
            for k, v in sorted(on_apply.items(), key=lambda kv: -kv[1][0])
        },
        "other_threads": {
            k: {"samples": v[0], "busy_share": round(v[1] / v[0], 4)} for k, v in threads.items()
        },
    }


def env_urls() -> tuple[str, str, str]:
    return (
        os.environ["DUALWRITE_SOURCE_URL"],
        os.environ["DUALWRITE_TARGET_URL"],
        os.environ["DUALWRITE_KAFKA_BOOTSTRAP"],
    )
