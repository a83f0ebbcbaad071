"""The transform-aware diff: what the target should hold (the transform of the source)
against what it holds, classified, with in-flight differences re-checked.

Per target table, one of two comparisons (``docs/reconcile.md`` has the argument):

- **segments** (:mod:`reconcile._segments`), when the canonical comparison can be made in
  SQL on both sides (:mod:`reconcile._sqlcanon`; the plan is checked against Python on a
  sample first): checksums per key range inside both databases, descent into the ranges that
  differ; only the keys that may differ come to Python;
- **stream** (:mod:`reconcile._stream`) otherwise: both sides read once in chunks, compared
  by hashed partitions of the target key with bounded memory.

Either way every candidate is decided in Python by the same canonical comparison
(:mod:`reconcile._rows`) and re-checked once the pipeline has caught up. Tables run in
parallel, and so do the segments of one table (``workers`` threads, each with its own
connections).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from dualwrite.capture._ddl import TableShape
from dualwrite.config import MigrationConfig
from dualwrite.kafka_io import group_lag
from dualwrite.snapshot import source_shape
from dualwrite.transform import Transforms
from dualwrite.worker import consumer_group
from reconcile._rows import Key, evaluate, group_by_target, target_types
from reconcile._segments import SegmentDiff, SegmentStats, Tuning
from reconcile._session import Sessions
from reconcile._sqlcanon import SqlPlan, check_plan, plan_for
from reconcile._stream import stream_diff
from reconcile._types import CATEGORIES, DRIFT, Difference, ReconcileResult, TableSummary

__all__ = [
    "CATEGORIES",
    "DEFAULT_WORKERS",
    "DRIFT",
    "Difference",
    "ReconcileResult",
    "TableSummary",
    "reconcile",
]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

DEFAULT_WORKERS = 4
"""Threads (each with one connection per database) comparing tables and segments at once.
They mostly wait on the two database servers, so even two cores keep four busy."""


def reconcile(
    source: Engine,
    target: Engine,
    config: MigrationConfig,
    transforms: Transforms,
    *,
    chunk_rows: int = 5000,
    wait_s: float = 60.0,
    progress: Callable[[str, int], None] | None = None,
    stop: threading.Event | None = None,
    workers: int = DEFAULT_WORKERS,
    segments: bool = True,
    bucket_rows: int = 100_000,
    tuning: Tuning | None = None,
) -> ReconcileResult:
    """Compare the transform of every source table with the target; classify every difference.

    A difference is re-checked once the pipeline has caught up with the source position seen
    when the read began (waiting at most ``wait_s``): if it is gone it was in flight; if the
    pipeline did not catch up in time it is reported as unverified (status incomplete).
    ``segments=False`` forces the streaming comparison for every table; ``bucket_rows`` bounds
    the rows per side held in memory by the streaming comparison. Raises
    :class:`psycopg.Error` when a database fails, and the snapshot/transform errors of a bad
    configuration.
    """
    started = dt.datetime.now(dt.UTC)
    workers = max(1, workers)
    sources, targets = Sessions(source, 2 * workers + 1), Sessions(target, 2 * workers + 1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="reconcile-segment")
    tables = ThreadPoolExecutor(workers, thread_name_prefix="reconcile-table")
    try:
        with sources.get() as src:
            position = _source_position(src, config)
            shapes = {str(t.source): source_shape(src, t) for t in config.tables}
        names = sorted(
            {
                t
                for label in shapes
                if label in transforms.sources
                for t in transforms.sources[label].targets
            }
        )
        with targets.get() as dst:
            types = {name: target_types(dst, transforms.targets[name].table) for name in names}
        t0 = time.perf_counter()
        plans = _plans(sources, targets, config, transforms, shapes, types) if segments else {}
        log.debug("plans checked in %.2f s", time.perf_counter() - t0)
        futures: list[Future[tuple[list[Difference], dict[str, tuple[int, int]]]]] = []
        for name, plan in plans.items():
            futures.append(
                tables.submit(
                    _segment_table,
                    plan,
                    sources,
                    targets,
                    pool,
                    transforms,
                    types[name],
                    tuning or Tuning(),
                    progress,
                )
            )
        streamed = {n: types[n] for n in names if n not in plans}
        if streamed:
            futures.append(
                tables.submit(
                    _stream_tables,
                    sources,
                    targets,
                    transforms,
                    shapes,
                    streamed,
                    chunk_rows,
                    bucket_rows,
                    progress,
                )
            )
        candidates: list[Difference] = []
        counts: dict[str, tuple[int, int]] = {}
        methods = {n: ("segments" if n in plans else "stream") for n in names}
        for f in futures:
            diffs, table_counts = f.result()
            candidates.extend(diffs)
            counts.update(table_counts)
        log.debug("compared in %.2f s: %d candidates", time.perf_counter() - t0, len(candidates))
        if config.reverse_of is not None:
            from reconcile._unmigrated import drop_unmigrated  # here: it imports this module

            with targets.get() as dst:
                candidates = drop_unmigrated(dst, config, transforms, candidates)
        final = [d for d in candidates if d.category == "transform_error"]
        recheck = [d for d in candidates if d.category != "transform_error"]
        caught_up = True
        if recheck:
            with sources.get() as src:
                caught_up = _wait_for_pipeline(
                    src, config, position, wait_s, stop or threading.Event()
                )
            final.extend(
                _recheck((sources, targets, pool), transforms, shapes, types, recheck, caught_up)
            )
            log.debug("re-checked in %.2f s", time.perf_counter() - t0)
    finally:
        tables.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)
        sources.close()
        targets.close()
    by_target: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(CATEGORIES, 0))
    for d in final:
        by_target[d.target][d.category] += 1
    summaries = tuple(
        TableSummary(
            name,
            counts.get(name, (0, 0))[0],
            counts.get(name, (0, 0))[1],
            by_target.get(name, dict.fromkeys(CATEGORIES, 0)),
            methods[name],
        )
        for name in names
    )
    return ReconcileResult(
        config.name, started, dt.datetime.now(dt.UTC), summaries, tuple(final), caught_up
    )


def _plans(
    sources: Sessions,
    targets: Sessions,
    config: MigrationConfig,
    transforms: Transforms,
    shapes: Mapping[str, TableShape],
    types: Mapping[str, Mapping[str, str]],
) -> dict[str, SqlPlan]:
    """The targets that can be compared by segment checksums, with their checked plans."""
    plans: dict[str, SqlPlan] = {}
    for table in config.tables:
        label = str(table.source)
        st = transforms.sources.get(label)
        if st is None:
            continue
        for name in st.targets:
            plan, reason = plan_for(transforms, table, shapes[label], name, types[name])
            if plan is not None:
                with sources.get() as src, targets.get() as dst:
                    reason = check_plan(src, dst, plan, transforms)
                if not reason:
                    plans[name] = plan
                    continue
            log.info("%s: compared in Python, not by segment checksums: %s", name, reason)
    return plans


def _segment_table(
    plan: SqlPlan,
    sources: Sessions,
    targets: Sessions,
    pool: ThreadPoolExecutor,
    transforms: Transforms,
    types: Mapping[str, str],
    tuning: Tuning,
    progress: Callable[[str, int], None] | None,
) -> tuple[list[Difference], dict[str, tuple[int, int]]]:
    stats: SegmentStats = SegmentDiff(plan, sources, targets, pool, tuning).run()
    log.info(
        "%s: %d segments, %d differing, %d leaf rows fetched, %d queries, %d candidate keys",
        plan.target,
        stats.segments,
        stats.differing,
        stats.leaf_rows_fetched,
        stats.queries,
        len(stats.candidates),
    )
    keys: list[Key] = list(dict.fromkeys(stats.candidates))
    t0 = time.perf_counter()
    diffs = _evaluate(
        sources,
        targets,
        pool,
        transforms,
        {plan.label: plan.source},
        plan.target,
        plan.key,
        keys,
        types,
    )
    log.debug(
        "%s: %d candidates evaluated in %.2f s", plan.target, len(keys), time.perf_counter() - t0
    )
    if progress is not None:
        progress(plan.target, stats.source_rows)
    return diffs, {plan.target: (stats.source_rows, stats.target_rows)}


def _evaluate(
    sources: Sessions,
    targets: Sessions,
    pool: ThreadPoolExecutor,
    transforms: Transforms,
    shapes: Mapping[str, TableShape],
    target: str,
    key_columns: tuple[str, ...],
    keys: list[Key],
    types: Mapping[str, str],
    batch: int = 2000,
) -> list[Difference]:
    """:func:`evaluate` over batches of keys in the pool, each batch on its own connections
    (called from a thread outside the pool)."""

    def one(chunk: list[Key]) -> list[Difference]:
        with sources.get() as src, targets.get() as dst:
            return evaluate(src, dst, transforms, shapes, target, key_columns, chunk, types)

    futures = [pool.submit(one, keys[i : i + batch]) for i in range(0, len(keys), batch)]
    return [d for f in futures for d in f.result()]


def _stream_tables(
    sources: Sessions,
    targets: Sessions,
    transforms: Transforms,
    shapes: Mapping[str, TableShape],
    streamed: Mapping[str, Mapping[str, str]],
    chunk_rows: int,
    bucket_rows: int,
    progress: Callable[[str, int], None] | None,
) -> tuple[list[Difference], dict[str, tuple[int, int]]]:
    with sources.get() as src, targets.get() as dst:
        return stream_diff(
            src, dst, transforms, shapes, streamed, chunk_rows, bucket_rows, progress
        )


def _source_position(src: psycopg.Connection[Any], config: MigrationConfig) -> int | None:
    """The changelog sequence's last value: every change committed before now is <= it."""
    row = src.execute(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence(%s, 'seq'))",
        (sql.SQL("{}.changelog").format(sql.Identifier(config.capture.schema)).as_string(None),),
    ).fetchone()
    src.commit()
    return None if row is None or row[0] is None else int(row[0])


def _wait_for_pipeline(
    src: psycopg.Connection[Any],
    config: MigrationConfig,
    position: int | None,
    wait_s: float,
    stop: threading.Event,
) -> bool:
    """Wait until the relay has published every change up to ``position`` and the workers have
    consumed everything published; False if ``wait_s`` ran out."""
    deadline = time.monotonic() + wait_s
    backlog = sql.SQL("SELECT count(*) FROM {}.changelog WHERE seq <= %s").format(
        sql.Identifier(config.capture.schema)
    )
    relayed = position is None
    while time.monotonic() < deadline and not stop.is_set():
        if not relayed:
            row = src.execute(backlog, (position,)).fetchone()
            src.commit()
            relayed = row is not None and row[0] == 0
        if relayed:
            offsets = group_lag(
                config.kafka.bootstrap_servers, consumer_group(config), config.changes_topic
            )
            if all(
                end == 0 or (committed is not None and committed >= end)
                for end, committed in offsets.values()
            ):
                return True
        stop.wait(0.5)
    return False


def _recheck(
    sessions: tuple[Sessions, Sessions, ThreadPoolExecutor],
    transforms: Transforms,
    shapes: Mapping[str, TableShape],
    types: Mapping[str, Mapping[str, str]],
    candidates: list[Difference],
    caught_up: bool,
) -> list[Difference]:
    """Recompute both sides for each candidate key; persistent differences are drift."""
    if not caught_up:
        return [
            Difference(d.target, d.key, "unverified", d.columns, f"was {d.category}")
            for d in candidates
        ]
    out: list[Difference] = []
    for name, diffs in group_by_target(candidates).items():
        key_columns = transforms.targets[name].key
        keys = [tuple(json.loads(d.key)) for d in diffs]
        found = _evaluate(*sessions, transforms, shapes, name, key_columns, keys, types[name])
        now = {d.key: d for d in found if d.category != "transform_error"}
        for d in diffs:
            persisting = now.get(d.key)
            if persisting is None:
                out.append(
                    Difference(
                        d.target,
                        d.key,
                        "in_flight",
                        d.columns,
                        f"was {d.category}; gone after catching up",
                    )
                )
            else:
                out.append(persisting)
    return out
