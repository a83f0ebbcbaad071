"""Helpers shared by the capture and relay benchmarks (capture_overhead, relay_throughput,
relay_lag): the dev stack, throw-away migration files, capture clean-up, percentiles.

Not part of the ``dualwrite`` package; the scripts import it as a sibling module.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dualwrite.config import MigrationConfig, parse_migration
from dualwrite.kafka_io import Producer

SERVICE_VARS = ("DUALWRITE_SOURCE_URL", "DUALWRITE_TARGET_URL", "DUALWRITE_KAFKA_BOOTSTRAP")

# A realistic OLTP row (same shape as _benchlib.table_ddl), filled by SQL alone so that a
# million rows load in seconds: ~170 bytes of row_to_json per row.
ROW_SELECT = (
    "SELECT g, 'user' || g || '@example.com', 'Name' || (g % 9973) || ' Surname' || (g % 7919), "
    "(ARRAY['active','pending','suspended','closed'])[1 + g % 4], "
    "'note ' || md5(g::text) || ' ' || left(md5((g * 7)::text), 20), "
    "((g * 7919) % 10000000) / 100.0, "
    "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'"
)


def missing_services() -> list[str]:
    return [v for v in SERVICE_VARS if not os.environ.get(v)]


def run_inside_dev_stack(script: str, argv: Sequence[str]) -> int:
    """Start the dev stack with the library, rerun ``script`` inside it, stop what started."""
    from dualwrite.devstack import DevStackSettings, run_with_stack

    settings = DevStackSettings.from_env()
    print(
        f"no service URLs in the environment: starting the dev stack in {settings.state_dir}",
        file=sys.stderr,
    )
    return run_with_stack(
        settings,
        [sys.executable, os.path.abspath(script), *argv],
        progress=lambda msg: print(msg, file=sys.stderr),
    )


def migration_text(
    *,
    name: str,
    source_url: str,
    target_url: str,
    bootstrap: str,
    topic_prefix: str,
    capture_schema: str,
    tables: Sequence[str],
    batch_size: int = 5000,
    idle_poll_ms: int = 50,
    partitions: int = 8,
) -> str:
    """A migration file for a benchmark (identity transform, tables keyed by primary key)."""
    servers = ", ".join(f'"{s}"' for s in bootstrap.split(","))
    lines = [
        f'name = "{name}"',
        "[source]",
        f'url = "{source_url}"',
        "[target]",
        f'url = "{target_url}"',
        "[kafka]",
        f"bootstrap_servers = [{servers}]",
        f'topic_prefix = "{topic_prefix}"',
        "[capture]",
        f'schema = "{capture_schema}"',
        "[relay]",
        f"batch_size = {batch_size}",
        f"idle_poll_ms = {idle_poll_ms}",
        f"topic_partitions = {partitions}",
    ]
    for table in tables:
        lines += ["[[tables]]", f'source = "{table}"', f'target = "{table}"']
    return "\n".join(lines) + "\n"


def make_config(text: str, path: str = "<bench>") -> MigrationConfig:
    return parse_migration(text, path, env={})


def with_database(url: str, database: str) -> str:
    """``url`` (SQLAlchemy or libpq form) pointing at another database of the same cluster."""
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


def producer_defaults() -> dict[str, Any]:
    """linger_ms / batch_size / compression of ``dualwrite.kafka_io.Producer``, read from its
    signature so that the raw-producer baseline follows any change of the project's settings."""
    params = inspect.signature(Producer.__init__).parameters
    return {
        "linger_ms": params["linger_ms"].default,
        "batch_size": params["batch_size"].default,
        "compression_type": params["compression"].default,
    }


def delete_topics(bootstrap: str, topics: Sequence[str]) -> None:
    from kafka.admin import KafkaAdminClient

    with contextlib.suppress(Exception):
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="bench-admin")
        try:
            with contextlib.suppress(Exception):
                admin.delete_topics(list(topics), timeout_ms=30_000)
        finally:
            admin.close()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[max(1, min(len(sorted_values), rank)) - 1]


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- CPU accounting ------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """CPU seconds of one process: its own plus its reaped children's (utime..cstime)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[-1].split()
    return sum(int(v) for v in fields[11:15]) / _TICK


def tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and every live descendant (exited ones are in their parent's
    reaped-children counters, so nothing is lost or counted twice)."""
    from _benchlib import process_tree

    return sum(proc_cpu_s(pid) for pid in process_tree(root))


def service_pids() -> dict[str, int]:
    """The dev stack's PostgreSQL and Kafka pids (empty when the stack is not ours)."""
    try:
        from dualwrite.devstack import DevStackSettings, status

        st = status(DevStackSettings.from_env())
    except Exception:
        return {}
    return {s.name: s.pid for s in st.services if s.pid is not None}


def services_cpu_s(pids: dict[str, int]) -> dict[str, float]:
    return {name: tree_cpu_s(pid) for name, pid in pids.items()}
