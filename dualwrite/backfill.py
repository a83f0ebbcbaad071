"""Backfill: copy the rows that existed before capture, race-free with the live stream.

Every source row is read in key order, in chunks (keyset pagination; each chunk is one
statement, hence one consistent snapshot), encoded exactly as the triggers encode it
(``row_to_json``, decoded through the same envelope decoders), passed through the same
transforms as the stream, and applied as a snapshot read with **source version 0**.

Why no interleaving with the stream can lose an update or resurrect a delete (see
``docs/backfill.md``): a chunk writes a key only where no bookkeeping row exists for it, i.e.
where the stream never wrote it, and it holds its target tables' advisory locks exclusively
while stream batches hold them shared, so no stream write on those tables is in flight. So

- if the stream touched the key first (an upsert, or a delete's tombstone), the chunk skips
  it: it never overwrites newer data and never brings a deleted row back;
- if the backfill comes first, any later streamed change (version >= 1) overwrites or deletes
  the chunk's committed row.

Capture must be installed before the backfill starts, so every change that the snapshot
might miss is in the stream. Progress (the last key of the last committed chunk) is stored on
the target in the same transaction as the chunk, so a restart resumes exactly after it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import psycopg
from sqlalchemy import Engine

from dualwrite import capture
from dualwrite.apply import Applier, ensure_bookkeeping
from dualwrite.capture._ddl import TableShape
from dualwrite.config import MigrationConfig, TableConfig
from dualwrite.envelope import EnvelopeError, RowDecoder, parse_json
from dualwrite.errors import DualwriteError
from dualwrite.gc_tuning import steady_state_gc
from dualwrite.snapshot import (
    chunk_queries,
    connect,
    key_sample,
    row_estimate,
    source_shape,
    typed_chunks,
)
from dualwrite.transform import ReadBatch, Transforms

__all__ = ["BackfillError", "BackfillProgress", "BackfillSettings", "TableBackfill", "run_backfill"]

log = logging.getLogger(__name__)

PROGRESS_DDL = """
CREATE TABLE IF NOT EXISTS dualwrite.backfill_progress (
    source_table text   NOT NULL,
    shard        text   NOT NULL,
    last_key     json,
    rows_done    bigint NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    bounds       json,
    PRIMARY KEY (source_table, shard)
);
ALTER TABLE dualwrite.backfill_progress ADD COLUMN IF NOT EXISTS bounds json;
"""
# ``bounds`` of shard K of N > 1: {"lower": key JSON or null, "upper": key JSON or null}, the
# shard's key range (lower inclusive, upper exclusive, null: unbounded), or {"empty": true};
# recorded for all N shards at once by the first of them (_plan_shards).


class BackfillError(DualwriteError):
    """The backfill cannot run (capture missing, bad options) or a row failed its transform."""


@dataclass(frozen=True)
class BackfillSettings:
    chunk_rows: int = 20_000  # bench/RESULTS.md, issue 5 third run: less CPU per row than 5,000
    max_rows_per_s: float | None = None  # None: as fast as the source allows
    busy_latency_ms: float = 250.0  # back off while a `SELECT 1` takes longer than this
    restart: bool = False
    tables: tuple[str, ...] = ()  # empty: every table of the migration
    shard: int = 0
    shards: int = 1
    processes: int = 1  # > 1: that many shard processes at once (dualwrite.backfill_processes)
    gc_gen0_threshold: int = 20_000  # dualwrite.gc_tuning; 0 leaves the collector alone


@dataclass(frozen=True)
class BackfillProgress:
    source: str
    rows_done: int
    rows_estimate: int
    rows_per_s: float
    done: bool


@dataclass(frozen=True)
class TableBackfill:
    source: str
    rows: int  # rows read by this run
    rows_total: int  # rows done including earlier runs
    chunks: int
    elapsed_s: float
    resumed: bool
    done: bool


def run_backfill(
    source: Engine,
    target: Engine,
    config: MigrationConfig,
    transforms: Transforms,
    settings: BackfillSettings | None = None,
    *,
    stop: threading.Event | None = None,
    progress: Callable[[BackfillProgress], None] | None = None,
) -> tuple[TableBackfill, ...]:
    """Backfill every table (or ``settings.tables``); returns a summary per table.

    Stops after the chunk in hand when ``stop`` is set (resumable). Raises
    :class:`BackfillError` when capture is not installed on a table. With
    ``settings.processes`` > 1, runs that many shard processes at once
    (:mod:`dualwrite.backfill_processes`).
    """
    settings = settings or BackfillSettings()
    stop = stop or threading.Event()
    if not 0 <= settings.shard < settings.shards:
        raise BackfillError(f"shard {settings.shard} is outside 0..{settings.shards - 1}")
    if settings.processes < 1:
        raise BackfillError(f"processes must be at least 1, got {settings.processes}")
    if settings.processes > 1:
        if settings.shards > 1:
            raise BackfillError(
                "processes and shard cannot be combined: --processes N runs shards 0/N to "
                "N-1/N itself; use one or the other"
            )
        from dualwrite.backfill_processes import run_backfill_processes

        return run_backfill_processes(
            source, target, config, transforms, settings, stop=stop, progress=progress
        )
    tables = [t for t in config.tables if not settings.tables or str(t.source) in settings.tables]
    unknown = set(settings.tables) - {str(t.source) for t in config.tables}
    if unknown:
        raise BackfillError(f"not tables of this migration: {', '.join(sorted(unknown))}")
    st = capture.status(source, config)
    missing = [
        t.source
        for t in st.tables
        if not t.installed and str(t.source) in {str(x.source) for x in tables}
    ]
    if not st.installed or missing:
        raise BackfillError(
            "capture must be installed before the backfill (changes made while it runs would "
            f"otherwise be lost): run `dualwrite capture install` first (missing: {', '.join(map(str, missing)) or 'all'})"
        )
    ensure_bookkeeping(target)
    src = _connect(source)
    dst = _connect(target)
    try:
        dst.execute(PROGRESS_DDL)
        dst.commit()
        applier = Applier(dst, transforms, backfill_slot=settings.shard)
        results = []
        with steady_state_gc(settings.gc_gen0_threshold):
            for table in tables:
                if stop.is_set():
                    break
                results.append(
                    _backfill_table(src, dst, applier, config, table, settings, stop, progress)
                )
        return tuple(results)
    finally:
        src.close()
        dst.close()


def _connect(engine: Engine) -> psycopg.Connection[Any]:
    """A backfill session, without JIT compilation. The planner over-estimates the join of
    a chunk's staged rows with the keys claimed in ``dualwrite.applied`` (quadratically in
    the staged rows): from about 17,000 staged rows (a 20,000-row chunk of the shop example
    stages 17,340) the insert-if-absent statement's cost crosses ``jit_above_cost`` and each
    chunk's statement was compiled again, 40 ms of server CPU per chunk (100 ms the first
    time; bench/RESULTS.md, issue 5 third run). A planner setting only: the same statements,
    the same results."""
    conn = connect(engine, "dualwrite-backfill")
    conn.execute("SET jit = off")
    conn.commit()
    return conn


def _backfill_table(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    applier: Applier,
    config: MigrationConfig,
    table: TableConfig,
    settings: BackfillSettings,
    stop: threading.Event,
    progress: Callable[[BackfillProgress], None] | None,
) -> TableBackfill:
    label = str(table.source)
    shard = f"{settings.shard}/{settings.shards}"
    shape = source_shape(src, table)
    if settings.restart:
        dst.execute(
            "UPDATE dualwrite.backfill_progress SET last_key = NULL, rows_done = 0, "
            "started_at = now(), updated_at = now(), finished_at = NULL "
            "WHERE source_table = %s AND shard = %s",
            (label, shard),
        )
    dst.execute(
        "INSERT INTO dualwrite.backfill_progress (source_table, shard) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (label, shard),
    )
    dst.commit()
    if settings.shards > 1:
        _plan_shards(src, dst, shape, label, settings.shards)
    row = dst.execute(
        "SELECT last_key::text, rows_done, finished_at, NULLIF((bounds->'lower')::text, 'null'), "
        "NULLIF((bounds->'upper')::text, 'null'), COALESCE(bounds->>'empty' = 'true', false) "
        "FROM dualwrite.backfill_progress WHERE source_table = %s AND shard = %s",
        (label, shard),
    ).fetchone()
    dst.commit()
    assert row is not None
    last_key, rows_done, finished = row[0], int(row[1]), row[2]
    key_range = _KeyRange(row[3], row[4], row[5])
    estimate = row_estimate(src, shape) // max(1, settings.shards)
    if finished is not None:
        log.info("%s (shard %s) was already backfilled; --restart to do it again", label, shard)
        return TableBackfill(label, 0, rows_done, 0, 0.0, True, True)
    resumed = last_key is not None
    t0 = time.monotonic()
    rows = chunks = 0
    reader = _ChunkReader(src, applier.transforms, shape, settings, key_range, last_key, stop)
    reader.start()
    try:
        while not stop.is_set():
            chunk = reader.next()
            if chunk is None and stop.is_set():
                break
            if chunk is None:
                dst.execute(
                    "UPDATE dualwrite.backfill_progress SET finished_at = now(), updated_at = now() "
                    "WHERE source_table = %s AND shard = %s",
                    (label, shard),
                )
                dst.commit()
                break
            _apply_chunk(dst, applier, chunk, label, shard, stop)
            rows += chunk.rows
            chunks += 1
            elapsed = time.monotonic() - t0
            if progress is not None:
                progress(
                    BackfillProgress(
                        label, rows_done + rows, estimate, rows / elapsed if elapsed else 0.0, False
                    )
                )
    finally:
        reader.close()
    elapsed = time.monotonic() - t0
    done = not stop.is_set()
    if progress is not None:
        progress(
            BackfillProgress(
                label, rows_done + rows, estimate, rows / elapsed if elapsed else 0.0, done
            )
        )
    return TableBackfill(label, rows, rows_done + rows, chunks, elapsed, resumed, done)


@dataclass(frozen=True)
class _Chunk:
    rows: int
    last_key: str  # JSON of the chunk's last source key: the progress mark
    batch: ReadBatch


_DEADLOCK_RETRIES = 5
_ROLLED_BACK = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.TransactionRollback,
)


def _apply_chunk(
    dst: psycopg.Connection[Any],
    applier: Applier,
    chunk: _Chunk,
    label: str,
    shard: str,
    stop: threading.Event,
) -> None:
    """Apply one chunk and move the progress mark, in one target transaction.

    The chunk holds its target tables' advisory locks exclusively (``Applier._lock_targets``),
    so it cannot deadlock with a stream batch; a deadlock or serialisation failure with
    anything else (the user's own triggers on the target, say) rolls the chunk back and it is
    retried, a bounded number of times."""
    for attempt in range(1, _DEADLOCK_RETRIES + 1):
        try:
            with dst.transaction():
                applier.apply_reads(chunk.batch)
                dst.execute(
                    "UPDATE dualwrite.backfill_progress SET last_key = %s::json, "
                    "rows_done = rows_done + %s, updated_at = now() "
                    "WHERE source_table = %s AND shard = %s",
                    (chunk.last_key, chunk.rows, label, shard),
                )
            return
        except _ROLLED_BACK as exc:
            if attempt == _DEADLOCK_RETRIES:
                raise
            log.info("%s: chunk rolled back (%s); retrying", label, type(exc).__name__)
            stop.wait(0.05 * attempt)


class _ChunkReader:
    """Reads, decodes and transforms the next chunk on its own thread while the current one is
    applied (psycopg waits and the target's work run without the GIL), one chunk ahead.

    Owns the source connection until :meth:`close`. Paces reads to ``max_rows_per_s`` and
    backs off while the source is busy. A failure is re-raised by :meth:`next`."""

    def __init__(
        self,
        src: psycopg.Connection[Any],
        transforms: Transforms,
        shape: TableShape,
        settings: BackfillSettings,
        key_range: _KeyRange,
        last_key: str | None,
        stop: threading.Event,
    ) -> None:
        self._src = src
        self._range = key_range
        self._transforms = transforms
        self._shape = shape
        self._settings = settings
        self._last_key = last_key
        self._stop = stop
        self._closed = threading.Event()
        self._queue: queue.Queue[_Chunk | BaseException | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="backfill-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def next(self) -> _Chunk | None:
        """The next chunk; None at the end of the table, or when ``stop`` ended the reading
        first (the caller tells the two apart by ``stop``)."""
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._thread.is_alive():
                    continue
                try:  # it may have handed over its last item just before ending
                    item = self._queue.get_nowait()
                except queue.Empty:
                    return None  # it ended without an item: only ``stop`` does that
            if isinstance(item, BaseException):
                raise item
            return item

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(queue.Empty):
            self._queue.get_nowait()  # unblock a reader waiting to hand over a chunk
        self._thread.join()

    def _put(self, item: _Chunk | BaseException | None) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.2)
                return

    def _run(self) -> None:
        try:
            self._read_all()
        except BaseException as exc:  # handed to the applying thread
            self._put(exc)

    def _read_all(self) -> None:
        settings, src, label = self._settings, self._src, str(self._shape.source)
        if self._range.empty:
            self._put(None)  # a shard of a table that had no rows to cut it by
            return
        lower, upper = self._range.lower, self._range.upper
        ranged = {"lower": lower is not None, "upper": upper is not None}
        typed = typed_chunks(self._shape, settings.chunk_rows, **ranged)
        images = chunk_queries(self._shape, settings.chunk_rows, **ranged)
        decode = RowDecoder(self._shape.types)
        key_columns = self._shape.key
        while not self._stop.is_set() and not self._closed.is_set():
            _wait_until_quiet(src, settings, self._stop)
            t_chunk = time.monotonic()
            first = self._last_key is None
            params = [lower] if first else [self._last_key]
            params = [p for p in [*params, upper] if p is not None]
            try:
                query = typed.first if first else typed.following
                fetched = src.execute(query, params or None, binary=True).fetchall()
                key_of: Callable[[Any], str] = typed.last_key
                record_of = typed.record
            except psycopg.DataError:
                # a value psycopg cannot load (an infinite date, a year past 9999): this chunk
                # is read again as row images, whose decoders keep such values as text
                src.rollback()
                fetched = src.execute(images[0] if first else images[1], params or None).fetchall()
                key_of, record_of = itemgetter(0), lambda row: decode(parse_json(row[1]))
            src.commit()
            if not fetched:
                self._put(None)
                return
            try:
                records = list(map(record_of, fetched))
            except (EnvelopeError, ValueError):
                records = [_decoded(record_of, row, key_of, label) for row in fetched]
            batch = self._transforms.apply_reads(label, key_columns, records)
            del records
            self._last_key = key_of(fetched[-1])
            self._put(_Chunk(len(fetched), self._last_key, batch))
            if settings.max_rows_per_s:
                budget = len(fetched) / settings.max_rows_per_s
                spent = time.monotonic() - t_chunk
                if budget > spent:
                    self._stop.wait(budget - spent)


@dataclass(frozen=True)
class _KeyRange:
    """The keys a shard reads: from ``lower`` (inclusive) to ``upper`` (exclusive), key JSON
    texts as recorded, None where unbounded; or none at all (``empty``)."""

    lower: str | None = None
    upper: str | None = None
    empty: bool = False


def _plan_shards(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    shape: TableShape,
    label: str,
    shards: int,
) -> None:
    """Cut the table into ``shards`` key ranges of about equal rows (cut at keys of
    :func:`key_sample`), once per sharding: the first process of a sharding records the
    range of every shard, under an advisory lock; the other shards, and every resume, read
    them. The ranges cover every key, whatever the sample: the first starts unbounded, each
    next one where the one before ends, the last is unbounded above. A table without rows
    goes whole to shard 0 (the others are empty).

    Ranges are recorded only when no shard of this N has one: a range never moves under a
    shard that may be reading it. Shards with progress but no range (recorded by an earlier
    dualwrite, whose shards split keys by hash) start over: the backfill writes only absent
    keys, so doing a row again changes nothing. Some shards with a range and others without
    (progress rows deleted by hand) is refused: no cut can be trusted to fit the others."""
    pattern = f"%/{shards}"
    with dst.transaction():
        dst.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"dualwrite.backfill:{label}:{shards}",)
        )
        rows = dst.execute(
            "SELECT shard, bounds IS NOT NULL, last_key IS NOT NULL OR finished_at IS NOT NULL "
            "FROM dualwrite.backfill_progress WHERE source_table = %s AND shard LIKE %s",
            (label, pattern),
        ).fetchall()
        planned = sorted(shard for shard, has_range, _ in rows if has_range)
        if len(planned) == shards:
            return
        if planned:
            raise BackfillError(
                f"{label}: shards {', '.join(planned)} have key ranges and the other shards of "
                f"{shards} have none (their progress rows were deleted?); delete every progress "
                f"row of the table's {shards} shards (DELETE FROM dualwrite.backfill_progress "
                f"WHERE source_table = '{label}' AND shard LIKE '{pattern}') and run them again"
            )
        redone = sorted(shard for shard, _, started in rows if started)
        if redone:
            log.warning(
                "%s: shards %s were split by hash by an earlier dualwrite; starting them over",
                label,
                ", ".join(redone),
            )
        keys = key_sample(src, shape)  # key JSON texts, kept as they are (numeric keys)
        edges = [None, *(keys[len(keys) * k // shards] for k in range(1, shards) if keys), None]
        for k in range(shards):
            if keys:
                bounds = f'{{"lower": {edges[k] or "null"}, "upper": {edges[k + 1] or "null"}}}'
            else:
                bounds = '{"lower": null, "upper": null}' if k == 0 else '{"empty": true}'
            dst.execute(
                "INSERT INTO dualwrite.backfill_progress AS p (source_table, shard, bounds) "
                "VALUES (%s, %s, %s::json) ON CONFLICT (source_table, shard) DO UPDATE SET "
                "bounds = EXCLUDED.bounds, last_key = NULL, rows_done = 0, finished_at = NULL, "
                "started_at = now(), updated_at = now()",
                (label, f"{k}/{shards}", bounds),
            )


def _decoded(
    record_of: Callable[[Any], dict[str, Any]], row: Any, key_of: Callable[[Any], Any], label: str
) -> dict[str, Any]:
    """One row's record, or :class:`BackfillError` naming the row that cannot be decoded."""
    try:
        return record_of(row)
    except (EnvelopeError, ValueError) as exc:
        raise BackfillError(f"{label}: row {key_of(row)} cannot be decoded: {exc}") from None


def _wait_until_quiet(
    src: psycopg.Connection[Any], settings: BackfillSettings, stop: threading.Event
) -> None:
    """Back off while the source is slow to answer a trivial query (it is busy)."""
    delay = 0.1
    while not stop.is_set():
        t0 = time.monotonic()
        src.execute("SELECT 1")
        src.commit()
        latency_ms = (time.monotonic() - t0) * 1000
        if latency_ms <= settings.busy_latency_ms:
            return
        log.warning("source busy (SELECT 1 took %.0f ms); backing off %.1fs", latency_ms, delay)
        stop.wait(delay)
        delay = min(delay * 2, 10.0)
