"""Shared helpers of the benchmark scripts: tables, timing, process memory, sample rows.

Not part of the ``dualwrite`` package; the scripts import it as a sibling module
(``python bench/NAME.py`` puts ``bench/`` first on ``sys.path``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import random
import re
import statistics
import string
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

# --- output --------------------------------------------------------------------------------


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a plain fixed-width table; numbers right-aligned, text left-aligned."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [
        all(isinstance(row[i], int | float) for row in rows if row[i] is not None) and bool(rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    print(f"\n{title}")
    print(line(list(headers)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def emit_json(payload: dict[str, Any]) -> None:
    """One JSON line on stdout (the ``--json`` output of every script)."""
    print(json.dumps(payload, default=str, sort_keys=True))


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` holds the elapsed seconds."""
    box = [0.0]
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - t0


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- machine -------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (read at run time, not assumed)."""
    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mem_total_gib": round(_meminfo_kib("MemTotal") / 1024 / 1024, 1),
        "loadavg_1m": os.getloadavg()[0],
    }
    for name in ("psycopg", "kafka-python", "SQLAlchemy"):
        info[name] = _dist_version(name)
    info["crc32c_c_extension"] = _crc32c_accelerated()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _crc32c_accelerated() -> bool:
    """kafka-python checksums record batches with the ``crc32c`` C extension when present,
    else with a pure-Python loop (a large share of producer and consumer CPU)."""
    try:
        from kafka.record import util
    except ImportError:
        return False
    return getattr(util, "crc32c_c", None) is not None


def tool_version(argv: Sequence[str]) -> str:
    """First line of a tool's version output (java prints to stderr)."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (result.stdout + result.stderr).strip().splitlines()
    return re.sub(r"\x1b\[[0-9;]*m", "", text[0]) if text else "unknown"


# --- process memory ------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """Memory of a process tree, in MiB.

    ``rss`` is the sum of VmRSS; for PostgreSQL it counts the shared buffers once per process
    that touched them. ``pss`` (proportional set size, from smaps_rollup) splits shared pages
    between the processes sharing them, so its sum is the tree's real footprint.
    """

    processes: int
    rss_mib: float
    pss_mib: float | None


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/*/stat parent pids)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        parents[int(entry.name)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        nxt = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree.extend(nxt)
        frontier = nxt
    return tree


def tree_memory(root: int) -> Memory:
    """VmRSS (and PSS where readable) summed over ``root`` and all its descendants."""
    rss_kib = 0
    pss_kib: int | None = 0
    count = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if match is None:
            continue
        count += 1
        rss_kib += int(match.group(1))
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            pss = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
            if pss is not None and pss_kib is not None:
                pss_kib += int(pss.group(1))
        except OSError:
            pss_kib = None
    return Memory(count, rss_kib / 1024, None if pss_kib is None else pss_kib / 1024)


# --- a realistic row -----------------------------------------------------------------------

TABLE_COLUMNS = "id, email, full_name, status, note, amount, updated_at"


def table_ddl(name: str, temp: bool = False) -> str:
    """A row shaped like a typical OLTP entity: ~170 bytes of COPY text per row."""
    kind = "TEMP TABLE" if temp else "TABLE"
    return (
        f"CREATE {kind} {name} ("
        "id bigint PRIMARY KEY, "
        "email text NOT NULL, "
        "full_name text NOT NULL, "
        "status text NOT NULL, "
        "note text, "
        "amount numeric(12,2) NOT NULL, "
        "updated_at timestamptz NOT NULL)"
    )


UPSERT_SET = (
    "email = EXCLUDED.email, full_name = EXCLUDED.full_name, status = EXCLUDED.status, "
    "note = EXCLUDED.note, amount = EXCLUDED.amount, updated_at = EXCLUDED.updated_at"
)

Row = tuple[int, str, str, str, str, Decimal, dt.datetime]

_STATUSES = ("active", "pending", "suspended", "closed")
_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


class RowFactory:
    """Deterministic pseudo-random rows; pools of words keep generation cheap."""

    def __init__(self, seed: int = 42) -> None:
        self.rng = random.Random(seed)
        letters = string.ascii_lowercase
        self._words = [
            "".join(self.rng.choices(letters, k=self.rng.randint(3, 9))) for _ in range(512)
        ]
        self._notes = [
            " ".join(self.rng.choices(self._words, k=self.rng.randint(8, 14))) for _ in range(4096)
        ]

    def row(self, key: int) -> Row:
        rng, words = self.rng, self._words
        first, last = rng.choice(words), rng.choice(words)
        return (
            key,
            f"{first}.{last}{key}@example.com",
            f"{first.title()} {last.title()}",
            rng.choice(_STATUSES),
            rng.choice(self._notes),
            Decimal(rng.randint(0, 99_999_999)) / 100,
            _EPOCH
            + dt.timedelta(
                seconds=rng.randint(0, 60_000_000), microseconds=rng.randint(0, 999_999)
            ),
        )

    def rows(self, keys: Sequence[int] | range) -> list[Row]:
        return [self.row(k) for k in keys]


def copy_text(rows: Sequence[Row]) -> bytes:
    """The rows in PostgreSQL's COPY text format (no value here needs escaping)."""
    return "".join(
        f"{r[0]}\t{r[1]}\t{r[2]}\t{r[3]}\t{r[4]}\t{r[5]}\t{r[6].isoformat()}\n" for r in rows
    ).encode()


def libpq_url(url: str) -> str:
    """A SQLAlchemy ``postgresql+psycopg://`` URL as a plain libpq URL."""
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)
