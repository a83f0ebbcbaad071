"""Segment checksums inside both databases, with descent into the segments that differ.

The key space of one target table is cut into segments by boundary keys taken from one side
(sampled, in that database's key order). Each database XORs the 64-bit canonical hashes of
every row (:mod:`reconcile._sqlcanon`) per segment, with the row count; only segments
whose (count, XOR of hashes) differ are looked into. A differing segment larger than ``leaf_rows`` is
cut again (``fanout`` pieces) and checksummed again, inside its key range only; a small one
is a leaf: both sides send (key, row hash) for it and the keys whose hashes differ, or that
one side lacks, become candidates. When most pieces of a level differ, cutting further does
not pay, and their rows go straight to the leaf comparison (the streaming merge of hashes).

Correctness does not depend on both databases ordering keys alike: a segment is whatever set
of rows a database assigns to it, deterministically; if the two sets differ, the checksums differ
(barring a 2**-64 accident), and a row assigned to different segments on the two sides shows
up as a candidate on both, which the full-row comparison then clears. Candidates are only
candidates: every one is fetched and compared in Python afterwards.

Memory: one level's checksums (at most ``max_segments`` entries) and one leaf range's
(key, hash) pairs per worker.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import sql

from reconcile._canonical import base_type
from reconcile._session import Sessions
from reconcile._sqlcanon import INTEGERS, SqlPlan

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

Bound = tuple[str, ...]  # a key as the text of each key column
Key = tuple[Any, ...]
T = TypeVar("T")


@dataclass
class SegmentStats:
    """What the segment comparison did (for logs and the benchmark)."""

    source_rows: int = 0
    target_rows: int = 0
    segments: int = 0
    differing: int = 0
    leaf_rows_fetched: int = 0
    queries: int = 0
    candidates: list[Key] = field(default_factory=list)


@dataclass(frozen=True)
class Tuning:
    leaf_rows: int = 2000
    max_segments: int = 4096
    fanout: int = 16
    many: float = 0.5  # fraction of differing pieces above which descent stops
    batch_rows: int = 50_000  # rows per leaf query when adjacent leaves are fetched together
    probes: int = 16  # segments checksummed first to guess whether most differ
    parts: int = 4  # heap block ranges per side scanned at once for the first level
    part_blocks: int = 128  # ... of at least this many 8 kB blocks (else fewer parts)
    packed: bool = True  # integer keys: leaf pairs travel as one bytea, compared by numpy
    packed_rows: int = 10_000  # ... for leaf ranges of at least this many (estimated) rows


def _col(name: str) -> sql.Composable:
    return sql.SQL("t.{}").format(sql.Identifier(name))


def _key(plan: SqlPlan, side: str) -> sql.Composable:
    cols = plan.key_columns(side)
    if len(cols) == 1:
        return _col(cols[0])
    return sql.SQL("ROW({})").format(sql.SQL(", ").join(_col(c) for c in cols))


def _literal(plan: SqlPlan, side: str, bound: Bound) -> sql.Composable:
    parts = [
        sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(t))
        for v, t in zip(bound, plan.key_type_names(side), strict=True)
    ]
    return parts[0] if len(parts) == 1 else sql.SQL("ROW({})").format(sql.SQL(", ").join(parts))


def _range(plan: SqlPlan, side: str, lo: Bound | None, hi: Bound | None) -> sql.Composable:
    key = _key(plan, side)
    parts: list[sql.Composable] = []
    if lo is not None:
        parts.append(sql.SQL("{} >= {}").format(key, _literal(plan, side, lo)))
    if hi is not None:
        parts.append(sql.SQL("{} < {}").format(key, _literal(plan, side, hi)))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("TRUE")


def estimate_rows(conn: psycopg.Connection[Any], table: sql.Composable) -> int:
    """The planner's row estimate, or an exact count when the table was never analysed."""
    row = conn.execute(
        sql.SQL("SELECT reltuples::bigint FROM pg_class WHERE oid = {}::regclass").format(
            sql.Literal(table.as_string(conn))
        )
    ).fetchone()
    estimate = -1 if row is None else int(row[0])
    if estimate < 0:
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
        estimate = 0 if count is None else int(count[0])
    conn.commit()
    return estimate


def table_blocks(conn: psycopg.Connection[Any], table: sql.Composable) -> int:
    """The table's heap size in blocks; 0 for what has no heap of its own (a view, a
    partitioned table), which is then scanned as one part."""
    row = conn.execute(
        "SELECT CASE WHEN relkind IN ('r', 'm') THEN pg_relation_size(oid) "
        "/ current_setting('block_size')::bigint ELSE 0 END FROM pg_class WHERE oid = %s::regclass",
        (table.as_string(conn),),
    ).fetchone()
    conn.commit()
    return 0 if row is None else int(row[0])


def _bounds(
    conn: psycopg.Connection[Any],
    plan: SqlPlan,
    side: str,
    pieces: int,
    rows: int,
    lo: Bound | None,
    hi: Bound | None,
) -> list[Bound]:
    """About ``pieces - 1`` boundary keys inside [lo, hi), in this database's key order."""
    if pieces <= 1:
        return []
    cols = plan.key_columns(side)
    keys = sql.SQL(", ").join(_col(c) for c in cols)
    texts = sql.SQL(", ").join(sql.SQL("s.{}::text").format(sql.Identifier(c)) for c in cols)
    s_keys = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in cols)
    sample: sql.Composable = sql.SQL("")
    per_piece = max(1, rows // pieces)
    if lo is None and hi is None and rows > 200_000:
        # a row sample of ~8 keys per piece (uneven pieces would only cost a descent)
        percent = min(100.0, 100.0 * 8 * pieces / rows)
        sample = sql.SQL("TABLESAMPLE BERNOULLI ({})").format(sql.Literal(percent))
        per_piece = 8
    query = sql.SQL(
        "SELECT {texts} FROM (SELECT {keys}, row_number() OVER (ORDER BY {keys}) AS rn "
        "FROM {table} AS t {sample} WHERE {range}) AS s WHERE s.rn % {step} = 0 ORDER BY {s_keys}"
    ).format(
        texts=texts,
        keys=keys,
        table=plan.table(side),
        sample=sample,
        range=_range(plan, side, lo, hi),
        step=sql.Literal(per_piece),
        s_keys=s_keys,
    )
    found = [tuple(r) for r in conn.execute(query).fetchall()]
    conn.commit()
    distinct: list[Bound] = []
    for b in found:
        if not distinct or distinct[-1] != b:
            distinct.append(b)
    return distinct


Checksums = dict[int, tuple[int, int]]


def _array_text(values: Sequence[str]) -> str:
    """A PostgreSQL array literal of these element texts (each quoted, so any text is safe)."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


def _bucket(plan: SqlPlan, side: str, bounds: Sequence[Bound]) -> sql.Composable:
    """The piece of a row: ``width_bucket`` of its key over the boundaries (0 below the first).
    One key column: the boundaries travel as one array literal (composing thousands of
    literals one by one cost more client CPU than the query's planning)."""
    if not bounds:
        return sql.SQL("0")
    types = plan.key_type_names(side)
    if len(types) == 1:
        return sql.SQL("width_bucket({}, {}::{}[])").format(
            _key(plan, side), sql.Literal(_array_text([b[0] for b in bounds])), sql.SQL(types[0])
        )
    return sql.SQL("width_bucket({}, ARRAY[{}])").format(
        _key(plan, side), sql.SQL(", ").join(_literal(plan, side, b) for b in bounds)
    )


Heap = tuple[int, int | None]
"""A range of heap blocks [first, end) of a table; end None: to the end of the table."""


def _heap_range(heap: Heap | None) -> sql.Composable:
    if heap is None:
        return sql.SQL("TRUE")
    first, end = heap
    parts = [sql.SQL("t.ctid >= {}::tid").format(sql.Literal(f"({first},0)"))]
    if end is not None:
        parts.append(sql.SQL("t.ctid < {}::tid").format(sql.Literal(f"({end},0)")))
    return sql.SQL(" AND ").join(parts)


def _checksums(
    conn: psycopg.Connection[Any],
    *,
    plan: SqlPlan,
    side: str,
    bounds: Sequence[Bound],
    lo: Bound | None,
    hi: Bound | None,
    bucket: sql.Composable | None = None,
    heap: Heap | None = None,
) -> Checksums:
    """Per piece: (rows, XOR of the row hashes). Keys are unique on each side and part of
    every row's hash, so no two rows of one side cancel out but by a 2**-64 accident.

    ``heap`` restricts the scan to a range of heap blocks (a TID range scan): the checksums
    of the parts of a table add up (counts) and XOR (hashes) to the table's.
    ``bucket``: ``_bucket(plan, side, bounds)`` composed once by the caller."""
    query = sql.SQL(
        "SELECT {bucket}, count(*), bit_xor({hash}) FROM {table} AS t "
        "WHERE {range} AND {heap} GROUP BY 1"
    ).format(
        bucket=_bucket(plan, side, bounds) if bucket is None else bucket,
        hash=plan.row_hash(side),
        table=plan.table(side),
        range=_range(plan, side, lo, hi),
        heap=_heap_range(heap),
    )
    out = {int(seg): (int(n), int(total)) for seg, n, total in conn.execute(query).fetchall()}
    conn.commit()
    return out


def _leaf(
    conn: psycopg.Connection[Any], plan: SqlPlan, side: str, lo: Bound | None, hi: Bound | None
) -> set[tuple[Any, ...]]:
    """(key columns..., row hash) of every row in [lo, hi): rows as fetched, no per-row
    Python beyond hashing the tuple into the set."""
    cols = plan.key_columns(side)
    query = sql.SQL("SELECT {keys}, {hash} FROM {table} AS t WHERE {range}").format(
        keys=sql.SQL(", ").join(_col(c) for c in cols),
        hash=plan.row_hash(side),
        table=plan.table(side),
        range=_range(plan, side, lo, hi),
    )
    with conn.cursor(binary=True) as cur:
        cur.execute(query)
        rows = set(cur.fetchall())
    conn.commit()
    return rows


def integer_key(plan: SqlPlan) -> bool:
    """One key column, of an integer type on both sides: its pairs can travel packed."""
    return len(plan.key) == 1 and all(
        base_type(t) in INTEGERS for t in (*plan.key_types, *plan.key_type_names("source"))
    )


def _packed_leaf(
    conn: psycopg.Connection[Any], plan: SqlPlan, side: str, lo: Bound | None, hi: Bound | None
) -> npt.NDArray[np.int64]:
    """(key, row hash) of every row in [lo, hi) as an (n, 2) int64 array, sent by the
    database as one bytea of big-endian pairs: no Python object per row on either end."""
    import numpy as np

    query = sql.SQL(
        "SELECT string_agg(int8send({key}::bigint) || int8send({hash}), ''::bytea) "
        "FROM {table} AS t WHERE {range}"
    ).format(
        key=_col(plan.key_columns(side)[0]),
        hash=plan.row_hash(side),
        table=plan.table(side),
        range=_range(plan, side, lo, hi),
    )
    with conn.cursor(binary=True) as cur:
        row = cur.execute(query).fetchone()
    conn.commit()
    packed = b"" if row is None or row[0] is None else row[0]
    return np.frombuffer(packed, dtype=">i8").astype(np.int64).reshape(-1, 2)


def differing_keys(src: npt.NDArray[np.int64], dst: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Keys of (key, hash) rows (keys unique per side) whose hashes differ or that one side
    lacks."""
    import numpy as np

    common, i, j = np.intersect1d(src[:, 0], dst[:, 0], assume_unique=True, return_indices=True)
    changed = common[src[i, 1] != dst[j, 1]]
    return np.concatenate([changed, np.setxor1d(src[:, 0], dst[:, 0], assume_unique=True)])


class SegmentDiff:
    """The segment comparison of one target table (thread-safe: each call takes sessions)."""

    def __init__(
        self,
        plan: SqlPlan,
        sources: Sessions,
        targets: Sessions,
        pool: Executor,
        tuning: Tuning,
    ) -> None:
        self.plan = plan
        self._sessions = {"source": sources, "target": targets}
        self._pool = pool
        self.tuning = tuning
        self.stats = SegmentStats()
        self._lock = threading.Lock()
        self._counting_rows = False  # rows are counted by the leaves when no checksums ran
        self._packed = tuning.packed and integer_key(plan)
        self._blocks = {"source": 0, "target": 0}  # heap blocks, for the first level's parts

    def _on(self, side: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._sessions[side].get() as conn:
            return fn(conn)

    def _both(self, fn: Callable[[psycopg.Connection[Any], str], T]) -> tuple[T, T]:
        """Run ``fn`` on the source (in the pool) and on the target (here) at once."""
        future = self._pool.submit(self._on, "source", lambda c: fn(c, "source"))
        target = self._on("target", lambda c: fn(c, "target"))
        return future.result(), target

    def run(self) -> SegmentStats:
        """Compare the whole table; ``stats.candidates`` holds the keys that may differ."""
        plan, tuning = self.plan, self.tuning

        def facts(conn: psycopg.Connection[Any], side: str) -> tuple[int, int]:
            table = plan.table(side)
            return estimate_rows(conn, table), table_blocks(conn, table)

        (src_rows, self._blocks["source"]), (dst_rows, self._blocks["target"]) = self._both(facts)
        rows = max(src_rows, dst_rows)
        pieces = min(tuning.max_segments, max(1, math.ceil(rows / tuning.leaf_rows)))
        side = "target"
        t0 = time.perf_counter()
        bounds = self._on(side, lambda c: _bounds(c, plan, side, pieces, rows, None, None))
        self.stats.segments = len(bounds) + 1
        if self._mostly_differing(bounds):
            # checksumming every segment would only confirm it: merge (key, hash) pairs at once
            each = math.ceil(rows / self.stats.segments)
            guess = {i: (each, 0) for i in range(self.stats.segments)}
            self.stats.differing = len(guess)
            self._counting_rows = True
            self._descend_all(bounds, None, None, guess, guess, sorted(guess))
            log.debug("%s: most segments differ: merged (key, hash) pairs", plan.target)
            return self.stats
        t1 = time.perf_counter()
        src, dst = self._level_zero(bounds)
        log.debug(
            "%s: %d boundaries and probes in %.2f s, checksums in %.2f s",
            plan.target,
            len(bounds),
            t1 - t0,
            time.perf_counter() - t1,
        )
        self._count(queries=3)
        self.stats.source_rows = sum(n for n, _ in src.values())
        self.stats.target_rows = sum(n for n, _ in dst.values())
        differing = self._differing(src, dst)
        self.stats.differing = len(differing)
        self._descend_all(bounds, None, None, src, dst, differing)
        return self.stats

    def _level_zero(self, bounds: Sequence[Bound]) -> tuple[Checksums, Checksums]:
        """All segments' checksums on both sides. Each side is read in ``parts`` ranges of
        heap blocks at once (sequential TID range scans, several backends per database,
        whatever the rows' physical order); each part checksums every segment of its rows,
        and the parts' checksums are combined: counts add up, hashes XOR. Both sides' parts
        run at the same time (like each worker holding one connection per database), not
        one side's after the other's through the worker pool.

        A row updated while the parts run may be seen by two parts (old and new version) or
        by none; either changes its segment's count, so the segment differs and is looked
        into again by key range (one query, one snapshot), never passed as equal by it."""
        jobs: list[tuple[str, Callable[[psycopg.Connection[Any]], Checksums]]] = []
        for side in ("source", "target"):
            blocks = self._blocks[side]
            parts = max(1, min(self.tuning.parts, blocks // max(1, self.tuning.part_blocks)))
            edges = [blocks * k // parts for k in range(parts)]
            heaps: list[Heap | None] = [
                (first, None if k == parts - 1 else edges[k + 1]) for k, first in enumerate(edges)
            ]
            bucket = _bucket(self.plan, side, bounds)
            for heap in heaps if parts > 1 else [None]:
                job = partial(
                    _checksums,
                    plan=self.plan,
                    side=side,
                    bounds=bounds,
                    lo=None,
                    hi=None,
                    bucket=bucket,
                    heap=heap,
                )
                jobs.append((side, job))
        out: dict[str, Checksums] = {"source": {}, "target": {}}
        with ThreadPoolExecutor(len(jobs), thread_name_prefix="reconcile-level-zero") as scans:
            futures = [(side, scans.submit(self._on, side, job)) for side, job in jobs]
            for side, future in futures:
                sums = out[side]
                for piece, (n, x) in future.result().items():
                    m, y = sums.get(piece, (0, 0))
                    sums[piece] = (m + n, y ^ x)
        self._count(queries=len(jobs))
        return out["source"], out["target"]

    def _mostly_differing(self, bounds: Sequence[Bound]) -> bool:
        """Checksum ``probes`` segments spread over the key space first; True when more than
        ``many`` of them differ (e.g. 1% of all rows changed, scattered), so that the
        checksums of all segments would not spare fetching (key, hash) pairs of most rows."""
        pieces = len(bounds) + 1
        probes = self.tuning.probes
        if probes < 1 or pieces < 4 * probes:
            return False
        plan = self.plan
        spread = sorted({(2 * k + 1) * (pieces - 2) // (2 * probes) + 1 for k in range(probes)})
        ranges = [(bounds[i - 1], bounds[i]) for i in spread]

        def sums(conn: psycopg.Connection[Any], side: str) -> Checksums:
            # one query per side: the probes' key ranges OR-ed (index range scans), rows
            # of probe k falling into bucket 2k+1 of the ranges' edges
            edges = [b for lo_hi in ranges for b in lo_hi]
            query = sql.SQL(
                "SELECT width_bucket({key}, ARRAY[{edges}]), count(*), bit_xor({hash}) "
                "FROM {table} AS t WHERE {ranges} GROUP BY 1"
            ).format(
                key=_key(plan, side),
                edges=sql.SQL(", ").join(_literal(plan, side, b) for b in edges),
                hash=plan.row_hash(side),
                table=plan.table(side),
                ranges=sql.SQL(" OR ").join(
                    sql.SQL("({})").format(_range(plan, side, lo, hi)) for lo, hi in ranges
                ),
            )
            out = {int(b): (int(n), int(x)) for b, n, x in conn.execute(query).fetchall()}
            conn.commit()
            return out

        src, dst = self._both(sums)
        self._count(queries=2)
        differing = sum(1 for k in range(len(ranges)) if src.get(2 * k + 1) != dst.get(2 * k + 1))
        return differing > self.tuning.many * len(ranges)

    @staticmethod
    def _differing(src: Checksums, dst: Checksums) -> list[int]:
        return sorted(s for s in src.keys() | dst.keys() if src.get(s) != dst.get(s))

    def _descend_all(
        self,
        bounds: Sequence[Bound],
        lo: Bound | None,
        hi: Bound | None,
        src: Checksums,
        dst: Checksums,
        differing: list[int],
        inline: bool = False,
    ) -> None:
        """Look into the differing pieces: in the pool from the coordinating thread, or
        ``inline`` from a pool thread (waiting on the pool from inside it could deadlock)."""
        if not differing:
            return
        pieces = len(bounds) + 1

        def edges(i: int) -> tuple[Bound | None, Bound | None]:
            return (lo if i == 0 else bounds[i - 1]), (hi if i == pieces - 1 else bounds[i])

        def size(i: int) -> int:
            return max(src.get(i, (0, 0))[0], dst.get(i, (0, 0))[0])

        stop_here = len(differing) > self.tuning.many * pieces and pieces > 1
        large = [i for i in differing if size(i) > self.tuning.leaf_rows and not stop_here]
        small = [i for i in differing if i not in set(large)]
        futures: list[Future[None]] = []

        def start(fn: Callable[..., None], *args: Any) -> None:
            if inline:
                fn(*args)
            else:
                futures.append(self._pool.submit(fn, *args))

        # adjacent small pieces are fetched together, up to batch_rows per query
        run: list[int] = []
        rows = 0
        for i in [*small, -1]:
            if run and (i != run[-1] + 1 or rows + size(i) > self.tuning.batch_rows or i < 0):
                a, b = edges(run[0])[0], edges(run[-1])[1]
                start(self._compare_leaf, a, b, rows)
                run, rows = [], 0
            if i >= 0:
                run.append(i)
                rows += size(i)
        for i in large:
            a, b = edges(i)
            start(self._descend, a, b, size(i))
        for f in futures:
            f.result()

    def _descend(self, lo: Bound | None, hi: Bound | None, rows: int) -> None:
        plan = self.plan
        bounds = self._on(
            "target",
            lambda c: _bounds(c, plan, "target", self.tuning.fanout, rows, lo, hi),
        )
        if not bounds:
            self._compare_leaf(lo, hi, rows)
            return
        src = self._on(
            "source", partial(_checksums, plan=plan, side="source", bounds=bounds, lo=lo, hi=hi)
        )
        dst = self._on(
            "target", partial(_checksums, plan=plan, side="target", bounds=bounds, lo=lo, hi=hi)
        )
        self._count(queries=3)
        self._descend_all(bounds, lo, hi, src, dst, self._differing(src, dst), inline=True)

    def _compare_leaf(self, lo: Bound | None, hi: Bound | None, rows: int) -> None:
        plan = self.plan
        changed: set[Key]
        if self._packed and rows >= self.tuning.packed_rows:
            a = self._on("source", lambda c: _packed_leaf(c, plan, "source", lo, hi))
            b = self._on("target", lambda c: _packed_leaf(c, plan, "target", lo, hi))
            changed = {(k,) for k in differing_keys(a, b).tolist()}
            sizes = (len(a), len(b))
        else:
            src = self._on("source", lambda c: _leaf(c, plan, "source", lo, hi))
            dst = self._on("target", lambda c: _leaf(c, plan, "target", lo, hi))
            changed = {row[:-1] for row in src ^ dst}  # its hash differs, or one side lacks it
            sizes = (len(src), len(dst))
        self._count(queries=2, fetched=sum(sizes), candidates=changed)
        if self._counting_rows:
            with self._lock:
                self.stats.source_rows += sizes[0]
                self.stats.target_rows += sizes[1]

    def _count(
        self, queries: int = 0, fetched: int = 0, candidates: set[Key] | None = None
    ) -> None:
        with self._lock:
            self.stats.queries += queries
            self.stats.leaf_rows_fetched += fetched
            self.stats.candidates.extend(candidates or ())
